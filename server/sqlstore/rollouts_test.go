package sqlstore

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestRolloutStore runs the rollout store suite against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL, each test on a fresh,
// migrated database.
func TestRolloutStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RolloutRoundTrip", testRolloutRoundTrip},
		{"RolloutsByState", testRolloutsByState},
		{"RolloutOptimisticLock", testRolloutOptimisticLock},
		{"RolloutOptimisticLockConcurrent", testRolloutOptimisticLockConcurrent},
		{"RolloutEvents", testRolloutEvents},
		{"RolloutUpdateAtomic", testRolloutUpdateAtomic},
		{"DeviceRolloutUpsert", testDeviceRolloutUpsert},
		{"RolloutResults", testRolloutResults},
		{"RolloutSilence", testRolloutSilence},
		{"RolloutConfirmations", testRolloutConfirmations},
		{"RolloutResultsUsesIndex", testRolloutResultsUsesIndex},
		{"RolloutResultsLeaveOutLateEnrollees", testRolloutResultsLeaveOutLateEnrollees},
		{"ClaimOfferConcurrent", testClaimOfferConcurrent},
		{"EraseDeletesDeviceRollouts", testEraseDeletesDeviceRollouts},
	})
}

// µs is t as both dialects keep it.
func µs(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

func mustRollouts(t testing.TB, b backend) (*DB, *DeviceStore, *RolloutStore) {
	t.Helper()
	db, devices := mustDevices(t, b)
	return db, devices, db.Rollouts()
}

// newDraft is a draft made by rollout.NewRollout, as the API makes one:
// nil slices and maps, zero times.
func newDraft(t testing.TB, id string) (*rollout.Rollout, rollout.Event) {
	t.Helper()
	r, ev, err := rollout.NewRollout(rollout.Rollout{ID: id,
		Release: rollout.RolloutRelease{Target: "patches/" + id + ".zip", PatchID: "CM-2026-001", InstallsBuild: "7.5.0"},
		Stages:  []float64{1, 10, 50, 100}, Policy: rollout.DefaultPolicy()}, "alice", t0)
	if err != nil {
		t.Fatalf("new rollout: %v", err)
	}
	return r, ev
}

func mustCreateRollout(t testing.TB, s *RolloutStore, id string) *rollout.Rollout {
	t.Helper()
	r, ev := newDraft(t, id)
	if err := s.CreateRollout(t.Context(), r, 0, ev); err != nil {
		t.Fatalf("create rollout %s: %v", id, err)
	}
	return r
}

func mustRollout(t testing.TB, s *RolloutStore, id string) *rollout.Rollout {
	t.Helper()
	r, err := s.Rollout(t.Context(), id)
	if err != nil {
		t.Fatalf("rollout %s: %v", id, err)
	}
	return r
}

func mustEvents(t testing.TB, s *RolloutStore, id string, limit int) []rollout.Event {
	t.Helper()
	evs, err := s.RolloutEvents(t.Context(), id, limit)
	if err != nil {
		t.Fatalf("rollout %s: events: %v", id, err)
	}
	return evs
}

// fullRollout sets every field of a rollout, each to something of its
// own, with times from at.
func fullRollout(id string, at time.Time) *rollout.Rollout {
	w, err := rollout.ParseWindow("22:00-02:30")
	if err != nil {
		panic(err)
	}
	return &rollout.Rollout{
		ID: id,
		Release: rollout.RolloutRelease{Target: "patches/cm-2026-001.zip", PatchID: "CM-2026-001", InstallsBuild: "7.5.0",
			Models: []string{"PX-7", "PX-8", "PX-9"}, BuildMin: "7.0.0", BuildMax: "7.4.9"},
		Selector: rollout.Selector{Models: []string{"PX-7", "PX-9"}, Channels: []string{"stable", "beta"},
			Regions: []string{"DE", "FR"}, BuildMin: "7.1.0", BuildMax: "7.4.0"},
		Stages: []float64{0.01, 1, 12.5, 50, 100},
		Stage:  2,
		State:  rollout.RolloutPaused,
		Salt:   "salt of ro_full",
		Policy: rollout.Policy{MaxFailureRate: 0.035, MinResults: 75, FailureWindow: 90 * time.Minute,
			Soak: 6*time.Hour + 30*time.Minute, Retries: 4,
			Backoff:            []time.Duration{time.Hour, 4 * time.Hour, 24*time.Hour + 15*time.Second},
			MaxOffersPerMinute: 120, Window: w, StartAt: at.Add(30 * time.Minute), Deadline: at.Add(50 * time.Hour)},
		StartNotedAt:    at.Add(31 * time.Minute),
		DeadlineNotedAt: at.Add(51 * time.Hour),
		Halt: &rollout.Hold{Actor: audit.SystemActor, Reason: "the rollout failed 9 of 60 installs",
			Installed: 51, Failed: 9, Rate: 9.0 / 60, MaxRate: 0.035, Window: 90 * time.Minute, At: at.Add(time.Minute)},
		Holds: []rollout.Hold{
			{Model: "PX-8", Actor: "bob", Reason: "a field report of boot loops", At: at.Add(2 * time.Minute)},
			{Model: "PX-9", Actor: audit.SystemActor, Reason: "model PX-9 failed 1 of 3", Installed: 2, Failed: 1,
				Rate: 1.0 / 3, MaxRate: 0.035, Window: time.Hour, At: at.Add(3 * time.Minute)},
		},
		CreatedBy:        "alice",
		CreatedAt:        at,
		StartedAt:        at.Add(time.Hour),
		StageStartedAt:   at.Add(2 * time.Hour),
		EndedAt:          at.Add(3 * time.Hour),
		HealthSince:      at.Add(4 * time.Hour),
		ModelHealthSince: map[string]time.Time{"PX-7": at.Add(5 * time.Hour), "PX-8": at.Add(6 * time.Hour)},
	}
}

func withVersion(r *rollout.Rollout, v int64) *rollout.Rollout {
	r.Version = v
	return r
}

func checkRollout(t testing.TB, what string, got, want *rollout.Rollout) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// testRolloutRoundTrip: a rollout reads back as it was created and as
// it was saved, every field of it, to the microsecond, and nil stays nil.
func testRolloutRoundTrip(t *testing.T, b backend) {
	_, _, s := mustRollouts(t, b)
	ctx := t.Context()

	full := fullRollout("ro_full", t0)
	createEv := rollout.Event{RolloutID: "ro_full", At: t0, Actor: "alice", Action: rollout.ActionCreate}
	if err := s.CreateRollout(ctx, full, 0, createEv); err != nil {
		t.Fatalf("create: %v", err)
	}
	if full.Version != 1 {
		t.Errorf("version after create: got %d, want 1", full.Version)
	}
	want := fullRollout("ro_full", µs(t0))
	want.Version = 1
	checkRollout(t, "created", mustRollout(t, s, "ro_full"), want)

	draft := mustCreateRollout(t, s, "ro_draft")
	wantDraft := draft.Clone()
	wantDraft.CreatedAt = µs(wantDraft.CreatedAt)
	checkRollout(t, "draft", mustRollout(t, s, "ro_draft"), wantDraft)

	// Saving the full rollout over the draft writes every column; saving
	// the draft back sets the halt and the times to NULL again.
	over := fullRollout("ro_draft", t0)
	if err := s.UpdateRollout(ctx, over, 1, nil); err != nil {
		t.Fatalf("update: %v", err)
	}
	want = fullRollout("ro_draft", µs(t0))
	want.Version = 2
	checkRollout(t, "saved over the draft", mustRollout(t, s, "ro_draft"), want)
	back := wantDraft.Clone()
	if err := s.UpdateRollout(ctx, back, 2, nil); err != nil {
		t.Fatalf("update back: %v", err)
	}
	wantDraft.Version = 3
	checkRollout(t, "saved back", mustRollout(t, s, "ro_draft"), wantDraft)

	if _, err := s.Rollout(ctx, "ro_none"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown rollout: got %v, want ErrNotFound", err)
	}
	dup, ev := newDraft(t, "ro_full")
	if err := s.CreateRollout(ctx, dup, 0, ev); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("create again: got %v, want ErrConflict", err)
	}
	if evs := mustEvents(t, s, "ro_full", 0); len(evs) != 1 {
		t.Errorf("events after the refused create: got %d, want 1", len(evs))
	}
	checkRollout(t, "after the refused create", mustRollout(t, s, "ro_full"), withVersion(fullRollout("ro_full", µs(t0)), 1))

	// A policy stored before start_at and deadline existed reads back
	// with neither: no schedule, nothing noted.
	old := `{"max_failure_rate":0.05,"min_results":50,"failure_window":"1h0m0s","soak":"0s","retries":3,` +
		`"backoff":["1h0m0s","4h0m0s","24h0m0s"],"max_offers_per_minute":0,"window":""}`
	if err := s.db.gorm.WithContext(ctx).Exec("UPDATE rollouts SET policy = ? WHERE id = ?", old, "ro_draft").Error; err != nil {
		t.Fatal(err)
	}
	checkRollout(t, "an old policy", mustRollout(t, s, "ro_draft"), wantDraft)
}

func testRolloutsByState(t *testing.T, b backend) {
	_, _, s := mustRollouts(t, b)
	ctx := t.Context()
	states := map[string]rollout.RolloutState{"ro_a": rollout.RolloutRunning, "ro_b": rollout.RolloutDraft,
		"ro_c": rollout.RolloutPaused, "ro_d": rollout.RolloutAborted, "ro_e": rollout.RolloutRunning}
	for i, id := range []string{"ro_e", "ro_a", "ro_b", "ro_c", "ro_d"} {
		r, ev := newDraft(t, id)
		// Created in this order: the list is by creation, not by id.
		r.CreatedAt, ev.At = t0.Add(time.Duration(i)*time.Minute), t0.Add(time.Duration(i)*time.Minute)
		r.State = states[id]
		if err := s.CreateRollout(ctx, r, 0, ev); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	for _, tc := range []struct {
		name   string
		states []rollout.RolloutState
		want   []string
	}{
		{"all", nil, []string{"ro_e", "ro_a", "ro_b", "ro_c", "ro_d"}},
		{"running", []rollout.RolloutState{rollout.RolloutRunning}, []string{"ro_e", "ro_a"}},
		{"running or paused", []rollout.RolloutState{rollout.RolloutRunning, rollout.RolloutPaused}, []string{"ro_e", "ro_a", "ro_c"}},
		{"completed", []rollout.RolloutState{rollout.RolloutCompleted}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := s.Rollouts(ctx, tc.states...)
			if err != nil {
				t.Fatalf("rollouts: %v", err)
			}
			got := []string{}
			for _, r := range rs {
				got = append(got, r.ID)
				if r.State != states[r.ID] {
					t.Errorf("%s: state %s, want %s", r.ID, r.State, states[r.ID])
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// testRolloutOptimisticLock: of two changes made from one version, the
// second is refused, and neither its rollout nor its events are written.
func testRolloutOptimisticLock(t *testing.T, b backend) {
	_, _, s := mustRollouts(t, b)
	ctx := t.Context()
	mustCreateRollout(t, s, "ro_1")
	first, second := mustRollout(t, s, "ro_1"), mustRollout(t, s, "ro_1")

	ev, err := first.Start("alice", "go", t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRollout(ctx, first, first.Version, []rollout.Event{ev}); err != nil {
		t.Fatalf("first update: %v", err)
	}
	if first.Version != 2 {
		t.Errorf("version after the first update: got %d, want 2", first.Version)
	}
	ev, err = second.Abort("bob", "wrong release", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	err = s.UpdateRollout(ctx, second, second.Version, []rollout.Event{ev})
	if !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("update from the stale version: got %v, want ErrConflict", err)
	}
	if second.Version != 1 {
		t.Errorf("version of the refused copy: got %d, want it left at 1", second.Version)
	}
	got := mustRollout(t, s, "ro_1")
	if got.State != rollout.RolloutRunning || got.Version != 2 {
		t.Errorf("stored: state %s version %d, want running at version 2", got.State, got.Version)
	}
	var actions []string
	for _, e := range mustEvents(t, s, "ro_1", 0) {
		actions = append(actions, e.Action)
	}
	if want := []string{rollout.ActionCreate, rollout.ActionStart}; !reflect.DeepEqual(actions, want) {
		t.Errorf("events: got %v, want %v (the refused abort wrote none)", actions, want)
	}

	// Read again and redo: now it goes through.
	again := mustRollout(t, s, "ro_1")
	if ev, err = again.Abort("bob", "wrong release", t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRollout(ctx, again, again.Version, []rollout.Event{ev}); err != nil {
		t.Errorf("update after reading again: %v", err)
	}

	ghost, _ := newDraft(t, "ro_none")
	if err := s.UpdateRollout(ctx, ghost, 1, nil); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("update of an unknown rollout: got %v, want ErrNotFound", err)
	}
}

// testRolloutOptimisticLockConcurrent: replicas that change one version
// at once: exactly one wins, with its one event.
func testRolloutOptimisticLockConcurrent(t *testing.T, b backend) {
	_, _, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	base := mustRollout(t, s, "ro_1")
	const n = 8
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := base.Clone()
			ev, err := r.Start(fmt.Sprintf("replica-%d", i), "go", t0.Add(time.Minute))
			if err != nil {
				t.Error(err)
				return
			}
			switch err := s.UpdateRollout(t.Context(), r, base.Version, []rollout.Event{ev}); {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, errs.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("update %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != n-1 {
		t.Errorf("got %d saved and %d conflicts, want 1 and %d", wins.Load(), conflicts.Load(), n-1)
	}
	if evs := mustEvents(t, s, "ro_1", 0); len(evs) != 2 {
		t.Errorf("events: got %d, want 2 (create and the one start saved)", len(evs))
	}
	if got := mustRollout(t, s, "ro_1"); got.Version != 2 {
		t.Errorf("version: got %d, want 2", got.Version)
	}
}

// testRolloutEvents: the audit log keeps every field of every event, in
// the order saved, per rollout, and limit takes the latest.
func testRolloutEvents(t *testing.T, b backend) {
	_, _, s := mustRollouts(t, b)
	ctx := t.Context()
	mustCreateRollout(t, s, "ro_other")
	r, create := newDraft(t, "ro_1")
	if err := s.CreateRollout(ctx, r, 0, create); err != nil {
		t.Fatal(err)
	}
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	hold := &rollout.Hold{Model: "PX-8", Actor: audit.SystemActor, Reason: "model PX-8 failed 12 of 40",
		Installed: 28, Failed: 12, Rate: 0.3, MaxRate: 0.05, Window: time.Hour, At: at(3)}
	batches := [][]rollout.Event{
		{{RolloutID: "ro_1", At: at(1), Actor: "alice", Action: rollout.ActionStart, Reason: "go",
			FromState: rollout.RolloutDraft, ToState: rollout.RolloutRunning, FromPercent: 1, ToPercent: 1}},
		// Two events of one evaluation, both at one instant: the order
		// saved is kept.
		{{RolloutID: "ro_1", At: at(3), Actor: audit.SystemActor, Action: rollout.ActionHold, Reason: hold.Reason,
			FromState: rollout.RolloutRunning, ToState: rollout.RolloutRunning, FromPercent: 1, ToPercent: 1, Model: "PX-8", Hold: hold},
			{RolloutID: "ro_1", At: at(3), Actor: audit.SystemActor, Action: rollout.ActionAdvance, Reason: "stage 1% soaked",
				FromState: rollout.RolloutRunning, ToState: rollout.RolloutRunning, FromPercent: 1, ToPercent: 12.5}},
		{{RolloutID: "ro_1", At: at(4), Actor: "bob", Action: rollout.ActionReleaseHold, Reason: "fixed",
			FromState: rollout.RolloutRunning, ToState: rollout.RolloutRunning, FromPercent: 12.5, ToPercent: 12.5,
			Model: "PX-8", Hold: hold, Detail: "released the hold of 2026-03-01T12:03:00Z: model PX-8 failed"}},
	}
	want := []rollout.Event{create}
	for i, evs := range batches {
		if err := s.UpdateRollout(ctx, r, r.Version, evs); err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		want = append(want, evs...)
	}
	for i := range want {
		want[i].At = µs(want[i].At)
		if want[i].Hold != nil {
			h := *want[i].Hold
			h.At = µs(h.At)
			want[i].Hold = &h
		}
	}
	for _, tc := range []struct {
		limit int
		want  []rollout.Event
	}{
		{0, want},
		{len(want) + 1, want},
		{2, want[len(want)-2:]},
		{1, want[len(want)-1:]},
	} {
		if got := mustEvents(t, s, "ro_1", tc.limit); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("limit %d:\n got %+v\nwant %+v", tc.limit, got, tc.want)
		}
	}
	if got := mustEvents(t, s, "ro_other", 0); len(got) != 1 || got[0].RolloutID != "ro_other" {
		t.Errorf("events of the other rollout: got %+v, want its create alone", got)
	}
	if _, err := s.RolloutEvents(ctx, "ro_none", 0); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("events of an unknown rollout: got %v, want ErrNotFound", err)
	}
	// An event of another rollout is a bug in the caller: nothing saved.
	stray := rollout.Event{RolloutID: "ro_other", At: at(5), Actor: "bob", Action: rollout.ActionPause, Reason: "x"}
	if err := s.UpdateRollout(ctx, r, r.Version, []rollout.Event{stray}); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("an event of another rollout: got %v, want ErrInvalid", err)
	}
	if got := mustEvents(t, s, "ro_other", 0); len(got) != 1 {
		t.Errorf("events of the other rollout after the stray one: got %d, want 1", len(got))
	}
}

// testRolloutUpdateAtomic: when the events cannot be written, the
// rollout is not saved either.
func testRolloutUpdateAtomic(t *testing.T, b backend) {
	db, _, s := mustRollouts(t, b)
	ctx := t.Context()
	mustCreateRollout(t, s, "ro_1")
	var fail atomic.Bool
	if err := db.gorm.Callback().Create().Before("gorm:create").Register("test:fail_events", func(tx *gorm.DB) {
		if fail.Load() && tx.Statement.Table == "rollout_events" {
			tx.AddError(errors.New("injected: events not written"))
		}
	}); err != nil {
		t.Fatal(err)
	}
	r := mustRollout(t, s, "ro_1")
	ev, err := r.Start("alice", "go", t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := s.UpdateRollout(ctx, r, r.Version, []rollout.Event{ev}); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("update with failing events: got %v, want the injected error", err)
	}
	fail.Store(false)
	if got := mustRollout(t, s, "ro_1"); got.State != rollout.RolloutDraft || got.Version != 1 {
		t.Errorf("after the failed update: state %s version %d, want draft at version 1", got.State, got.Version)
	}
	if evs := mustEvents(t, s, "ro_1", 0); len(evs) != 1 {
		t.Errorf("events after the failed update: got %d, want 1", len(evs))
	}
	// The same change goes through once the events can be written.
	if err := s.UpdateRollout(ctx, r, 1, []rollout.Event{ev}); err != nil {
		t.Errorf("update again: %v", err)
	}
}

func mustPutDeviceRollout(t testing.TB, s *RolloutStore, dr *handsets.DeviceRollout) {
	t.Helper()
	if err := s.PutDeviceRollout(t.Context(), dr); err != nil {
		t.Fatalf("put rollout record %s/%s: %v", dr.RolloutID, dr.DeviceID, err)
	}
}

func mustDeviceRollouts(t testing.TB, s *RolloutStore, deviceID string) []*handsets.DeviceRollout {
	t.Helper()
	drs, err := s.DeviceRollouts(t.Context(), deviceID)
	if err != nil {
		t.Fatalf("rollout records of %s: %v", deviceID, err)
	}
	return drs
}

func testDeviceRolloutUpsert(t *testing.T, b backend) {
	db, devices, s := mustRollouts(t, b)
	ctx := t.Context()
	for _, id := range []string{"dev_a", "dev_b"} {
		mustEnroll(t, devices, newDevice(id, "PX-7"), "hash-"+id)
	}
	mustCreateRollout(t, s, "ro_1")
	mustCreateRollout(t, s, "ro_2")
	offered := func(at time.Time) *handsets.DeviceRollout {
		return &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: "dev_a", Model: "PX-7", StartingBuild: "7.1.0",
			OfferedAt: at, LastOfferedAt: at, State: handsets.DeviceOffered, Attempts: 1}
	}
	retried := func(at time.Time) *handsets.DeviceRollout {
		dr := offered(at)
		dr.State, dr.Attempts = handsets.StateFailed, 2
		dr.LastOfferedAt, dr.LastFailureAt, dr.ResultAt = at.Add(time.Hour), at.Add(90*time.Minute), at.Add(90*time.Minute)
		return dr
	}

	mustPutDeviceRollout(t, s, offered(t0))
	if got, want := mustDeviceRollouts(t, s, "dev_a"), []*handsets.DeviceRollout{offered(µs(t0))}; !reflect.DeepEqual(got, want) {
		t.Errorf("first offer:\n got %+v\nwant %+v", got, want)
	}
	mustPutDeviceRollout(t, s, retried(t0))
	if got, want := mustDeviceRollouts(t, s, "dev_a"), []*handsets.DeviceRollout{retried(µs(t0))}; !reflect.DeepEqual(got, want) {
		t.Errorf("after the upsert:\n got %+v\nwant %+v", got, want)
	}
	if n := countRows(t, db, "device_rollouts", "device_id = ?", "dev_a"); n != 1 {
		t.Errorf("rows of dev_a: got %d, want 1", n)
	}
	// A record of another rollout, offered earlier: first offer first.
	other := offered(t0.Add(-time.Hour))
	other.RolloutID = "ro_2"
	mustPutDeviceRollout(t, s, other)
	got := mustDeviceRollouts(t, s, "dev_a")
	if len(got) != 2 || got[0].RolloutID != "ro_2" || got[1].RolloutID != "ro_1" {
		t.Errorf("records of dev_a: got %+v, want ro_2 then ro_1", got)
	}
	if got := mustDeviceRollouts(t, s, "dev_b"); len(got) != 0 {
		t.Errorf("records of dev_b: got %+v, want none", got)
	}

	for _, tc := range []struct{ name, rollout, device string }{
		{"unknown device", "ro_1", "dev_none"},
		{"unknown rollout", "ro_none", "dev_a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dr := offered(t0)
			dr.RolloutID, dr.DeviceID = tc.rollout, tc.device
			if err := s.PutDeviceRollout(ctx, dr); !errors.Is(err, errs.ErrNotFound) {
				t.Errorf("got %v, want ErrNotFound", err)
			}
		})
	}
}

// resultRecord is one handset's record for the results tests.
type resultRecord struct {
	rollout, model, state string
	resultAt              time.Time // zero: no result yet
}

func putResultRecords(t testing.TB, devices *DeviceStore, s *RolloutStore, records []resultRecord) {
	t.Helper()
	for i, rec := range records {
		id := fmt.Sprintf("dev_%03d", i)
		mustEnroll(t, devices, newDevice(id, rec.model), "hash-"+id)
		mustPutDeviceRollout(t, s, &handsets.DeviceRollout{RolloutID: rec.rollout, DeviceID: id, Model: rec.model,
			StartingBuild: "7.1.0", OfferedAt: t0.Add(-3 * time.Hour), LastOfferedAt: t0.Add(-3 * time.Hour),
			State: rec.state, Attempts: 1, ResultAt: rec.resultAt})
	}
}

// testRolloutResults: results count per model from since on, inclusive;
// failed and rolled back are failures; a record offered again after a
// failure, or not finished, is no result.
func testRolloutResults(t *testing.T, b backend) {
	_, devices, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	mustCreateRollout(t, s, "ro_2")
	since := t0
	putResultRecords(t, devices, s, []resultRecord{
		{"ro_1", "PX-7", handsets.StateInstalled, since},                         // at since: counts
		{"ro_1", "PX-7", handsets.StateInstalled, since.Add(-time.Microsecond)},  // just before
		{"ro_1", "PX-7", handsets.StateFailed, since.Add(time.Hour)},             // failed
		{"ro_1", "PX-7", handsets.StateRolledBack, since.Add(2 * time.Hour)},     // rolled back: failed
		{"ro_1", "PX-8", handsets.StateInstalled, since.Add(time.Minute)},        //
		{"ro_1", "PX-8", handsets.DeviceOffered, since.Add(time.Minute)},         // retried after a failure
		{"ro_1", "PX-8", handsets.StateInstalling, time.Time{}},                  // not finished
		{"ro_1", "PX-9", handsets.StateFailed, since.Add(-time.Hour)},            // before since
		{"ro_2", "PX-7", handsets.StateInstalled, since.Add(time.Minute)},        // another rollout
		{"ro_2", "PX-7", handsets.StateFailed, since.Add(time.Minute)},           //
		{"ro_1", "PX-8", handsets.StateDownloading, since.Add(30 * time.Minute)}, // retried, downloading
		{"ro_1", "PX-10", handsets.StateRolledBack, since.Add(30 * time.Minute)}, //
	})
	for _, tc := range []struct {
		rollout string
		since   time.Time
		want    map[string]rollout.Results
	}{
		{"ro_1", since, map[string]rollout.Results{"PX-7": {Installed: 1, Failed: 2}, "PX-8": {Installed: 1}, "PX-10": {Failed: 1}}},
		{"ro_1", since.Add(-time.Microsecond), map[string]rollout.Results{"PX-7": {Installed: 2, Failed: 2}, "PX-8": {Installed: 1}, "PX-10": {Failed: 1}}},
		{"ro_1", since.Add(-2 * time.Hour), map[string]rollout.Results{"PX-7": {Installed: 2, Failed: 2}, "PX-8": {Installed: 1}, "PX-9": {Failed: 1}, "PX-10": {Failed: 1}}},
		{"ro_1", since.Add(90 * time.Minute), map[string]rollout.Results{"PX-7": {Failed: 1}}},
		{"ro_1", since.Add(3 * time.Hour), map[string]rollout.Results{}},
		{"ro_2", since, map[string]rollout.Results{"PX-7": {Installed: 1, Failed: 1}}},
		{"ro_none", since, map[string]rollout.Results{}},
	} {
		t.Run(fmt.Sprintf("%s since %s", tc.rollout, tc.since.Format("15:04:05.000000")), func(t *testing.T) {
			got, err := s.RolloutResults(t.Context(), rollout.ResultsQuery{RolloutID: tc.rollout, Since: tc.since})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// testRolloutResultsLeaveOutLateEnrollees: the failures of handsets that
// enrolled after the rollout started count in no result, those of
// handsets enrolled before or at its start do: records from before the
// migration that marks them (migration 12, whose back-fill compares the
// times in SQL), and records that reports move after it. Times without
// and with fractions of a second, which SQLite compares as text.
func testRolloutResultsLeaveOutLateEnrollees(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	ctx := t.Context()
	i := slices.IndexFunc(migrations, func(m Migration) bool { return m.Name == "device_rollouts_enrolled_late" })
	if i < 0 {
		t.Fatal("no migration device_rollouts_enrolled_late")
	}
	mustMigrate(t, db, migrations[:i])
	devices, s := db.Devices(), db.Rollouts()
	start := t0.Add(time.Hour) // 13:00:00.123456789
	r, ev := newDraft(t, "ro_1")
	if _, err := r.Start("alice", "go", start); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRollout(ctx, r, 0, ev); err != nil {
		t.Fatal(err)
	}
	enrolled := map[string]time.Time{
		"early":    start.Truncate(time.Second),                  // 13:00:00
		"at_start": start,                                        // 13:00:00.123456
		"late_µs":  start.Add(time.Microsecond),                  // 13:00:00.123457
		"late":     start.Truncate(time.Second).Add(time.Second), // 13:00:01
	}
	failAt := start.Add(time.Hour)
	add := func(id string, at time.Time, report bool) {
		t.Helper()
		d := newDevice(id, "PX-7")
		d.EnrolledAt, d.LastSeen = at, at
		if report {
			mustEnroll(t, devices, d, "hash-"+id)
		} else {
			// Before migration 12 the schema has no rollup delta logs
			// (migration 13) for Enroll to append to: the row alone.
			if err := db.gorm.Exec(`INSERT INTO devices (id, token_hash, model, build, channel, region, installed_patches,
	cloud_messaging, number_encryption, enrolled_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, '', ?, false, ?, ?)`,
				id, "hash-"+id, d.Model, d.Build, d.Channel, d.Region, d.CloudMessaging, dbTime(at), dbTime(at)).Error; err != nil {
				t.Fatal(err)
			}
		}
		dr := &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: id, Model: "PX-7", StartingBuild: "7.1.0",
			OfferedAt: start, LastOfferedAt: start, State: handsets.DeviceOffered, Attempts: 1}
		if !report {
			dr.State, dr.LastFailureAt, dr.ResultAt = handsets.StateFailed, failAt, failAt
			// Before migration 16 the records have no full_only: the row
			// as that schema has it.
			if err := db.gorm.Exec(`INSERT INTO device_rollouts (rollout_id, device_id, model, starting_build, offered_at,
	last_offered_at, state, attempts, last_failure_at, result_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				dr.RolloutID, dr.DeviceID, dr.Model, dr.StartingBuild, dbTime(dr.OfferedAt), dbTime(dr.LastOfferedAt),
				dr.State, dr.Attempts, dbTime(dr.LastFailureAt), dbTime(dr.ResultAt)).Error; err != nil {
				t.Fatal(err)
			}
		} else {
			mustPutDeviceRollout(t, s, dr)
		}
		if report {
			rep := handsets.Report{ID: "r-" + id, DeviceID: id, PatchID: "CM-2026-001", RolloutID: "ro_1",
				State: handsets.StateFailed, ErrorCode: "E_VERIFY", At: failAt, ReceivedAt: failAt}
			if out, err := devices.AddReport(ctx, rep); err != nil || out.RolloutState != handsets.StateFailed {
				t.Fatalf("report of %s: %+v, %v; want the record moved to failed", id, out, err)
			}
		}
	}
	for id, at := range enrolled {
		add("old_"+id, at, false)
	}
	mustMigrate(t, db, migrations)
	for id, at := range enrolled {
		add("new_"+id, at, true)
	}
	got, err := s.RolloutResults(ctx, rollout.ResultsQuery{RolloutID: "ro_1", Since: start})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]rollout.Results{"PX-7": {Failed: 4}}; !reflect.DeepEqual(got, want) {
		t.Errorf("results: got %v, want %v (early and at_start, before and after the migration)", got, want)
	}
}

// testRolloutResultsUsesIndex: the results query reads the results
// index, not the table, with many records that have no result yet.
func testRolloutResultsUsesIndex(t *testing.T, b backend) {
	db, _, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	g := db.gorm.WithContext(t.Context())
	// 2000 handsets offered the release, none reported yet; one statement
	// each that both dialects read alike.
	const seed = `WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
`
	if err := g.Exec(seed+`INSERT INTO devices (id, token_hash, model, build, channel, region, installed_patches,
	cloud_messaging, number_encryption, enrolled_at, last_seen)
SELECT 'dev_' || i, 'hash_' || i, 'PX-7', '7.1.0', 'stable', 'DE', '', 'off', true, ?, ? FROM s`, dbTime(t0), dbTime(t0)).Error; err != nil {
		t.Fatalf("seed devices: %v", err)
	}
	if err := g.Exec(seed+`INSERT INTO device_rollouts (rollout_id, device_id, model, starting_build, offered_at,
	last_offered_at, state, attempts)
SELECT 'ro_1', 'dev_' || i, 'PX-7', '7.1.0', ?, ?, 'offered', 1 FROM s`, dbTime(t0), dbTime(t0)).Error; err != nil {
		t.Fatalf("seed records: %v", err)
	}
	if err := g.Exec("ANALYZE device_rollouts").Error; err != nil {
		t.Fatal(err)
	}
	text := queryPlan(t, db, rolloutResultsSQL, rolloutResultsArgs("ro_1", t0)...)
	if !strings.Contains(text, "device_rollouts_results") {
		t.Errorf("query plan does not use device_rollouts_results:\n%s", text)
	}
}

// testClaimOfferConcurrent: 200 claims from 8 goroutines on a cap of 50
// grant exactly 50; each minute and each rollout has its own budget.
func testClaimOfferConcurrent(t *testing.T, b backend) {
	db, _, s := mustRollouts(t, b)
	ctx := t.Context()
	minute := t0.Truncate(time.Minute)
	const workers, claims, limit = 8, 200, 50
	var granted atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range claims / workers {
				// Anywhere in the minute: one budget.
				at := minute.Add(time.Duration(w*claims/workers+i) * 250 * time.Millisecond)
				ok, err := s.ClaimOffer(ctx, "ro_1", at, limit)
				if err != nil {
					t.Errorf("claim: %v", err)
					return
				}
				if ok {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if got := granted.Load(); got != limit {
		t.Errorf("granted %d of %d claims, want %d", got, claims, limit)
	}
	for _, tc := range []struct {
		name    string
		rollout string
		at      time.Time
		limit   int
		want    bool
	}{
		{"same minute, spent", "ro_1", minute.Add(59 * time.Second), limit, false},
		{"other rollout", "ro_2", minute, limit, true},
		{"next minute", "ro_1", minute.Add(time.Minute), limit, true},
		{"no cap", "ro_1", minute, 0, true},
	} {
		ok, err := s.ClaimOffer(ctx, tc.rollout, tc.at, tc.limit)
		if err != nil || ok != tc.want {
			t.Errorf("%s: got %v, %v, want %v", tc.name, ok, err, tc.want)
		}
	}
	if n := countRows(t, db, "rollout_offer_budget", "1 = 1"); n != 3 {
		t.Errorf("budget rows: got %d, want 3 (no cap writes none)", n)
	}
	pruned, err := s.PruneOfferBudget(ctx, minute.Add(time.Minute))
	if err != nil || pruned != 2 {
		t.Errorf("prune: got %d, %v, want the 2 rows of the first minute", pruned, err)
	}
	if ok, err := s.ClaimOffer(ctx, "ro_1", minute.Add(time.Minute), limit); err != nil || !ok {
		t.Errorf("claim in the kept minute: got %v, %v, want true", ok, err)
	}
}

// testEraseDeletesDeviceRollouts: erasing a handset deletes its rollout
// records and only those.
func testEraseDeletesDeviceRollouts(t *testing.T, b backend) {
	db, devices, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	mustCreateRollout(t, s, "ro_2")
	for _, id := range []string{"dev_a", "dev_b"} {
		mustEnroll(t, devices, newDevice(id, "PX-7"), "hash-"+id)
		for _, ro := range []string{"ro_1", "ro_2"} {
			mustPutDeviceRollout(t, s, &handsets.DeviceRollout{RolloutID: ro, DeviceID: id, Model: "PX-7",
				StartingBuild: "7.1.0", OfferedAt: t0, LastOfferedAt: t0, State: handsets.StateInstalled, Attempts: 1, ResultAt: t0})
		}
	}
	if err := devices.DeleteDevice(t.Context(), "dev_a"); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	if n := countRows(t, db, "device_rollouts", "device_id = ?", "dev_a"); n != 0 {
		t.Errorf("records of the erased device: got %d, want 0", n)
	}
	if n := countRows(t, db, "device_rollouts", "device_id = ?", "dev_b"); n != 2 {
		t.Errorf("records of the other device: got %d, want 2", n)
	}
	res, err := s.RolloutResults(t.Context(), rollout.ResultsQuery{RolloutID: "ro_1", Since: t0})
	if err != nil || res["PX-7"].Installed != 1 {
		t.Errorf("results after the erasure: got %v, %v, want 1 installed", res, err)
	}
}

// queryPlan is the dialect's plan of query with args, one line per row
// (SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN). On PostgreSQL
// sequential scans are off for it: the planner may still read a test's
// small table whole, and the question is whether an index serves the
// query at all.
func queryPlan(t testing.TB, db *DB, query string, args ...any) string {
	t.Helper()
	var plan []string
	err := db.gorm.WithContext(t.Context()).Transaction(func(tx *gorm.DB) error {
		explain := "EXPLAIN QUERY PLAN "
		if db.dialect == dialectPostgres {
			if err := tx.Exec("SET LOCAL enable_seqscan = off").Error; err != nil {
				return err
			}
			explain = "EXPLAIN "
		}
		rows, err := tx.Raw(explain+query, args...).Rows()
		if err != nil {
			return err
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			return err
		}
		for rows.Next() {
			vals := make([]any, len(cols))
			for i := range vals {
				vals[i] = new(any)
			}
			if err := rows.Scan(vals...); err != nil {
				return err
			}
			plan = append(plan, fmt.Sprint(*vals[len(vals)-1].(*any)))
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatalf("explain %s: %v", query, err)
	}
	return strings.Join(plan, "\n")
}

// testRolloutSilence: with silentBefore, records whose handset began
// installing (its last offer) or installed in the window before
// silentBefore and has not checked in since count as Silent, not as
// installed; a handset that checks in again stops counting. Without
// silentBefore the counts are as before.
func testRolloutSilence(t *testing.T, b backend) {
	_, devices, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	since, silentBefore := t0.Add(-time.Hour), t0.Add(2*time.Hour)
	for i, rec := range []struct {
		model, state    string
		offered, result time.Time
		lastSeen        time.Time
	}{
		{"PX-8", handsets.StateInstalled, t0, t0.Add(time.Hour), t0},                                         // installed, never back: silent
		{"PX-8", handsets.StateInstalled, t0, t0.Add(time.Hour), t0.Add(90 * time.Minute)},                   // back after installing
		{"PX-8", handsets.StateInstalled, t0, t0.Add(3 * time.Hour), t0},                                     // installed too recently to tell
		{"PX-8", handsets.StateInstalling, t0.Add(30 * time.Minute), time.Time{}, t0},                        // began, never back: silent
		{"PX-8", handsets.StateDownloading, t0.Add(30 * time.Minute), time.Time{}, t0.Add(40 * time.Minute)}, // back while downloading
		{"PX-8", handsets.StateInstalling, t0.Add(-2 * time.Hour), time.Time{}, t0.Add(-3 * time.Hour)},      // before the window
		{"PX-7", handsets.StateFailed, t0, t0, t0},
		{"PX-7", handsets.StateInstalled, t0, t0.Add(time.Hour), t0.Add(2 * time.Hour)},
	} {
		id := fmt.Sprintf("dev_%03d", i)
		d := newDevice(id, rec.model)
		d.EnrolledAt, d.LastSeen = t0.Add(-4*time.Hour), rec.lastSeen
		mustEnroll(t, devices, d, "hash-"+id)
		mustPutDeviceRollout(t, s, &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: id, Model: rec.model,
			StartingBuild: "7.1.0", OfferedAt: rec.offered, LastOfferedAt: rec.offered, State: rec.state, Attempts: 1,
			ResultAt: rec.result})
	}
	count := func(silentBefore time.Time) map[string]rollout.Results {
		t.Helper()
		got, err := s.RolloutResults(t.Context(), rollout.ResultsQuery{RolloutID: "ro_1", Since: since, SilentBefore: silentBefore})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got, want := count(time.Time{}), (map[string]rollout.Results{"PX-8": {Installed: 3}, "PX-7": {Installed: 1, Failed: 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("without silence: got %v, want %v", got, want)
	}
	if got, want := count(silentBefore), (map[string]rollout.Results{"PX-8": {Installed: 2, Silent: 2}, "PX-7": {Installed: 1, Failed: 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("with silence: got %v, want %v", got, want)
	}
	// The first silent handset checks in again.
	d, _, err := devices.CheckInState(t.Context(), "hash-dev_000")
	if err != nil {
		t.Fatal(err)
	}
	next := *d
	next.LastSeen = t0.Add(5 * time.Hour)
	if err := devices.SaveCheckIn(t.Context(), d, &next, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := count(silentBefore), (map[string]rollout.Results{"PX-8": {Installed: 3, Silent: 1}, "PX-7": {Installed: 1, Failed: 1}}); !reflect.DeepEqual(got, want) {
		t.Errorf("after a silent handset checked in: got %v, want %v", got, want)
	}
}

// testRolloutConfirmations: with Confirm, an installed record counts as
// confirmed once its handset has checked in after the result on the
// release's build with the patch, and not before, on another build or
// without the patch; the other counts are as without it.
func testRolloutConfirmations(t *testing.T, b backend) {
	_, devices, s := mustRollouts(t, b)
	mustCreateRollout(t, s, "ro_1")
	result := t0.Add(time.Hour)
	for i, rec := range []struct {
		model, state, build string
		patches             []string
		lastSeen            time.Time
	}{
		{"PX-7", handsets.StateInstalled, "7.5.0", []string{"CM-2026-001"}, result.Add(time.Minute)},                // confirmed
		{"PX-7", handsets.StateInstalled, "7.5.0", []string{"CM-2025-009", "CM-2026-001"}, result.Add(time.Minute)}, // confirmed, among others
		{"PX-7", handsets.StateInstalled, "7.5.0", []string{"CM-2026-001"}, result},                                 // not back since
		{"PX-7", handsets.StateInstalled, "7.2.1", []string{}, result.Add(time.Minute)},                             // back on the old build
		{"PX-7", handsets.StateInstalled, "7.5.0", []string{"CM-2026-0011"}, result.Add(time.Minute)},               // another patch
		{"PX-8", handsets.StateInstalled, "7.5.0", []string{"CM-2026-001"}, result.Add(time.Minute)},                // confirmed
		{"PX-8", handsets.StateFailed, "7.5.0", []string{"CM-2026-001"}, result.Add(time.Minute)},                   // failed: never confirmed
	} {
		id := fmt.Sprintf("dev_%03d", i)
		d := newDevice(id, rec.model)
		d.EnrolledAt, d.LastSeen, d.Build, d.InstalledPatches = t0.Add(-4*time.Hour), rec.lastSeen, rec.build, rec.patches
		mustEnroll(t, devices, d, "hash-"+id)
		mustPutDeviceRollout(t, s, &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: id, Model: rec.model,
			StartingBuild: "7.2.1", OfferedAt: t0, LastOfferedAt: t0, State: rec.state, Attempts: 1, ResultAt: result})
	}
	rel := &rollout.RolloutRelease{Target: "cm/update.zip", PatchID: "CM-2026-001", InstallsBuild: "7.5.0"}
	got, err := s.RolloutResults(t.Context(), rollout.ResultsQuery{RolloutID: "ro_1", Since: t0, Confirm: rel})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]rollout.Results{"PX-7": {Installed: 5, Confirmed: 2}, "PX-8": {Installed: 1, Failed: 1, Confirmed: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
