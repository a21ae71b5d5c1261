package handsets

import (
	"slices"
	"time"
)

// DeviceOffered is the state of a DeviceRollout from an offer until the
// handset's first report on it; then it takes the report states
// (StateDownloading ... StateRolledBack).
const DeviceOffered = "offered"

// DeviceRollout is what the store keeps of one rollout's offers to one
// handset (device_rollouts), from the first offer: caps count new
// offers, reports count by starting build, time-to-install starts at
// OfferedAt.
type DeviceRollout struct {
	RolloutID string
	DeviceID  string
	// Model is the handset's model at the first offer, so health counts
	// group by model without a join.
	Model string
	// StartingBuild is the handset's build at the first offer.
	StartingBuild string
	// OfferedAt is the first offer; LastOfferedAt the latest first or
	// retry offer (repeats of an offer do not move it).
	OfferedAt     time.Time
	LastOfferedAt time.Time
	// State is DeviceOffered, then the latest report state.
	State string
	// Attempts counts first and retry offers.
	Attempts int
	// LastFailureAt is when the server received the last failed or
	// rolled-back report (server time: handset clocks drift), the start
	// of the retry backoff.
	LastFailureAt time.Time
	// ResultAt is when the server received the last installed, failed or
	// rolled-back report: health and advance count results by it
	// (RolloutStore.RolloutResults).
	ResultAt time.Time
	// FullOnly is set once an incremental payload failed to apply on the
	// handset (a failed report with CodeIncrementalApply): from then on
	// it is offered the release's full image.
	FullOnly bool
}

// CodeIncrementalApply is the error code of a failed report whose
// incremental payload did not apply (the agent's, or an installer's):
// the handset's next offer of the release is the full image.
const CodeIncrementalApply = "E_INCREMENTAL_APPLY"

// Installing reports whether the handset said it began installing and
// has not finished: it keeps its offer whatever happens to the rollout.
func (dr *DeviceRollout) Installing() bool {
	switch dr.State {
	case StateDownloading, StateDownloaded, StateVerified, StateInstalling:
		return true
	}
	return false
}

// Failed reports whether the last attempt failed; a rollback is a failure.
func (dr *DeviceRollout) Failed() bool {
	return dr.State == StateFailed || dr.State == StateRolledBack
}

// Observe moves the record on a report of state received at receivedAt
// (server time). An intermediate state never replaces a later one of the
// same attempt (reports may arrive out of order); installed, failed and
// rolled back always do.
func (dr *DeviceRollout) Observe(state string, receivedAt time.Time) {
	dr.ObserveReport(state, "", receivedAt)
}

// ObserveReport is Observe of a report with its error code: a failure to
// apply an incremental payload also makes the record FullOnly.
func (dr *DeviceRollout) ObserveReport(state, errorCode string, receivedAt time.Time) {
	if state == StateFailed && errorCode == CodeIncrementalApply {
		dr.FullOnly = true
	}
	switch state {
	case StateFailed, StateRolledBack:
		dr.State, dr.LastFailureAt, dr.ResultAt = state, receivedAt, receivedAt
	case StateInstalled:
		dr.State, dr.ResultAt = state, receivedAt
	default:
		if dr.State == DeviceOffered || (dr.Installing() && slices.Index(ReportStates, state) > slices.Index(ReportStates, dr.State)) {
			dr.State = state
		}
	}
}

// Confirmation is a change that a check-in makes to whether Record is
// confirmed (rollout.Confirmed: installed, and seen since on the
// release's build with its patch): N is +1 when the check-in confirms it,
// -1 when it takes the confirmation back (the handset left the build or
// dropped the patch). The store counts them with the check-in's write.
type Confirmation struct {
	Record *DeviceRollout
	N      int64
}

// BackFromInstall reports whether a check-in of d, whose stored last_seen
// is d.LastSeen, is its first since one of its records began an install
// (the last offer, while installing) or reported it installed: that
// check-in writes last_seen whatever the resolution, so that a rollout
// counting silent handsets (rollout.Policy.SilenceAfter) sees the handset
// back. It is one write per install at most.
func BackFromInstall(d *Device, records []*DeviceRollout) bool {
	for _, r := range records {
		switch {
		case r.Installing() && r.LastOfferedAt.After(d.LastSeen):
			return true
		case r.State == StateInstalled && r.ResultAt.After(d.LastSeen):
			return true
		}
	}
	return false
}
