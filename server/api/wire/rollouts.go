package wire

import (
	"time"

	"github.com/patchfleet/ota/server/rollout"
)

// RolloutRequest is the body of POST /admin/rollouts. Omitted policy
// fields take rollout.DefaultPolicy's values; durations are Go duration
// strings ("6h", "90m").
type RolloutRequest struct {
	ID       string    `json:"id,omitempty"`
	Release  string    `json:"release"`
	Stages   []float64 `json:"stages"`
	Models   []string  `json:"models,omitempty"`
	Channels []string  `json:"channels,omitempty"`
	Regions  []string  `json:"regions,omitempty"`
	BuildMin string    `json:"build_min,omitempty"`
	BuildMax string    `json:"build_max,omitempty"`
	// MaxFailureRate is a fraction: 0.05 is 5%.
	MaxFailureRate     *float64 `json:"max_failure_rate,omitempty"`
	MinResults         *int64   `json:"min_results,omitempty"`
	FailureWindow      *string  `json:"failure_window,omitempty"`
	Soak               *string  `json:"soak,omitempty"`
	Retries            *int     `json:"retries,omitempty"`
	Backoff            []string `json:"backoff,omitempty"`
	MaxOffersPerMinute *int     `json:"max_offers_per_minute,omitempty"`
	// SilenceAfter ("3h") turns on silence: handsets that began
	// installing and have not checked in for that long count as failures;
	// MaxSilenceRate (a fraction) is a limit of its own for them.
	SilenceAfter   *string  `json:"silence_after,omitempty"`
	MaxSilenceRate *float64 `json:"max_silence_rate,omitempty"`
	// MinConfirmations is how many handsets of a stage must be back on
	// the release's build before it advances on its own.
	MinConfirmations *int64 `json:"min_confirmations,omitempty"`
	// StartAt (RFC 3339) schedules the start: no offers before it.
	// Deadline (RFC 3339, after StartAt) makes offers urgent from then:
	// outside the window too, and the handset installs at once.
	StartAt  string `json:"start_at,omitempty"`
	Deadline string `json:"deadline,omitempty"`
	// Window is "01:00-05:00" in the handsets' local time; empty is any
	// hour.
	Window string `json:"window,omitempty"`
	Salt   string `json:"salt,omitempty"`
	// Draft keeps the rollout a draft; otherwise it starts at once.
	Draft  bool   `json:"draft,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RolloutActionRequest is the body of the rollout actions but advance,
// and of a hold's release.
type RolloutActionRequest struct {
	Reason string `json:"reason"`
}

// RolloutAdvanceRequest is the body of POST /admin/rollouts/{id}/advance:
// Percent 0 (or absent) is the next stage.
type RolloutAdvanceRequest struct {
	Reason  string  `json:"reason"`
	Percent float64 `json:"percent,omitempty"`
}

// RolloutHoldRequest is the body of POST /admin/rollouts/{id}/holds.
type RolloutHoldRequest struct {
	Model  string `json:"model"`
	Reason string `json:"reason"`
}

// Rollout is the JSON of a rollout.
type Rollout struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Stage is the index of the current stage in Stages; Percent is its
	// percent.
	Stage    int             `json:"stage"`
	Percent  float64         `json:"percent"`
	Stages   []float64       `json:"stages"`
	Release  RolloutRelease  `json:"release"`
	Selector RolloutSelector `json:"selector"`
	Policy   RolloutPolicy   `json:"policy"`
	Salt     string          `json:"salt"`
	// Halt is why the rollout stopped on its own; Holds the held models.
	Halt      *RolloutHold  `json:"halt,omitempty"`
	Holds     []RolloutHold `json:"holds"`
	CreatedBy string        `json:"created_by"`
	CreatedAt time.Time     `json:"created_at"`
	StartedAt *time.Time    `json:"started_at,omitempty"`
	// StageStartedAt is when the current stage (and its soak) began.
	StageStartedAt *time.Time `json:"stage_started_at,omitempty"`
	EndedAt        *time.Time `json:"ended_at,omitempty"`
	// HealthSince is the last resume: results before it do not count.
	HealthSince      *time.Time           `json:"health_since,omitempty"`
	ModelHealthSince map[string]time.Time `json:"model_health_since,omitempty"`
	Version          int64                `json:"version"`
}

// RolloutRelease is the release a rollout offers, as its signed targets
// metadata states it.
type RolloutRelease struct {
	Target        string   `json:"target"`
	PatchID       string   `json:"patch_id"`
	InstallsBuild string   `json:"installs_build"`
	Models        []string `json:"models"`
	BuildMin      string   `json:"build_min,omitempty"`
	BuildMax      string   `json:"build_max,omitempty"`
}

// RolloutSelector says which handsets a rollout is for; an empty list
// is every handset.
type RolloutSelector struct {
	Models   []string `json:"models"`
	Channels []string `json:"channels"`
	Regions  []string `json:"regions"`
	BuildMin string   `json:"build_min,omitempty"`
	BuildMax string   `json:"build_max,omitempty"`
}

// RolloutPolicy is a rollout's policy; durations are Go duration strings.
type RolloutPolicy struct {
	MaxFailureRate     float64  `json:"max_failure_rate"`
	MinResults         int64    `json:"min_results"`
	FailureWindow      string   `json:"failure_window"`
	Soak               string   `json:"soak"`
	Retries            int      `json:"retries"`
	Backoff            []string `json:"backoff"`
	MaxOffersPerMinute int      `json:"max_offers_per_minute"`
	Window             string   `json:"window"`
	// SilenceAfter is "" when silence is off.
	SilenceAfter     string  `json:"silence_after,omitempty"`
	MaxSilenceRate   float64 `json:"max_silence_rate,omitempty"`
	MinConfirmations int64   `json:"min_confirmations,omitempty"`
	// StartAt is the scheduled start, Deadline when offers become
	// urgent; absent when not set.
	StartAt  *time.Time `json:"start_at,omitempty"`
	Deadline *time.Time `json:"deadline,omitempty"`
}

// RolloutHold is a halt (no model) or a held model, with the numbers
// that set it (zero for an operator's). It is rollout.Hold, whose
// MarshalJSON is the one shape a hold has in every answer: the rollout,
// its events and its report.
type RolloutHold = rollout.Hold

// RolloutEvent is one entry of the audit log.
type RolloutEvent struct {
	RolloutID   string       `json:"rollout_id"`
	At          time.Time    `json:"at"`
	Actor       string       `json:"actor"`
	Action      string       `json:"action"`
	Reason      string       `json:"reason"`
	FromState   string       `json:"from_state,omitempty"`
	ToState     string       `json:"to_state"`
	FromPercent float64      `json:"from_percent"`
	ToPercent   float64      `json:"to_percent"`
	Model       string       `json:"model,omitempty"`
	Hold        *RolloutHold `json:"hold,omitempty"`
	Detail      string       `json:"detail,omitempty"`
}
