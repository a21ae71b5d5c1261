package api

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
)

func approvalOf(a *rollout.Approval) wire.Approval {
	return wire.Approval{ID: a.ID, RolloutID: a.RolloutID, Action: a.Action, ToPercent: a.ToPercent, Exposure: a.Exposure,
		RequestedBy: a.RequestedBy, RequestedAt: a.RequestedAt.UTC(), Reason: a.Reason, State: string(a.State),
		DecidedBy: a.DecidedBy, DecidedAt: optionalTime(a.DecidedAt), DecisionReason: a.DecisionReason}
}

// widened answers a widening: 202 and the approval when it waits for a
// second person (nothing changed yet), else status and the rollout.
func widened(c echo.Context, status int, r *rollout.Rollout, pending *rollout.Approval) error {
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
	out := make([]wire.Approval, len(as))
	for i, a := range as {
		out[i] = approvalOf(a)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) approve(c echo.Context) error {
	var req wire.RolloutActionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	r, a, err := s.rollouts.Approve(c.Request().Context(), c.Param("id"), c.Param("aid"), actor(c), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.ApprovalDecision{Approval: approvalOf(a), Rollout: rolloutOf(r)})
}

func (s *Server) reject(c echo.Context) error {
	var req wire.RolloutActionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	a, err := s.rollouts.Reject(c.Request().Context(), c.Param("id"), c.Param("aid"), actor(c), req.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.ApprovalDecision{Approval: approvalOf(a)})
}
