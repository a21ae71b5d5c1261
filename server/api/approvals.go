package api

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server"
)

// Approval is the JSON of a four-eyes approval.
type Approval struct {
	ID        string `json:"id"`
	RolloutID string `json:"rollout_id"`
	// Action is "advance", "start" or "resume"; ToPercent is where it
	// takes the rollout, Exposure how much of the handsets the patch's
	// rollouts select it lets the patch reach (0 on requests from
	// before it was kept).
	Action         string     `json:"action"`
	ToPercent      float64    `json:"to_percent"`
	Exposure       float64    `json:"exposure"`
	RequestedBy    string     `json:"requested_by"`
	RequestedAt    time.Time  `json:"requested_at"`
	Reason         string     `json:"reason"`
	State          string     `json:"state"`
	DecidedBy      string     `json:"decided_by,omitempty"`
	DecidedAt      *time.Time `json:"decided_at,omitempty"`
	DecisionReason string     `json:"decision_reason,omitempty"`
}

// ApprovalDecision is the answer of approve and reject: the approval as
// decided, and the rollout (after the change, for an approval).
type ApprovalDecision struct {
	Approval Approval `json:"approval"`
	Rollout  *Rollout `json:"rollout,omitempty"`
}

func approvalOf(a *server.Approval) Approval {
	return Approval{ID: a.ID, RolloutID: a.RolloutID, Action: a.Action, ToPercent: a.ToPercent, Exposure: a.Exposure,
		RequestedBy: a.RequestedBy, RequestedAt: a.RequestedAt.UTC(), Reason: a.Reason, State: string(a.State),
		DecidedBy: a.DecidedBy, DecidedAt: optionalTime(a.DecidedAt), DecisionReason: a.DecisionReason}
}

// widened answers a widening: 202 and the approval when it waits for a
// second person (nothing changed yet), else status and the rollout.
func widened(c echo.Context, status int, r *server.Rollout, pending *server.Approval) error {
	if pending != nil {
		return c.JSON(http.StatusAccepted, approvalOf(pending))
	}
	return c.JSON(status, rolloutOf(r))
}

func (s *Server) listApprovals(c echo.Context) error {
	as, err := s.rollouts.ListApprovals(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	out := make([]Approval, len(as))
	for i, a := range as {
		out[i] = approvalOf(a)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) approve(c echo.Context) error {
	var req RolloutActionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	r, a, err := s.rollouts.Approve(c.Request().Context(), c.Param("id"), c.Param("aid"), actor(c), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ApprovalDecision{Approval: approvalOf(a), Rollout: rolloutOf(r)})
}

func (s *Server) reject(c echo.Context) error {
	var req RolloutActionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	a, err := s.rollouts.Reject(c.Request().Context(), c.Param("id"), c.Param("aid"), actor(c), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ApprovalDecision{Approval: approvalOf(a)})
}
