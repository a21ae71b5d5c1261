package rollout_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// deviceID returns the first "dev_N" that is (in) or is not in the
// percent stage of salt.
func deviceID(tb testing.TB, salt string, percent float64, in bool) string {
	tb.Helper()
	for i := range 100_000 {
		if id := fmt.Sprintf("dev_%d", i); rollout.InStage(salt, id, percent) == in {
			return id
		}
	}
	tb.Fatalf("no device id with InStage(%q, %g) = %v", salt, percent, in)
	return ""
}

func intp(v int) *int { return &v }

// TestDecide: what a rollout answers one handset, and when it should ask
// again, for every rule. The rollout runs its 10% stage of the privacy
// patch (installs 7.5.0) from t0; the handset is a PX-7 on 7.4.0, stable,
// DE, in the 10% cohort.
func TestDecide(t *testing.T) {
	inID := deviceID(t, "ro_1", 10, true)
	outID := deviceID(t, "ro_1", 10, false)
	window, _ := rollout.ParseWindow("01:00-05:00")
	now := t0.Add(2 * time.Hour) // 14:00 UTC

	type tc struct {
		name     string
		rollout  func(*rollout.Rollout)
		device   func(*handsets.Device)
		record   *handsets.DeviceRollout
		in       func(*rollout.DecisionInput)
		kind     rollout.OfferKind
		reason   error
		poll     time.Duration
		budgeted bool
	}
	installing := func(state string) *handsets.DeviceRollout {
		return &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: inID, State: state, Attempts: 1, OfferedAt: t0, LastOfferedAt: t0}
	}
	failed := func(attempts int, ago time.Duration) *handsets.DeviceRollout {
		return &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: inID, State: handsets.StateFailed, Attempts: attempts,
			OfferedAt: t0, LastOfferedAt: t0, LastFailureAt: now.Add(-ago)}
	}
	pause := func(r *rollout.Rollout) { r.State = rollout.RolloutPaused }
	halt := func(r *rollout.Rollout) {
		r.State, r.Halt = rollout.RolloutPaused, &rollout.Hold{Reason: "failures", At: t0}
	}
	abort := func(r *rollout.Rollout) { r.State = rollout.RolloutAborted }
	holdPX7 := func(r *rollout.Rollout) { r.Holds = []rollout.Hold{{Model: "PX-7", Reason: "x", At: t0}} }
	withWindow := func(r *rollout.Rollout) { r.Policy.Window = window }
	withCap := func(r *rollout.Rollout) { r.Policy.MaxOffersPerMinute = 100 }
	noBudget := func(in *rollout.DecisionInput) { in.BudgetLeft = false }
	outOfCohort := func(d *handsets.Device) { d.ID = outID }
	otherChannel := func(d *handsets.Device) { d.Channel = "beta" }

	for _, c := range []tc{
		{name: "first offer", kind: rollout.OfferFirst, budgeted: true},
		{name: "not in the cohort", device: outOfCohort, reason: rollout.ErrNotInCohort},
		{name: "in the cohort once widened", device: outOfCohort, rollout: func(r *rollout.Rollout) { r.Stage = 2 }, kind: rollout.OfferFirst, budgeted: true},

		// Never a patch it runs, never back to an older build.
		{name: "runs the patch", device: func(d *handsets.Device) { d.InstalledPatches = []string{"CM-2026-001"} }, reason: rollout.ErrRunsPatch},
		{name: "reported installed", record: installing(handsets.StateInstalled), reason: rollout.ErrRunsPatch},
		{name: "on the release's build", device: func(d *handsets.Device) { d.Build = "7.5.0" }, reason: rollout.ErrBuildNotOlder},
		{name: "on a newer build", device: func(d *handsets.Device) { d.Build = "7.10.0" }, reason: rollout.ErrBuildNotOlder},
		{name: "on a newer build mid-install", device: func(d *handsets.Device) { d.Build = "8.0" }, record: installing(handsets.StateDownloading), reason: rollout.ErrBuildNotOlder},

		// Selection: the rollout's selector and the release's own bounds.
		{name: "model not selected", rollout: func(r *rollout.Rollout) { r.Selector.Models = []string{"PX-8"} }, reason: rollout.ErrNotSelected},
		{name: "channel not selected", rollout: func(r *rollout.Rollout) { r.Selector.Channels = []string{"beta"} }, reason: rollout.ErrNotSelected},
		{name: "region not selected", rollout: func(r *rollout.Rollout) { r.Selector.Regions = []string{"FR"} }, reason: rollout.ErrNotSelected},
		{name: "build below the selector", rollout: func(r *rollout.Rollout) { r.Selector.BuildMin = "7.4.1" }, reason: rollout.ErrNotSelected},
		{name: "build above the selector", rollout: func(r *rollout.Rollout) { r.Selector.BuildMax = "7.3" }, reason: rollout.ErrNotSelected},
		{name: "all selectors match", rollout: func(r *rollout.Rollout) {
			r.Selector = rollout.Selector{Models: []string{"PX-8", "PX-7"}, Channels: []string{"stable"}, Regions: []string{"DE"}, BuildMin: "7.4.0", BuildMax: "7.4.0"}
		}, kind: rollout.OfferFirst, budgeted: true},
		{name: "release not for the model", rollout: func(r *rollout.Rollout) { r.Release.Models = []string{"PX-8"} }, reason: rollout.ErrNotSelected},
		{name: "release not for the build", rollout: func(r *rollout.Rollout) { r.Release.BuildMin = "7.4.5" }, reason: rollout.ErrNotSelected},

		// States.
		{name: "draft", rollout: func(r *rollout.Rollout) { r.State = rollout.RolloutDraft }, reason: rollout.ErrRolloutNotRunning},
		{name: "paused", rollout: pause, reason: rollout.ErrRolloutNotRunning},
		{name: "halted", rollout: halt, reason: rollout.ErrRolloutHalted},
		{name: "aborted", rollout: abort, reason: rollout.ErrRolloutNotRunning},
		{name: "completed goes on offering", rollout: func(r *rollout.Rollout) { r.State = rollout.RolloutCompleted }, kind: rollout.OfferFirst, budgeted: true},
		{name: "model held", rollout: holdPX7, reason: rollout.ErrModelHeld},
		{name: "another model held", rollout: func(r *rollout.Rollout) { r.Holds = []rollout.Hold{{Model: "PX-8"}} }, kind: rollout.OfferFirst, budgeted: true},

		// Maintenance window, 01:00-05:00 local.
		{name: "window, no offset: UTC", rollout: withWindow, reason: rollout.ErrOutsideWindow, poll: 11 * time.Hour},
		{name: "window, UTC+11 at 01:00 local", rollout: withWindow, in: func(in *rollout.DecisionInput) { in.UTCOffsetMinutes = intp(660) }, kind: rollout.OfferFirst, budgeted: true},
		{name: "window, UTC-5 at 09:00 local", rollout: withWindow, in: func(in *rollout.DecisionInput) { in.UTCOffsetMinutes = intp(-300) }, reason: rollout.ErrOutsideWindow, poll: 16 * time.Hour},
		{name: "window, bad offset: UTC", rollout: withWindow, in: func(in *rollout.DecisionInput) { in.UTCOffsetMinutes = intp(5000) }, reason: rollout.ErrOutsideWindow, poll: 11 * time.Hour},
		{name: "window checked after the cohort", rollout: withWindow, device: outOfCohort, reason: rollout.ErrNotInCohort},

		// Offers per minute.
		{name: "cap, budget left", rollout: withCap, kind: rollout.OfferFirst, budgeted: true},
		{name: "cap reached", rollout: withCap, in: noBudget, reason: rollout.ErrOfferCapReached, poll: time.Minute},
		{name: "no cap, no budget needed", in: noBudget, kind: rollout.OfferFirst, budgeted: true},

		// A handset that began installing finishes, whatever happens.
		{name: "installing, running", record: installing(handsets.StateDownloading), kind: rollout.OfferRepeat},
		{name: "installing, paused", rollout: pause, record: installing(handsets.StateVerified), kind: rollout.OfferRepeat},
		{name: "installing, halted", rollout: halt, record: installing(handsets.StateInstalling), kind: rollout.OfferRepeat},
		{name: "installing, aborted", rollout: abort, record: installing(handsets.StateDownloaded), kind: rollout.OfferRepeat},
		{name: "installing, model held", rollout: holdPX7, record: installing(handsets.StateDownloading), kind: rollout.OfferRepeat},
		{name: "installing, no longer selected", device: otherChannel, rollout: func(r *rollout.Rollout) { r.Selector.Channels = []string{"stable"} }, record: installing(handsets.StateDownloading), kind: rollout.OfferRepeat},
		{name: "installing, out of window and budget", rollout: func(r *rollout.Rollout) { withWindow(r); withCap(r) }, in: noBudget, record: installing(handsets.StateDownloading), kind: rollout.OfferRepeat},

		// Offered, nothing reported: again while running, not once stopped.
		{name: "offered, running, out of window and budget", rollout: func(r *rollout.Rollout) { withWindow(r); withCap(r) }, in: noBudget, record: installing(handsets.DeviceOffered), kind: rollout.OfferRepeat},
		{name: "offered, paused", rollout: pause, record: installing(handsets.DeviceOffered), reason: rollout.ErrRolloutNotRunning},
		{name: "offered, aborted", rollout: abort, record: installing(handsets.DeviceOffered), reason: rollout.ErrRolloutNotRunning},
		{name: "offered, model held", rollout: holdPX7, record: installing(handsets.DeviceOffered), reason: rollout.ErrModelHeld},

		// Retries: backoff 1h, 4h, 24h; 3 retries, so 4 attempts.
		{name: "failed 30m ago", record: failed(1, 30*time.Minute), reason: rollout.ErrRetryBackoff, poll: 30 * time.Minute},
		{name: "failed 1h ago", record: failed(1, time.Hour), kind: rollout.OfferRetry, budgeted: true},
		{name: "second failure 3h ago", record: failed(2, 3*time.Hour), reason: rollout.ErrRetryBackoff, poll: time.Hour},
		{name: "second failure 4h ago", record: failed(2, 4*time.Hour), kind: rollout.OfferRetry, budgeted: true},
		{name: "third failure 23h ago", record: failed(3, 23*time.Hour), reason: rollout.ErrRetryBackoff, poll: time.Hour},
		{name: "third failure 24h ago", record: failed(3, 24*time.Hour), kind: rollout.OfferRetry, budgeted: true},
		{name: "fourth failure", record: failed(4, 100*time.Hour), reason: rollout.ErrAttemptsExhausted},
		{name: "rolled back counts as failed", record: func() *handsets.DeviceRollout {
			dr := failed(1, 10*time.Minute)
			dr.State = handsets.StateRolledBack
			return dr
		}(), reason: rollout.ErrRetryBackoff, poll: 50 * time.Minute},
		{name: "no retries", rollout: func(r *rollout.Rollout) { r.Policy.Retries = 0 }, record: failed(1, 100*time.Hour), reason: rollout.ErrAttemptsExhausted},
		{name: "retry, paused", rollout: pause, record: failed(1, 2*time.Hour), reason: rollout.ErrRolloutNotRunning},
		{name: "retry, model held", rollout: holdPX7, record: failed(1, 2*time.Hour), reason: rollout.ErrModelHeld},
		{name: "retry, no longer selected", rollout: func(r *rollout.Rollout) { r.Selector.Channels = []string{"stable"} }, device: otherChannel, record: failed(1, 2*time.Hour), reason: rollout.ErrNotSelected},
		{name: "retry, outside window", rollout: withWindow, record: failed(1, 2*time.Hour), reason: rollout.ErrOutsideWindow, poll: 11 * time.Hour},
		{name: "retry, cap reached", rollout: withCap, in: noBudget, record: failed(1, 2*time.Hour), reason: rollout.ErrOfferCapReached, poll: time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{10, 50, 100} })
			if c.rollout != nil {
				c.rollout(r)
			}
			d := &handsets.Device{ID: inID, Model: "PX-7", Build: "7.4.0", Channel: "stable", Region: "DE", InstalledPatches: []string{}}
			if c.device != nil {
				c.device(d)
			}
			in := rollout.DecisionInput{Now: now, BudgetLeft: true}
			if c.in != nil {
				c.in(&in)
			}
			dec := rollout.Decide(r, d, c.record, in)
			if dec.Kind != c.kind || !errors.Is(dec.Reason, c.reason) || (c.reason == nil) != (dec.Reason == nil) {
				t.Fatalf("got kind %d reason %v, want kind %d reason %v", dec.Kind, dec.Reason, c.kind, c.reason)
			}
			if dec.PollAfter != c.poll {
				t.Errorf("poll after %v, want %v", dec.PollAfter, c.poll)
			}
			if dec.TakesBudget() != c.budgeted {
				t.Errorf("takes budget %v, want %v", dec.TakesBudget(), c.budgeted)
			}
			if dec.RolloutID != "ro_1" {
				t.Errorf("rollout id %q", dec.RolloutID)
			}
			if dec.Offered() && dec.Release.Target != "patches/cm-2026-001.zip" {
				t.Errorf("offered %+v", dec.Release)
			}
			if !dec.Offered() && rollout.RefusalCode(dec.Reason) == "no_offer" {
				t.Errorf("reason %v has no refusal code", dec.Reason)
			}
		})
	}
}

// TestRetrySchedule follows one handset whose every install fails,
// polling every 10 minutes for two days: it is offered the release at
// t0, then 1 h, 4 h and 24 h after each failure, and never again.
func TestRetrySchedule(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{100} })
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	var dr *handsets.DeviceRollout
	var offers []time.Duration
	var last rollout.Decision
	for now := t0; now.Before(t0.Add(48 * time.Hour)); now = now.Add(10 * time.Minute) {
		last = rollout.Decide(r, d, dr, rollout.DecisionInput{Now: now})
		if !last.Offered() {
			continue
		}
		offers = append(offers, now.Sub(t0))
		dr = last.Record(dr, d, now)
		dr.Observe(handsets.StateDownloading, now)
		dr.Observe(handsets.StateFailed, now) // fails at once
	}
	want := []time.Duration{0, time.Hour, 5 * time.Hour, 29 * time.Hour}
	if fmt.Sprint(offers) != fmt.Sprint(want) {
		t.Errorf("offers at %v after t0, want %v", offers, want)
	}
	if dr.Attempts != 4 || dr.StartingBuild != "7.4.0" || !dr.OfferedAt.Equal(t0) || !dr.LastOfferedAt.Equal(t0.Add(29*time.Hour)) {
		t.Errorf("record %+v", dr)
	}
	if !errors.Is(last.Reason, rollout.ErrAttemptsExhausted) {
		t.Errorf("at the end: %v, want ErrAttemptsExhausted", last.Reason)
	}
}

// TestObserve: reports move a handset's record; a late intermediate
// report never takes it back.
func TestObserve(t *testing.T) {
	dr := &handsets.DeviceRollout{State: handsets.DeviceOffered}
	for _, s := range []string{handsets.StateDownloading, handsets.StateVerified, handsets.StateDownloaded, handsets.StateInstalling} {
		dr.Observe(s, t0)
	}
	if dr.State != handsets.StateInstalling {
		t.Errorf("state %s, want installing (the late downloaded ignored)", dr.State)
	}
	if !dr.ResultAt.IsZero() {
		t.Errorf("result at %v before any result, want zero", dr.ResultAt)
	}
	dr.Observe(handsets.StateFailed, t0.Add(time.Minute))
	if dr.State != handsets.StateFailed || !dr.LastFailureAt.Equal(t0.Add(time.Minute)) || !dr.ResultAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("after failed: %+v", dr)
	}
	dr.Observe(handsets.StateDownloading, t0.Add(2*time.Minute))
	if dr.State != handsets.StateFailed || !dr.ResultAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("a late downloading after failed moved the state to %s, the result time to %v", dr.State, dr.ResultAt)
	}
	dr.Observe(handsets.StateInstalled, t0.Add(3*time.Minute))
	if dr.State != handsets.StateInstalled || !dr.ResultAt.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("state %s at %v, want installed at %v", dr.State, dr.ResultAt, t0.Add(3*time.Minute))
	}
}

// TestCapReached: when the store cannot take a decided offer from the
// shared budget, the answer is the cap refusal.
func TestCapReached(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{100}; r.Policy.MaxOffersPerMinute = 1 })
	dec := rollout.Decide(r, &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0"}, nil, rollout.DecisionInput{Now: t0, BudgetLeft: true})
	if !dec.TakesBudget() {
		t.Fatalf("decision %+v", dec)
	}
	dec = dec.CapReached()
	if dec.Offered() || !errors.Is(dec.Reason, rollout.ErrOfferCapReached) || dec.PollAfter != time.Minute || dec.RolloutID != "ro_1" {
		t.Errorf("got %+v", dec)
	}
}

// TestChooseRollout: a handset is offered at most one release, chosen
// the same way every time.
func TestChooseRollout(t *testing.T) {
	window, _ := rollout.ParseWindow("01:00-05:00")
	mk := func(id string, started time.Time, mutate func(*rollout.Rollout)) *rollout.Rollout {
		r := draftRollout(t, func(r *rollout.Rollout) {
			r.ID, r.Salt, r.Stages = id, id, []float64{100}
			r.Release.PatchID, r.Release.Target = "P-"+id, "patches/"+id
		})
		if _, err := r.Start("alice", "go", started); err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			mutate(r)
		}
		return r
	}
	now := t0.Add(2 * time.Hour) // 14:00 UTC
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	older := func(m func(*rollout.Rollout)) *rollout.Rollout { return mk("ro_old", t0, m) }
	newer := func(m func(*rollout.Rollout)) *rollout.Rollout { return mk("ro_new", t0.Add(time.Hour), m) }
	rec := func(id, state string, offered time.Time) *handsets.DeviceRollout {
		return &handsets.DeviceRollout{RolloutID: id, DeviceID: "dev_1", State: state, Attempts: 1, OfferedAt: offered,
			LastOfferedAt: offered, LastFailureAt: now.Add(-10 * time.Minute)}
	}
	for _, tc := range []struct {
		name     string
		rollouts []*rollout.Rollout
		records  []*handsets.DeviceRollout
		budget   func(string) bool
		want     string // rollout id offered; "" for a refusal
		kind     rollout.OfferKind
		reason   error
		poll     time.Duration
	}{
		{name: "none", reason: rollout.ErrNotSelected},
		{name: "newest started first", rollouts: []*rollout.Rollout{older(nil), newer(nil)}, want: "ro_new", kind: rollout.OfferFirst},
		{name: "order of the list does not matter", rollouts: []*rollout.Rollout{newer(nil), older(nil)}, want: "ro_new", kind: rollout.OfferFirst},
		{name: "drafts skipped", rollouts: []*rollout.Rollout{older(nil), newer(func(r *rollout.Rollout) { r.State = rollout.RolloutDraft })}, want: "ro_old", kind: rollout.OfferFirst},
		{name: "installing keeps its release", rollouts: []*rollout.Rollout{older(nil), newer(nil)},
			records: []*handsets.DeviceRollout{rec("ro_old", handsets.StateDownloading, t0)}, want: "ro_old", kind: rollout.OfferRepeat},
		{name: "installing an aborted release keeps it", rollouts: []*rollout.Rollout{older(func(r *rollout.Rollout) { r.State = rollout.RolloutAborted }), newer(nil)},
			records: []*handsets.DeviceRollout{rec("ro_old", handsets.StateInstalling, t0)}, want: "ro_old", kind: rollout.OfferRepeat},
		{name: "installing beats offered", rollouts: []*rollout.Rollout{older(nil), newer(nil)},
			records: []*handsets.DeviceRollout{rec("ro_new", handsets.DeviceOffered, now), rec("ro_old", handsets.StateDownloading, t0)}, want: "ro_old", kind: rollout.OfferRepeat},
		{name: "offered, rollout paused: another may offer", rollouts: []*rollout.Rollout{older(func(r *rollout.Rollout) { r.State = rollout.RolloutPaused }), newer(nil)},
			records: []*handsets.DeviceRollout{rec("ro_old", handsets.DeviceOffered, t0)}, want: "ro_new", kind: rollout.OfferFirst},
		{name: "retry where it started", rollouts: []*rollout.Rollout{older(nil), newer(nil)},
			records: []*handsets.DeviceRollout{func() *handsets.DeviceRollout {
				dr := rec("ro_old", handsets.StateFailed, t0)
				dr.LastFailureAt = now.Add(-2 * time.Hour)
				return dr
			}()}, want: "ro_old", kind: rollout.OfferRetry},
		{name: "budget is per rollout", rollouts: []*rollout.Rollout{older(func(r *rollout.Rollout) { r.Policy.MaxOffersPerMinute = 10 }), newer(func(r *rollout.Rollout) { r.Policy.MaxOffersPerMinute = 10 })},
			budget: func(id string) bool { return id == "ro_old" }, want: "ro_old", kind: rollout.OfferFirst},
		{name: "refusal: the one that can change, soonest poll",
			rollouts: []*rollout.Rollout{
				older(func(r *rollout.Rollout) { r.Policy.MaxOffersPerMinute = 10 }),
				newer(func(r *rollout.Rollout) { r.Policy.Window = window }),
				mk("ro_done", t0.Add(90*time.Minute), nil),
			},
			records: []*handsets.DeviceRollout{rec("ro_done", handsets.StateInstalled, t0)},
			budget:  func(string) bool { return false },
			reason:  rollout.ErrOutsideWindow, poll: time.Minute},
		{name: "refusal: only final ones", rollouts: []*rollout.Rollout{older(func(r *rollout.Rollout) { r.Selector.Models = []string{"PX-9"} })},
			reason: rollout.ErrNotSelected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec := rollout.ChooseRollout(tc.rollouts, d, tc.records, rollout.DecisionInput{Now: now}, tc.budget)
			if tc.want != "" {
				if !dec.Offered() || dec.RolloutID != tc.want || dec.Kind != tc.kind || dec.Release.Target != "patches/"+tc.want {
					t.Fatalf("got %s kind %d (%v), want %s kind %d", dec.RolloutID, dec.Kind, dec.Reason, tc.want, tc.kind)
				}
				return
			}
			if dec.Offered() || !errors.Is(dec.Reason, tc.reason) || dec.PollAfter != tc.poll {
				t.Errorf("got %s %v poll %v, want a refusal %v poll %v", dec.RolloutID, dec.Reason, dec.PollAfter, tc.reason, tc.poll)
			}
		})
	}
}

// TestPending: a rollout that cannot offer a handset anything any more
// needs no read of its records.
func TestPending(t *testing.T) {
	r := runningRollout(t)
	for _, tc := range []struct {
		name string
		d    handsets.Device
		want bool
	}{
		{"older build", handsets.Device{Build: "7.4.0"}, true},
		{"runs the patch", handsets.Device{Build: "7.4.0", InstalledPatches: []string{"CM-2026-001"}}, false},
		{"on the build", handsets.Device{Build: "7.5.0"}, false},
	} {
		if got := r.Pending(&tc.d); got != tc.want {
			t.Errorf("%s: Pending = %v, want %v", tc.name, got, tc.want)
		}
	}
}
