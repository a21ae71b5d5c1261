package rollout

import (
	"context"
	"fmt"
	"slices"

	"github.com/patchfleet/ota/server/identity"
)

// Four eyes follow exposure, not a stage's number: what needs a second
// person is how much of the fleet one patch can reach, every rollout of
// it counted. Three rollouts of one release at 50% each, with cohorts of
// their own, reached 89% of the handsets they selected with nobody asked.
//
// Two rules make that share something the server can bound:
//
//   - Cohorts nest within a patch. Every rollout of a patch (the
//     release's patch id; its target path if it names none) takes the
//     salt of the patch's earlier rollouts (PatchSalt), so a handset's
//     cohort is the same in all of them, and the union of their cohorts
//     is the widest one: hash(salt, device) mod 10000 < percent × 100.
//   - The exposure of a patch (Exposure) is, over the distinct salts of
//     its running, paused and completed rollouts, the sum of the largest
//     percent at each salt, at most 100. With the one shared salt it is
//     the largest percent, an upper bound on the share of the handsets
//     the rollouts select that can be offered the patch; rollouts with
//     other salts (made before salts were shared) are counted
//     conservatively by the sum. Paused rollouts count because a resume
//     brings them back; drafts and aborted ones offer nothing.
//
// A start, advance or resume, by an operator or by auto-advance, that
// leaves the patch's exposure above FourEyesPercent waits for a second
// person (NeedsApproval).

// patchKey is what groups rollouts for cohort nesting and exposure: the
// release's patch id, or its target path when it names none.
func (rel *RolloutRelease) patchKey() string {
	if rel.PatchID != "" {
		return "patch:" + rel.PatchID
	}
	return "target:" + rel.Target
}

// exposing reports whether a rollout in state s counts toward its
// patch's exposure: it offers (running, completed) or can offer again
// by a resume (paused).
func (s RolloutState) exposing() bool { return s.Offering() || s == RolloutPaused }

// Exposure is the exposure of the patch of r among rs: over the distinct
// salts of the running, paused and completed rollouts of r's patch, the
// sum of the largest percent at each salt, at most 100. r itself counts
// as it is, in place of the rollout of its id in rs (or beside them, if
// it is new), so that a change can be judged before it is saved.
func Exposure(rs []*Rollout, r *Rollout) float64 {
	key := r.Release.patchKey()
	widest := map[string]int{} // cohorts, by salt
	count := func(x *Rollout) {
		if x.State.exposing() && x.Release.patchKey() == key {
			widest[x.Salt] = max(widest[x.Salt], stageCohorts(x.Percent()))
		}
	}
	for _, x := range rs {
		if x.ID != r.ID {
			count(x)
		}
	}
	count(r)
	sum := 0
	for _, c := range widest {
		sum += c
	}
	// In cohorts, so that 33.33 + 16.67 is 50 and not 50.000000000000004.
	return float64(min(sum, Cohorts)) * 100 / Cohorts
}

// exposingStates are the rollout states Exposure counts.
var exposingStates = []RolloutState{RolloutRunning, RolloutPaused, RolloutCompleted}

// exposureAfter reads the rollouts that count toward exposure and
// returns the exposure of r's patch with r as it is (a changed copy not
// yet saved).
func exposureAfter(ctx context.Context, store RolloutStore, r *Rollout) (float64, error) {
	rs, err := store.Rollouts(ctx, exposingStates...)
	if err != nil {
		return 0, fmt.Errorf("rollouts of patch %s: %w", r.Release.PatchID, err)
	}
	return Exposure(rs, r), nil
}

// PatchSalt is the salt a new rollout of rel takes among the rollouts rs
// (any state): the salt of the patch's rollouts, so that cohorts nest.
// When older rollouts of the patch have several salts (made before
// salts were shared), it is the salt of the widest running, paused or
// completed one, else of the oldest one. It reports false when the
// patch has no rollout yet: the new one then has a salt of its own.
func PatchSalt(rs []*Rollout, rel RolloutRelease) (string, bool) {
	key := rel.patchKey()
	var salt string
	best := -1
	for _, r := range rs { // oldest first
		if r.Release.patchKey() != key {
			continue
		}
		width := -1
		if r.State.exposing() {
			width = stageCohorts(r.Percent())
		}
		if salt == "" || width > best {
			salt, best = r.Salt, width
		}
	}
	return salt, salt != ""
}

// NeedsApproval reports whether a change needs a second person: a
// start, advance or resume that leaves its patch's exposure (Exposure,
// with the change made) above FourEyesPercent. A start at 100% always
// does; pausing, aborting, completing and holds never widen.
func NeedsApproval(action string, exposure float64) bool {
	return slices.Contains(widenings, action) && exposure > identity.FourEyesPercent
}

// widenings are the actions four eyes may stop.
var widenings = []string{ActionStart, ActionAdvance, ActionResume}
