package rollout

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/audit"
)

// Results are a rollout's install results since some time: installs
// that finished and installs that failed (a rollback counts as failed),
// of handsets the rollout offered its release to and that enrolled before
// it started (EnrolledLate). The store counts them by model, from
// Rollout.ResultsSince for health and from Rollout.StageResultsSince for
// advancing.
//
// Silent are handsets that began installing or reported installed and
// have not checked in for the policy's SilenceAfter since (see
// Policy.SilenceAfter); they are not in Installed. They count as failures
// toward MaxFailureRate, and on their own toward MaxSilenceRate.
//
// Confirmed are those of Installed whose handset has checked in since,
// on the release's build with its patch (see Policy.MinConfirmations);
// counted only when asked for.
type Results struct {
	Installed int64
	Failed    int64
	Silent    int64
	Confirmed int64
}

// EnrolledLate reports whether a handset enrolled at enrolledAt enrolled
// after its rollout started at startedAt. Its install results do not
// count toward the rollout's health (auto-halt, per-model holds) or its
// advance, only toward the report: with open enrollment (no
// --enrollment-secret) anyone can enroll made-up handsets, check them in
// while a rollout runs and report failures, and the handsets that enrolled
// before the rollout started are the ones such a flood cannot add to.
// The failure window slides over the rollout's whole run, so the line is
// the rollout's start, not its stage's. A rollout not started (zero
// startedAt) has no late enrollees.
func EnrolledLate(enrolledAt, startedAt time.Time) bool {
	return !startedAt.IsZero() && enrolledAt.After(startedAt)
}

// Total is Installed + Failed + Silent.
func (r Results) Total() int64 { return r.Installed + r.Failed + r.Silent }

// FailureRate is (Failed + Silent) / Total; 0 with no results.
func (r Results) FailureRate() float64 {
	if r.Total() == 0 {
		return 0
	}
	return float64(r.Failed+r.Silent) / float64(r.Total())
}

// SilenceRate is Silent / Total; 0 with no results.
func (r Results) SilenceRate() float64 {
	if r.Total() == 0 {
		return 0
	}
	return float64(r.Silent) / float64(r.Total())
}

// Add sums two Results.
func (r Results) Add(o Results) Results {
	return Results{Installed: r.Installed + o.Installed, Failed: r.Failed + o.Failed, Silent: r.Silent + o.Silent,
		Confirmed: r.Confirmed + o.Confirmed}
}

// breaches reports whether r has the minimum of results and a failure
// rate above the limit, or a silence rate above its own.
func (r Results) breaches(p *Policy) bool {
	return r.Total() >= p.MinResults && (r.FailureRate() > p.MaxFailureRate || r.silenceBreaches(p))
}

func (r Results) silenceBreaches(p *Policy) bool {
	return p.MaxSilenceRate > 0 && r.SilenceRate() > p.MaxSilenceRate
}

// unheld sums the results of the models r does not hold.
func (r *Rollout) unheld(byModel map[string]Results) Results {
	var sum Results
	for m, res := range byModel {
		if r.ModelHold(m) == nil {
			sum = sum.Add(res)
		}
	}
	return sum
}

// EvaluateHealth is the auto-halt policy of a running or completed
// rollout at now; byModel are its results per model since
// r.ResultsSince(model, now). Models already held do not count. A model
// or a sum of models breaches when it has at least MinResults results and
// a failure rate above MaxFailureRate. It changes r and returns the
// events to append, none when all is well:
//
//   - when some models breach on their own and the other models, summed,
//     have MinResults results and do not breach, those models are held,
//     each alone, and the others go on: even when the held models'
//     failures push the rollout's own rate over the limit;
//   - otherwise, when all the models not held, summed, breach, the whole
//     rollout halts (it is paused with Halt set) and no model is held:
//     failures spread over models, or a failing model whose peers have
//     too few results to show they are fine, stop everything, as does a
//     failing rollout of a single model.
//
// Run it before EvaluateAdvance.
func EvaluateHealth(r *Rollout, byModel map[string]Results, now time.Time) []Event {
	if !r.State.Offering() {
		return nil
	}
	p := &r.Policy
	var failing []string
	var all, rest Results
	for _, m := range slices.Sorted(maps.Keys(byModel)) {
		res := byModel[m]
		if r.ModelHold(m) != nil {
			continue
		}
		all = all.Add(res)
		if res.breaches(p) {
			failing = append(failing, m)
		} else {
			rest = rest.Add(res)
		}
	}
	restHealthy := rest.Total() >= p.MinResults && !rest.breaches(p)
	if all.breaches(p) && !restHealthy {
		h := r.autoHold("", all, now)
		ev := r.event(ActionHalt, audit.SystemActor, h.Reason, now)
		r.State, r.Halt = RolloutPaused, &h
		ev.Hold = &h
		return []Event{r.finish(ev)}
	}
	var events []Event
	for _, m := range failing {
		events = append(events, r.hold(r.autoHold(m, byModel[m], now)))
	}
	return events
}

func (r *Rollout) autoHold(model string, res Results, now time.Time) Hold {
	p := &r.Policy
	who := "the rollout"
	if model != "" {
		who = "model " + model
	}
	if model == "" && len(r.Holds) > 0 {
		who = "the models not held"
	}
	var reason string
	switch {
	case res.silenceBreaches(p) && (res.Failed == 0 || res.FailureRate() <= p.MaxFailureRate):
		// Silence alone: say so, with its own numbers.
		reason = fmt.Sprintf("%s: %d of %d handsets that began installing silent for over %s (%.1f%%), above the %.1f%% limit",
			who, res.Silent, res.Total(), shortDuration(p.SilenceAfter), 100*res.SilenceRate(), 100*p.MaxSilenceRate)
		return Hold{Model: model, Actor: audit.SystemActor, Reason: reason, Installed: res.Installed, Failed: res.Failed,
			Silent: res.Silent, Rate: res.SilenceRate(), MaxRate: p.MaxSilenceRate, Window: p.FailureWindow, At: now}
	case res.Silent > 0:
		reason = fmt.Sprintf("%s failed %d of %d installs and %d more went silent for over %s (%.1f%%) in the last %s, above the %.1f%% limit",
			who, res.Failed, res.Total(), res.Silent, shortDuration(p.SilenceAfter), 100*res.FailureRate(), shortDuration(p.FailureWindow), 100*p.MaxFailureRate)
	default:
		reason = fmt.Sprintf("%s failed %d of %d installs (%.1f%%) in the last %s, above the %.1f%% limit",
			who, res.Failed, res.Total(), 100*res.FailureRate(), shortDuration(p.FailureWindow), 100*p.MaxFailureRate)
	}
	return Hold{Model: model, Actor: audit.SystemActor, Reason: reason, Installed: res.Installed, Failed: res.Failed,
		Silent: res.Silent, Rate: res.FailureRate(), MaxRate: p.MaxFailureRate, Window: p.FailureWindow, At: now}
}

// EvaluateAdvance is the auto-advance policy of a running rollout at now;
// stageByModel are its results per model since r.StageResultsSince(model).
// With a Soak set, once the stage has run for it since r.SoakStart() and
// the models not held have at least MinResults results at a rate within
// MaxFailureRate, the rollout moves to its next stage, or completes at
// the last one. It changes r and returns the event; ok is false when
// nothing changed. A held model does not keep the others from advancing.
func EvaluateAdvance(r *Rollout, stageByModel map[string]Results, now time.Time) (ev Event, ok bool) {
	p := &r.Policy
	if r.State != RolloutRunning || p.Soak <= 0 || now.Before(r.SoakStart().Add(p.Soak)) {
		return Event{}, false
	}
	res := r.unheld(stageByModel)
	if res.Total() < p.MinResults || res.FailureRate() > p.MaxFailureRate || res.silenceBreaches(p) ||
		res.Confirmed < p.MinConfirmations {
		return Event{}, false
	}
	reason := fmt.Sprintf("stage %g%% soaked %s with %d of %d installs failed (%.1f%%)",
		r.Percent(), shortDuration(p.Soak), res.Failed, res.Total(), 100*res.FailureRate())
	if p.MinConfirmations > 0 {
		reason += fmt.Sprintf(", %d installs confirmed on %s", res.Confirmed, r.Release.InstallsBuild)
	}
	if r.LastStage() {
		return r.complete(audit.SystemActor, reason, now), true
	}
	ev = r.event(ActionAdvance, audit.SystemActor, reason, now)
	r.Stage++
	r.StageStartedAt = now
	return r.finish(ev), true
}

// shortDuration writes 1h, 30m or 6h30m rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
