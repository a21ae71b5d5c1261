package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// The RolloutService runs here, on the real store, because package
// server must not import sqlstore.

// TestRolloutService runs the service suite against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL.
func TestRolloutService(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RolloutServiceCreate", testServiceCreate},
		{"RolloutServiceActions", testServiceActions},
		{"RolloutServiceRetriesStale", testServiceRetriesStale},
		{"RolloutServiceAudit", testServiceAudit},
		{"RolloutAuditUsesIndex", testAuditUsesIndex},
	})
}

// fakeTargets is a rollout.TargetSource of fixed targets.
type fakeTargets []manifests.TargetInfo

func (f fakeTargets) TargetsVersion() int64 { return 1 }
func (f fakeTargets) PublishedTargets() (int64, []manifests.TargetInfo) {
	return 1, f
}

func publishedTarget(tb testing.TB, path string, c manifests.TargetCustom) manifests.TargetInfo {
	tb.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return manifests.TargetInfo{Path: path, Length: 1, SHA256: strings.Repeat("0", 64), Custom: b}
}

const privacyTarget = "cm-privacy/2026.1/update.zip"

func publishedTargets(tb testing.TB) fakeTargets {
	return fakeTargets{
		publishedTarget(tb, privacyTarget, manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7", "PX-8"},
			BuildMin: "7.0.0", BuildMax: "7.4.9", InstallsBuild: "7.5.0"}),
		publishedTarget(tb, "old/no-build.zip", manifests.TargetCustom{PatchID: "CM-2025-009"}),
		{Path: "firmware/not-a-patch.bin", Length: 1, SHA256: strings.Repeat("0", 64)},
	}
}

// clock is a fake clock that moves one second at each reading.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(time.Second); return c.t }

// newService is a service on a fresh store of b; changes counts OnChange.
func newService(t *testing.T, b backend) (*rollout.RolloutService, *RolloutStore, *int) {
	t.Helper()
	_, _, store := mustRollouts(t, b)
	changes := new(int)
	c := &clock{t: t0}
	return &rollout.RolloutService{Store: store, Releases: publishedTargets(t), Now: c.now, Approvals: store.db.Approvals(),
		OnChange: func() { *changes++ }}, store, changes
}

func spec(release string) rollout.RolloutSpec {
	return rollout.RolloutSpec{Release: release, Stages: []float64{1, 10, 50, 100}, Policy: rollout.DefaultPolicy()}
}

func wantField(t *testing.T, err error, field string) {
	t.Helper()
	var fe *errs.FieldError
	if !errors.As(err, &fe) || fe.Field != field || !errors.Is(err, errs.ErrInvalid) {
		t.Fatalf("got %v, want a FieldError on %q", err, field)
	}
}

func actions(evs []rollout.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Action
	}
	return out
}

func testServiceCreate(t *testing.T, b backend) {
	generated := regexp.MustCompile(`^ro-[0-9a-f]{12}$`)
	tests := []struct {
		name        string
		spec        func(s *rollout.RolloutSpec)
		wantField   string
		wantState   rollout.RolloutState
		wantEvents  []string
		wantReasons []string
	}{
		{name: "started unless a draft", spec: func(*rollout.RolloutSpec) {},
			wantState: rollout.RolloutRunning, wantEvents: []string{"create", "start"}, wantReasons: []string{"", "created by alice"}},
		{name: "started with a reason and an id", spec: func(s *rollout.RolloutSpec) { s.ID, s.Reason = "ro-privacy", "privacy incident" },
			wantState: rollout.RolloutRunning, wantEvents: []string{"create", "start"}, wantReasons: []string{"privacy incident", "privacy incident"}},
		{name: "draft", spec: func(s *rollout.RolloutSpec) { s.Draft, s.Reason = true, "prepared for Monday" },
			wantState: rollout.RolloutDraft, wantEvents: []string{"create"}, wantReasons: []string{"prepared for Monday"}},
		{name: "unpublished path", spec: func(s *rollout.RolloutSpec) { s.Release = "cm-privacy/2026.2/update.zip" }, wantField: "release"},
		{name: "empty release", spec: func(s *rollout.RolloutSpec) { s.Release = "" }, wantField: "release"},
		{name: "release without installs_build", spec: func(s *rollout.RolloutSpec) { s.Release = "old/no-build.zip" }, wantField: "release.installs_build"},
		{name: "target that is not a patch", spec: func(s *rollout.RolloutSpec) { s.Release = "firmware/not-a-patch.bin" }, wantField: "release.patch_id"},
		{name: "bad id", spec: func(s *rollout.RolloutSpec) { s.ID = "ro 1" }, wantField: "id"},
		{name: "stages not increasing", spec: func(s *rollout.RolloutSpec) { s.Stages = []float64{10, 5} }, wantField: "stages[1]"},
		{name: "bad policy", spec: func(s *rollout.RolloutSpec) { s.Policy.MaxFailureRate = 5 }, wantField: "max_failure_rate"},
		{name: "build_min at installs_build", spec: func(s *rollout.RolloutSpec) { s.Selector.BuildMin = "7.5.0" }, wantField: "build_min"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc, store, changes := newService(t, b)
			sp := spec(privacyTarget)
			tc.spec(&sp)
			r, pending, err := svc.Create(t.Context(), sp, "alice")
			if pending != nil {
				t.Fatalf("the create waits for approval %s", pending.ID)
			}
			if tc.wantField != "" {
				wantField(t, err, tc.wantField)
				if all, err := store.Rollouts(t.Context()); err != nil || len(all) != 0 || *changes != 0 {
					t.Fatalf("after a refusal: %d rollouts stored (%v), OnChange called %d times; want none", len(all), err, *changes)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sp.ID == "" && !generated.MatchString(r.ID) {
				t.Errorf("generated id %q, want ro- and 12 hex digits", r.ID)
			}
			if sp.ID != "" && r.ID != sp.ID {
				t.Errorf("id %q, want the given %q", r.ID, sp.ID)
			}
			got := mustRollout(t, store, r.ID)
			wantRel := rollout.RolloutRelease{Target: privacyTarget, PatchID: "CM-2026-001", InstallsBuild: "7.5.0",
				Models: []string{"PX-7", "PX-8"}, BuildMin: "7.0.0", BuildMax: "7.4.9"}
			if got.State != tc.wantState || got.Version != 1 || !reflect.DeepEqual(got.Release, wantRel) {
				t.Errorf("stored %s version %d release %+v; want %s version 1 release %+v", got.State, got.Version, got.Release, tc.wantState, wantRel)
			}
			if tc.wantState == rollout.RolloutRunning && (got.Percent() != 1 || got.StartedAt.IsZero()) {
				t.Errorf("started at %g%% at %v, want stage 1%% and a start time", got.Percent(), got.StartedAt)
			}
			evs := mustEvents(t, store, r.ID, 0)
			var reasons []string
			for _, ev := range evs {
				reasons = append(reasons, ev.Reason)
			}
			if !reflect.DeepEqual(actions(evs), tc.wantEvents) || !reflect.DeepEqual(reasons, tc.wantReasons) {
				t.Errorf("events %v with reasons %q, want %v with %q", actions(evs), reasons, tc.wantEvents, tc.wantReasons)
			}
			if *changes != 1 {
				t.Errorf("OnChange called %d times, want 1", *changes)
			}
			if _, _, err := svc.Create(t.Context(), rollout.RolloutSpec{ID: r.ID, Release: privacyTarget,
				Stages: []float64{100}, Policy: rollout.DefaultPolicy()}, "bob"); !errors.Is(err, errs.ErrConflict) {
				t.Errorf("a second rollout with id %s: got %v, want ErrConflict", r.ID, err)
			}
		})
	}
}

// applied is the answer of a widening that must not wait for an
// approval: a pending one is an error.
func applied(r *rollout.Rollout, a *rollout.Approval, err error) (*rollout.Rollout, error) {
	if a != nil {
		return r, fmt.Errorf("the change waits for approval %s", a.ID)
	}
	return r, err
}

// testServiceActions walks one rollout through every operator action,
// each step on what the one before left.
func testServiceActions(t *testing.T, b backend) {
	svc, store, changes := newService(t, b)
	ctx := t.Context()
	r, _, err := svc.Create(ctx, spec(privacyTarget), "alice")
	if err != nil {
		t.Fatal(err)
	}
	id := r.ID
	// request keeps the approval a widening past four eyes must wait
	// for; approve decides it.
	var pending string
	request := func(r *rollout.Rollout, a *rollout.Approval, err error) (*rollout.Rollout, error) {
		if err == nil && a == nil {
			return r, errors.New("the widening did not wait for an approval")
		}
		if a != nil {
			pending = a.ID
		}
		return r, err
	}
	approve := func(by string) (*rollout.Rollout, error) {
		r, _, err := svc.Approve(ctx, id, pending, by, "looks right")
		return r, err
	}
	steps := []struct {
		name        string
		do          func() (*rollout.Rollout, error)
		wantErr     error
		wantField   string
		wantState   rollout.RolloutState
		wantPercent float64
		wantHolds   int
		// events, when set, are the events the step logs (by default
		// the first word of its name, when it succeeds).
		events []string
	}{
		{name: "pause", do: func() (*rollout.Rollout, error) { return svc.Pause(ctx, id, "bob", "looks off") },
			wantState: rollout.RolloutPaused, wantPercent: 1},
		{name: "pause a paused rollout", do: func() (*rollout.Rollout, error) { return svc.Pause(ctx, id, "bob", "again") },
			wantErr: errs.ErrConflict},
		{name: "resume without a reason", do: func() (*rollout.Rollout, error) { return applied(svc.Resume(ctx, id, "bob", " ")) },
			wantField: "reason"},
		{name: "resume", do: func() (*rollout.Rollout, error) { return applied(svc.Resume(ctx, id, "bob", "false alarm")) },
			wantState: rollout.RolloutRunning, wantPercent: 1},
		{name: "advance to the next stage", do: func() (*rollout.Rollout, error) { return applied(svc.Advance(ctx, id, "bob", "healthy", 0)) },
			wantState: rollout.RolloutRunning, wantPercent: 10},
		{name: "advance past four eyes", do: func() (*rollout.Rollout, error) { return request(svc.Advance(ctx, id, "bob", "faster", 75)) },
			wantState: rollout.RolloutRunning, wantPercent: 10, events: []string{rollout.ActionApprovalRequested}},
		{name: "approve one's own widening", do: func() (*rollout.Rollout, error) { return approve("bob") },
			wantErr: errs.ErrForbidden},
		{name: "approve", do: func() (*rollout.Rollout, error) { return approve("alice") },
			wantState: rollout.RolloutRunning, wantPercent: 75, events: []string{rollout.ActionAdvance}},
		{name: "advance backwards", do: func() (*rollout.Rollout, error) { return applied(svc.Advance(ctx, id, "bob", "oops", 20)) },
			wantField: "percent"},
		{name: "complete before the last stage", do: func() (*rollout.Rollout, error) { return svc.Complete(ctx, id, "bob", "done") },
			wantErr: errs.ErrConflict},
		{name: "hold a model", do: func() (*rollout.Rollout, error) { return svc.HoldModel(ctx, id, "carol", "boot loops", "PX-8") },
			wantState: rollout.RolloutRunning, wantPercent: 75, wantHolds: 1},
		{name: "hold it again", do: func() (*rollout.Rollout, error) { return svc.HoldModel(ctx, id, "carol", "boot loops", "PX-8") },
			wantErr: errs.ErrConflict},
		{name: "release the hold", do: func() (*rollout.Rollout, error) { return svc.ReleaseHold(ctx, id, "carol", "fixed", "PX-8") },
			wantState: rollout.RolloutRunning, wantPercent: 75},
		{name: "release a model not held", do: func() (*rollout.Rollout, error) { return svc.ReleaseHold(ctx, id, "carol", "fixed", "PX-8") },
			wantErr: errs.ErrNotFound},
		{name: "advance to the last stage", do: func() (*rollout.Rollout, error) { return request(svc.Advance(ctx, id, "bob", "all", 0)) },
			wantState: rollout.RolloutRunning, wantPercent: 75, events: []string{rollout.ActionApprovalRequested}},
		{name: "approve the last stage", do: func() (*rollout.Rollout, error) { return approve("carol") },
			wantState: rollout.RolloutRunning, wantPercent: 100, events: []string{rollout.ActionAdvance}},
		{name: "complete", do: func() (*rollout.Rollout, error) { return svc.Complete(ctx, id, "bob", "done") },
			wantState: rollout.RolloutCompleted, wantPercent: 100},
		{name: "abort", do: func() (*rollout.Rollout, error) { return svc.Abort(ctx, id, "bob", "superseded") },
			wantState: rollout.RolloutAborted, wantPercent: 100},
		{name: "start an aborted rollout", do: func() (*rollout.Rollout, error) { return applied(svc.Start(ctx, id, "bob", "again")) },
			wantErr: errs.ErrConflict},
		{name: "unknown rollout", do: func() (*rollout.Rollout, error) { return svc.Pause(ctx, "ro-nosuch", "bob", "x") },
			wantErr: errs.ErrNotFound},
	}
	wantEvents := []string{"create", "start"}
	for _, st := range steps {
		before := *changes
		got, err := st.do()
		switch {
		case st.wantField != "":
			wantField(t, err, st.wantField)
		case st.wantErr != nil:
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("%s: got %v, want %v", st.name, err, st.wantErr)
			}
		case err != nil:
			t.Fatalf("%s: %v", st.name, err)
		default:
			stored := mustRollout(t, store, id)
			if stored.State != st.wantState || stored.Percent() != st.wantPercent || len(stored.Holds) != st.wantHolds ||
				got.Version != stored.Version {
				t.Fatalf("%s: stored %s at %g%% with %d holds, version %d (answered %d); want %s at %g%% with %d holds",
					st.name, stored.State, stored.Percent(), len(stored.Holds), stored.Version, got.Version,
					st.wantState, st.wantPercent, st.wantHolds)
			}
			if st.events == nil {
				wantEvents = append(wantEvents, strings.Fields(st.name)[0])
			}
		}
		wantEvents = append(wantEvents, st.events...)
		wantChanges := before + 1
		if err != nil {
			wantChanges = before
		}
		if *changes != wantChanges {
			t.Errorf("%s: OnChange called %d times, want %d", st.name, *changes-before, wantChanges-before)
		}
	}
	for i, a := range wantEvents {
		if a == "release" {
			wantEvents[i] = rollout.ActionReleaseHold
		}
	}
	evs, err := svc.Events(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(actions(evs), wantEvents) {
		t.Errorf("audit log %v, want %v", actions(evs), wantEvents)
	}
	if last := evs[len(evs)-1]; last.Actor != "bob" || last.Reason != "superseded" ||
		last.FromState != rollout.RolloutCompleted || last.ToState != rollout.RolloutAborted {
		t.Errorf("last event %+v, want bob's abort of the completed rollout, reason superseded", last)
	}
	if _, err := svc.Events(ctx, id, audit.MaxAuditLimit+1); err == nil {
		t.Error("events with a limit above the maximum: no error")
	}
}

// racingStore saves a competing change (as another replica or the
// background evaluation would) just before each of the first races
// saves of the service, so that they are made from a stale version.
type racingStore struct {
	*RolloutStore
	races   int
	compete func(r *rollout.Rollout) (rollout.Event, error)
	updates int
}

func (s *racingStore) UpdateRollout(ctx context.Context, r *rollout.Rollout, expect int64, evs []rollout.Event) error {
	s.updates++
	if s.updates <= s.races {
		cur, err := s.RolloutStore.Rollout(ctx, r.ID)
		if err != nil {
			return err
		}
		from := cur.Version
		ev, err := s.compete(cur)
		if err != nil {
			return fmt.Errorf("competing change: %w", err)
		}
		if err := s.RolloutStore.UpdateRollout(ctx, cur, from, []rollout.Event{ev}); err != nil {
			return fmt.Errorf("competing change: %w", err)
		}
	}
	return s.RolloutStore.UpdateRollout(ctx, r, expect, evs)
}

func testServiceRetriesStale(t *testing.T, b backend) {
	holdPX7 := func(r *rollout.Rollout) (rollout.Event, error) {
		return r.HoldModel(audit.SystemActor, "failure rate", "PX-7", t0)
	}
	var n int
	holdNext := func(r *rollout.Rollout) (rollout.Event, error) {
		n++
		return r.HoldModel(audit.SystemActor, "failure rate", fmt.Sprintf("M-%d", n), t0)
	}
	pauseIt := func(r *rollout.Rollout) (rollout.Event, error) { return r.Pause(audit.SystemActor, "auto-halt", t0) }
	tests := []struct {
		name        string
		races       int
		compete     func(*rollout.Rollout) (rollout.Event, error)
		wantErr     bool
		wantUpdates int
		wantState   rollout.RolloutState
		wantEvents  []string
	}{
		{name: "one race: redone on the new version", races: 1, compete: holdPX7, wantUpdates: 2,
			wantState: rollout.RolloutPaused, wantEvents: []string{"create", "start", "hold", "pause"}},
		{name: "the new state refuses it", races: 1, compete: pauseIt, wantErr: true, wantUpdates: 1,
			wantState: rollout.RolloutPaused, wantEvents: []string{"create", "start", "pause"}},
		{name: "always stale: gives up", races: 100, compete: holdNext, wantErr: true, wantUpdates: 5,
			wantState: rollout.RolloutRunning, wantEvents: []string{"create", "start", "hold", "hold", "hold", "hold", "hold"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc, store, changes := newService(t, b)
			r, _, err := svc.Create(t.Context(), spec(privacyTarget), "alice")
			if err != nil {
				t.Fatal(err)
			}
			racing := &racingStore{RolloutStore: store, races: tc.races, compete: tc.compete}
			svc.Store = racing
			*changes = 0
			_, err = svc.Pause(t.Context(), r.ID, "bob", "investigating")
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, errs.ErrConflict)) {
				t.Fatalf("got %v, want an ErrConflict: %v", err, tc.wantErr)
			}
			stored := mustRollout(t, store, r.ID)
			evs := mustEvents(t, store, r.ID, 0)
			if racing.updates != tc.wantUpdates || stored.State != tc.wantState || !reflect.DeepEqual(actions(evs), tc.wantEvents) {
				t.Errorf("%d saves, stored %s with events %v; want %d saves, %s with %v",
					racing.updates, stored.State, actions(evs), tc.wantUpdates, tc.wantState, tc.wantEvents)
			}
			if wantChanges := map[bool]int{false: 1, true: 0}[tc.wantErr]; *changes != wantChanges {
				t.Errorf("OnChange called %d times, want %d", *changes, wantChanges)
			}
		})
	}
}

func testServiceAudit(t *testing.T, b backend) {
	svc, _, _ := newService(t, b)
	ctx := t.Context()
	// The clock moves one second per reading: each event has its own time.
	r1, _, err := svc.Create(ctx, spec(privacyTarget), "alice") // t0+1s
	if err != nil {
		t.Fatal(err)
	}
	sp := spec(privacyTarget)
	sp.Selector.Models = []string{"PX-8"}
	r2, _, err := svc.Create(ctx, sp, "bob") // t0+2s
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []func() (*rollout.Rollout, error){
		func() (*rollout.Rollout, error) { return svc.Pause(ctx, r1.ID, "carol", "p1") },               // +3s
		func() (*rollout.Rollout, error) { return svc.Pause(ctx, r2.ID, "alice", "p2") },               // +4s
		func() (*rollout.Rollout, error) { return applied(svc.Resume(ctx, r1.ID, "carol", "r1")) },     // +5s
		func() (*rollout.Rollout, error) { return svc.HoldModel(ctx, r2.ID, "bob", "h2", "PX-8") },     // +6s
		func() (*rollout.Rollout, error) { return applied(svc.Advance(ctx, r1.ID, "alice", "a1", 0)) }, // +7s
	} {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name      string
		f         rollout.AuditFilter
		want      []string // reason or action@rollout, newest first
		wantField string
	}{
		{name: "everything, newest first", f: rollout.AuditFilter{},
			want: []string{"a1", "h2", "r1", "p2", "p1", "start@2", "create@2", "start@1", "create@1"}},
		{name: "one rollout", f: rollout.AuditFilter{RolloutID: r2.ID}, want: []string{"h2", "p2", "start@2", "create@2"}},
		{name: "one actor", f: rollout.AuditFilter{Actor: "alice"}, want: []string{"a1", "p2", "start@1", "create@1"}},
		{name: "one action", f: rollout.AuditFilter{Action: rollout.ActionPause}, want: []string{"p2", "p1"}},
		{name: "rollout and actor", f: rollout.AuditFilter{RolloutID: r1.ID, Actor: "carol"}, want: []string{"r1", "p1"}},
		{name: "since is inclusive, until exclusive", f: rollout.AuditFilter{Since: at(3), Until: at(6)}, want: []string{"r1", "p2", "p1"}},
		{name: "limit", f: rollout.AuditFilter{Limit: 2}, want: []string{"a1", "h2"}},
		{name: "nothing matches", f: rollout.AuditFilter{Actor: "mallory"}, want: []string{}},
		{name: "unknown action", f: rollout.AuditFilter{Action: "delete"}, wantField: "action"},
		{name: "limit above the maximum", f: rollout.AuditFilter{Limit: audit.MaxAuditLimit + 1}, wantField: "limit"},
		{name: "until not after since", f: rollout.AuditFilter{Since: at(5), Until: at(5)}, wantField: "until"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := svc.AuditEvents(ctx, tc.f)
			if tc.wantField != "" {
				wantField(t, err, tc.wantField)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, ev := range evs {
				if ev.Reason == "" || strings.HasPrefix(ev.Reason, "created by") {
					got = append(got, ev.Action+"@"+map[string]string{r1.ID: "1", r2.ID: "2"}[ev.RolloutID])
				} else {
					got = append(got, ev.Reason)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	// The default limit is DefaultAuditLimit.
	for i := range audit.DefaultAuditLimit {
		if _, err := svc.HoldModel(ctx, r1.ID, "bot", "many", fmt.Sprintf("M-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := svc.AuditEvents(ctx, rollout.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != audit.DefaultAuditLimit || evs[0].Model != fmt.Sprintf("M-%03d", audit.DefaultAuditLimit-1) {
		t.Errorf("default read: %d events, newest %q; want %d, newest the last hold", len(evs), evs[0].Model, audit.DefaultAuditLimit)
	}
}

// testAuditUsesIndex: the audit log of one rollout is read through the
// (rollout_id, id) index, not by a walk of every rollout's events.
func testAuditUsesIndex(t *testing.T, b backend) {
	db, _, s := mustRollouts(t, b)
	// 4000 events of 20 rollouts: one rollout's are a twentieth.
	for i := range 20 {
		mustCreateRollout(t, s, fmt.Sprintf("ro_%d", i))
	}
	g := db.gorm.WithContext(t.Context())
	if err := g.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
INSERT INTO rollout_events (rollout_id, at, actor, action, reason, from_state, to_state, from_percent, to_percent, model, detail)
SELECT 'ro_' || (i % 20), ?, 'bot', 'hold', 'seed', 'running', 'running', 1, 1, 'M-' || i, '' FROM n`, dbTime(t0)).Error; err != nil {
		t.Fatalf("seed events: %v", err)
	}
	if err := g.Exec("ANALYZE rollout_events").Error; err != nil {
		t.Fatal(err)
	}
	f := rollout.AuditFilter{RolloutID: "ro_1", Actor: "alice", Since: t0, Limit: 50}
	query := g.ToSQL(func(tx *gorm.DB) *gorm.DB {
		var rows []rolloutEventRow
		return auditQuery(tx, f).Find(&rows)
	})
	text := queryPlan(t, db, query)
	if !strings.Contains(text, "rollout_events_rollout") {
		t.Errorf("query plan of %s does not use rollout_events_rollout:\n%s", query, text)
	}
}
