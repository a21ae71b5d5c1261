package rollout_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

type byModel = map[string]rollout.Results

// TestEvaluateHealth: when the rollout halts, when one model is held
// alone, and what the release manager is shown. Defaults: above 5% over
// 1h with at least 50 results.
func TestEvaluateHealth(t *testing.T) {
	now := t0.Add(time.Hour)
	for _, tc := range []struct {
		name    string
		rollout func(*rollout.Rollout)
		results byModel
		halt    bool
		held    []string
		reason  string // in the halt's or first hold's reason
	}{
		{name: "healthy", results: byModel{"PX-7": {Installed: 500, Failed: 5}}},
		{name: "below the minimum: 49 results all failed", results: byModel{"PX-7": {Failed: 49}}},
		{name: "at the limit: 5% is not above 5%", results: byModel{"PX-7": {Installed: 95, Failed: 5}}},
		{name: "20% failing, one model", results: byModel{"PX-7": {Installed: 40, Failed: 10}}, halt: true,
			reason: "the rollout failed 10 of 50 installs (20.0%) in the last 1h, above the 5.0% limit"},
		{name: "20% failing everywhere", results: byModel{"PX-7": {Installed: 80, Failed: 20}, "PX-8": {Installed: 80, Failed: 20}, "PX-9": {Installed: 80, Failed: 20}}, halt: true,
			reason: "failed 60 of 300 installs (20.0%)"},
		{name: "spread thin: no model has the minimum", results: byModel{"A": {Installed: 16, Failed: 4}, "B": {Installed: 16, Failed: 4}, "C": {Installed: 16, Failed: 4}}, halt: true},
		{name: "one model fails, the others are fine", results: byModel{"PX-7": {Installed: 30, Failed: 30}, "PX-8": {Installed: 200, Failed: 2}, "PX-9": {Installed: 100}},
			held: []string{"PX-7"}, reason: "model PX-7 failed 30 of 60 installs (50.0%) in the last 1h, above the 5.0% limit"},
		{name: "one model fails, the others too few to tell", results: byModel{"PX-7": {Installed: 30, Failed: 30}, "PX-8": {Installed: 20}}, halt: true},
		{name: "one model fails a little, the whole is fine", results: byModel{"PX-7": {Installed: 47, Failed: 3}, "PX-8": {Installed: 20}},
			held: []string{"PX-7"}},
		{name: "two models fail, the rest are fine", results: byModel{"A": {Installed: 10, Failed: 40}, "B": {Installed: 40, Failed: 10}, "C": {Installed: 500, Failed: 1}},
			held: []string{"A", "B"}},
		{name: "a held model does not count", rollout: func(r *rollout.Rollout) { r.Holds = []rollout.Hold{{Model: "PX-7"}} },
			results: byModel{"PX-7": {Installed: 0, Failed: 500}, "PX-8": {Installed: 100}}},
		{name: "the models not held halt", rollout: func(r *rollout.Rollout) { r.Holds = []rollout.Hold{{Model: "PX-7"}} },
			results: byModel{"PX-7": {Failed: 500}, "PX-8": {Installed: 40, Failed: 10}}, halt: true, reason: "the models not held failed 10 of 50"},
		{name: "stricter policy", rollout: func(r *rollout.Rollout) { r.Policy.MaxFailureRate, r.Policy.MinResults = 0.01, 10 },
			results: byModel{"PX-7": {Installed: 9, Failed: 1}}, halt: true},
		{name: "completed rollouts are watched too", rollout: func(r *rollout.Rollout) { r.State = rollout.RolloutCompleted },
			results: byModel{"PX-7": {Installed: 40, Failed: 10}}, halt: true},
		{name: "paused: nothing to stop", rollout: func(r *rollout.Rollout) { r.State = rollout.RolloutPaused },
			results: byModel{"PX-7": {Installed: 40, Failed: 10}}},
		// Silence: handsets that went quiet after they began installing
		// count with the failures, and against a limit of their own.
		{name: "a model whose handsets go silent is held alone", rollout: silence(3*time.Hour, 0.05),
			results: byModel{"PX-8": {Installed: 106, Silent: 14}, "PX-7": {Installed: 500, Failed: 3}, "PX-9": {Installed: 200}},
			held:    []string{"PX-8"}, reason: "model PX-8: 14 of 120 handsets that began installing silent for over 3h (11.7%), above the 5.0% limit"},
		{name: "silence counts with the failures", rollout: silence(3*time.Hour, 0),
			results: byModel{"PX-7": {Installed: 95, Failed: 3, Silent: 3}}, halt: true,
			reason: "the rollout failed 3 of 101 installs and 3 more went silent for over 3h (5.9%) in the last 1h, above the 5.0% limit"},
		{name: "a few silent handsets within the limits", rollout: silence(3*time.Hour, 0.05),
			results: byModel{"PX-7": {Installed: 97, Failed: 1, Silent: 2}}},
		{name: "silence everywhere halts", rollout: silence(time.Hour, 0.02),
			results: byModel{"PX-7": {Installed: 96, Silent: 4}, "PX-8": {Installed: 96, Silent: 4}}, halt: true,
			reason: "the rollout: 8 of 200 handsets that began installing silent for over 1h (4.0%), above the 2.0% limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runningRollout(t)
			if tc.rollout != nil {
				tc.rollout(r)
			}
			before, holdsBefore := r.State, len(r.Holds)
			events := rollout.EvaluateHealth(r, tc.results, now)
			if tc.halt {
				if r.State != rollout.RolloutPaused || r.Halt == nil || len(events) != 1 || events[0].Action != rollout.ActionHalt {
					t.Fatalf("state %s halt %v events %+v; want halted", r.State, r.Halt, events)
				}
				h := r.Halt
				silenceOnly := r.Policy.MaxSilenceRate > 0 && h.MaxRate == r.Policy.MaxSilenceRate
				rate, maxRate := float64(h.Failed+h.Silent)/float64(h.Failed+h.Silent+h.Installed), r.Policy.MaxFailureRate
				if silenceOnly {
					rate, maxRate = float64(h.Silent)/float64(h.Failed+h.Silent+h.Installed), r.Policy.MaxSilenceRate
				}
				if h.Actor != audit.SystemActor || !h.At.Equal(now) || h.Window != time.Hour || h.MaxRate != maxRate ||
					h.Rate != rate || h.Failed+h.Silent == 0 {
					t.Errorf("halt %+v does not record the numbers", h)
				}
				ev := events[0]
				if ev.FromState != before || ev.ToState != rollout.RolloutPaused || ev.Hold == nil || ev.Actor != audit.SystemActor {
					t.Errorf("event %+v", ev)
				}
				if len(r.Holds) != holdsBefore {
					t.Errorf("a halt also held models: %+v", r.Holds)
				}
			} else if r.Halt != nil || r.State != before {
				t.Fatalf("halted: %+v", r.Halt)
			}
			var newHolds []string
			for _, ev := range events {
				if ev.Action == rollout.ActionHold {
					newHolds = append(newHolds, ev.Model)
					if h := r.ModelHold(ev.Model); h == nil || h.Failed != tc.results[ev.Model].Failed || h.Installed != tc.results[ev.Model].Installed ||
						h.Silent != tc.results[ev.Model].Silent {
						t.Errorf("hold of %s: %+v", ev.Model, h)
					}
				}
			}
			if fmt.Sprint(newHolds) != fmt.Sprint(tc.held) {
				t.Errorf("held %v, want %v", newHolds, tc.held)
			}
			if tc.reason != "" && (len(events) == 0 || !strings.Contains(events[0].Reason, tc.reason)) {
				t.Errorf("reason %q, want it to contain %q", firstReason(events), tc.reason)
			}
			// Evaluating again changes nothing more.
			if again := rollout.EvaluateHealth(r, tc.results, now); len(again) != 0 {
				t.Errorf("second evaluation: %+v", again)
			}
		})
	}
}

func firstReason(events []rollout.Event) string {
	if len(events) == 0 {
		return ""
	}
	return events[0].Reason
}

// TestEvaluateAdvance: a stage moves on by itself only after the soak,
// healthy, with the minimum of results; the last one completes.
func TestEvaluateAdvance(t *testing.T) {
	soak := func(r *rollout.Rollout) { r.Policy.Soak = 6 * time.Hour }
	healthy := byModel{"PX-7": {Installed: 60}}
	for _, tc := range []struct {
		name    string
		rollout func(*rollout.Rollout)
		results byModel
		at      time.Duration // after t0, the stage's start
		stage   int
		state   rollout.RolloutState
	}{
		{"no soak: operator advances", nil, healthy, 100 * time.Hour, 0, rollout.RolloutRunning},
		{"soaking", soak, healthy, 6*time.Hour - time.Second, 0, rollout.RolloutRunning},
		{"soaked", soak, healthy, 6 * time.Hour, 1, rollout.RolloutRunning},
		{"soaked, too few results", soak, byModel{"PX-7": {Installed: 49}}, 7 * time.Hour, 0, rollout.RolloutRunning},
		{"soaked, failing", soak, byModel{"PX-7": {Installed: 90, Failed: 10}}, 7 * time.Hour, 0, rollout.RolloutRunning},
		{"soaked, failing model held", func(r *rollout.Rollout) { soak(r); r.Holds = []rollout.Hold{{Model: "PX-8"}} },
			byModel{"PX-7": {Installed: 60}, "PX-8": {Failed: 100}}, 7 * time.Hour, 1, rollout.RolloutRunning},
		{"last stage completes", func(r *rollout.Rollout) { soak(r); r.Stage = 3 }, healthy, 7 * time.Hour, 3, rollout.RolloutCompleted},
		{"paused", func(r *rollout.Rollout) { soak(r); r.State = rollout.RolloutPaused }, healthy, 7 * time.Hour, 0, rollout.RolloutPaused},
		{"resumed: the soak starts again", func(r *rollout.Rollout) { soak(r); r.HealthSince = t0.Add(5 * time.Hour) }, healthy, 7 * time.Hour, 0, rollout.RolloutRunning},
		{"resumed and soaked", func(r *rollout.Rollout) { soak(r); r.HealthSince = t0.Add(5 * time.Hour) }, healthy, 11 * time.Hour, 1, rollout.RolloutRunning},
		// Confirmations: reported installs are the handsets' word; the
		// stage waits for handsets back on the new build.
		{"soaked, installs reported but too few confirmed", confirmations(soak, 40), byModel{"PX-7": {Installed: 60, Confirmed: 39}}, 7 * time.Hour, 0, rollout.RolloutRunning},
		{"soaked and confirmed", confirmations(soak, 40), byModel{"PX-7": {Installed: 60, Confirmed: 40}}, 7 * time.Hour, 1, rollout.RolloutRunning},
		{"confirmations of a held model do not count", func(r *rollout.Rollout) { confirmations(soak, 40)(r); r.Holds = []rollout.Hold{{Model: "PX-8"}} },
			byModel{"PX-7": {Installed: 60, Confirmed: 20}, "PX-8": {Installed: 60, Confirmed: 60}}, 7 * time.Hour, 0, rollout.RolloutRunning},
		{"silent handsets keep a stage", func(r *rollout.Rollout) { soak(r); silence(time.Hour, 0.01)(r) }, byModel{"PX-7": {Installed: 98, Silent: 2}}, 7 * time.Hour, 0, rollout.RolloutRunning},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runningRollout(t)
			if tc.rollout != nil {
				tc.rollout(r)
			}
			fromStage, fromState := r.Stage, r.State
			now := t0.Add(tc.at)
			ev, ok := rollout.EvaluateAdvance(r, tc.results, now)
			if r.Stage != tc.stage || r.State != tc.state {
				t.Fatalf("stage %d state %s, want %d %s", r.Stage, r.State, tc.stage, tc.state)
			}
			if changed := r.Stage != fromStage || r.State != fromState; changed != ok {
				t.Fatalf("ok %v but changed %v", ok, changed)
			}
			if !ok {
				return
			}
			if ev.Actor != audit.SystemActor || !ev.At.Equal(now) || !strings.Contains(ev.Reason, "soaked 6h") {
				t.Errorf("event %+v", ev)
			}
			if r.State == rollout.RolloutRunning && !r.StageStartedAt.Equal(now) {
				t.Errorf("new stage started %v, want %v", r.StageStartedAt, now)
			}
		})
	}
}

// TestRolloutStagesScenario runs 2,000 handsets through an operator's
// 10% -> 50% -> 100%: at each stage the handsets offered are the stage's
// share within 1 point, and nobody offered before is refused after a
// widening.
func TestRolloutStagesScenario(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{10, 50, 100} })
	const n = 2000
	records := make([]*handsets.DeviceRollout, n)
	devices := make([]*handsets.Device, n)
	for i := range devices {
		devices[i] = &handsets.Device{ID: fmt.Sprintf("dev_%04d", i), Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	}
	now := t0
	for stage, percent := range []float64{10, 50, 100} {
		if stage > 0 {
			if _, err := r.Advance("alice", "healthy", 0, now); err != nil {
				t.Fatal(err)
			}
		}
		offered := 0
		for i, d := range devices {
			dec := rollout.Decide(r, d, records[i], rollout.DecisionInput{Now: now})
			if records[i] != nil && !dec.Offered() {
				t.Fatalf("%g%%: %s was offered at an earlier stage, now refused: %v", percent, d.ID, dec.Reason)
			}
			if dec.Offered() {
				offered++
				records[i] = dec.Record(records[i], d, now)
				records[i].Observe(handsets.StateDownloading, now)
			}
		}
		if share := 100 * float64(offered) / n; share < percent-1 || share > percent+1 {
			t.Errorf("stage %g%%: %d of %d offered (%.1f%%)", percent, offered, n, share)
		}
		now = now.Add(time.Hour)
	}
}

// TestFailingModelScenario: one model of three fails a third of its
// installs; it is held alone, the other two go on to completion with
// auto-advance, and the held model is offered nothing new.
func TestFailingModelScenario(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) {
		r.Stages = []float64{10, 50, 100}
		r.Policy.Soak = time.Hour
		r.Policy.MinResults = 20
	})
	const n = 3000
	models := []string{"PX-7", "PX-8", "PX-9"}
	type handset struct {
		d  *handsets.Device
		dr *handsets.DeviceRollout
		at time.Time // when it reported
	}
	fleet := make([]*handset, n)
	for i := range fleet {
		fleet[i] = &handset{d: &handsets.Device{ID: fmt.Sprintf("dev_%04d", i), Model: models[i%3], Build: "7.4.0", Channel: "stable"}}
	}
	var log []rollout.Event
	for now := t0; now.Before(t0.Add(24*time.Hour)) && r.State != rollout.RolloutCompleted; now = now.Add(10 * time.Minute) {
		for i, h := range fleet {
			dec := rollout.Decide(r, h.d, h.dr, rollout.DecisionInput{Now: now})
			if !dec.Offered() || dec.Kind == rollout.OfferRepeat {
				continue
			}
			h.dr = dec.Record(h.dr, h.d, now)
			h.at = now
			if h.d.Model == "PX-8" && i%9 < 3 { // a third of PX-8 fails
				h.dr.Observe(handsets.StateFailed, now)
			} else {
				h.dr.Observe(handsets.StateInstalled, now)
			}
		}
		count := func(since func(model string) time.Time) byModel {
			out := byModel{}
			for _, h := range fleet {
				if h.dr == nil || h.at.Before(since(h.d.Model)) {
					continue
				}
				res := out[h.d.Model]
				switch h.dr.State {
				case handsets.StateInstalled:
					res.Installed++
				case handsets.StateFailed:
					res.Failed++
				}
				out[h.d.Model] = res
			}
			return out
		}
		log = append(log, rollout.EvaluateHealth(r, count(func(m string) time.Time { return r.ResultsSince(m, now) }), now)...)
		if ev, ok := rollout.EvaluateAdvance(r, count(r.StageResultsSince), now); ok {
			log = append(log, ev)
		}
	}
	if r.State != rollout.RolloutCompleted || r.Halt != nil {
		t.Fatalf("state %s halt %+v, want completed; events %+v", r.State, r.Halt, log)
	}
	if len(r.Holds) != 1 || r.Holds[0].Model != "PX-8" {
		t.Fatalf("holds %+v, want PX-8 alone", r.Holds)
	}
	offered := map[string]int{}
	for _, h := range fleet {
		if h.dr != nil {
			offered[h.d.Model]++
		}
	}
	if offered["PX-7"] != n/3 || offered["PX-9"] != n/3 {
		t.Errorf("offered by model %v, want all %d of PX-7 and PX-9", offered, n/3)
	}
	if offered["PX-8"] >= n/3/2 {
		t.Errorf("PX-8 offered %d of %d while held", offered["PX-8"], n/3)
	}
	dec := rollout.Decide(r, &handsets.Device{ID: "dev_new", Model: "PX-8", Build: "7.4.0", Channel: "stable"}, nil, rollout.DecisionInput{Now: t0.Add(25 * time.Hour)})
	if !errors.Is(dec.Reason, rollout.ErrModelHeld) {
		t.Errorf("a new PX-8: %v, want ErrModelHeld", dec.Reason)
	}
}

// silence sets a policy's SilenceAfter and MaxSilenceRate.
func silence(after time.Duration, maxRate float64) func(*rollout.Rollout) {
	return func(r *rollout.Rollout) { r.Policy.SilenceAfter, r.Policy.MaxSilenceRate = after, maxRate }
}

// confirmations sets a policy's MinConfirmations after set.
func confirmations(set func(*rollout.Rollout), n int64) func(*rollout.Rollout) {
	return func(r *rollout.Rollout) { set(r); r.Policy.MinConfirmations = n }
}
