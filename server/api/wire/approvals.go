package wire

import "time"

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
