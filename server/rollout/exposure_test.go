package rollout_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// rolloutAt is a rollout of the privacy patch with id, salt, state and
// current percent.
func rolloutAt(tb testing.TB, id, salt string, state rollout.RolloutState, percent float64) *rollout.Rollout {
	tb.Helper()
	stages := []float64{percent, 100}
	if percent == 100 {
		stages = stages[1:]
	}
	r := runningRollout(tb, func(r *rollout.Rollout) { r.ID, r.Salt, r.Stages = id, salt, stages })
	r.State = state
	return r
}

// TestExposure: the largest percent per salt, summed over salts, at
// most 100; drafts, aborted rollouts and other patches do not count;
// the rollout judged counts as changed, in place of its stored copy.
func TestExposure(t *testing.T) {
	other := rolloutAt(t, "ro-other", "s1", rollout.RolloutRunning, 90)
	other.Release.PatchID = "CM-2026-999"
	for _, tc := range []struct {
		name string
		rs   []*rollout.Rollout
		r    *rollout.Rollout
		want float64
	}{
		{"one shared salt: the largest", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutRunning, 50), rolloutAt(t, "ro-b", "s1", rollout.RolloutRunning, 50)},
			rolloutAt(t, "ro-c", "s1", rollout.RolloutRunning, 50), 50},
		{"paused and completed count", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutPaused, 60), rolloutAt(t, "ro-b", "s1", rollout.RolloutCompleted, 30)},
			rolloutAt(t, "ro-c", "s1", rollout.RolloutRunning, 10), 60},
		{"drafts, aborted and other patches do not", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutDraft, 100), rolloutAt(t, "ro-b", "s2", rollout.RolloutAborted, 100), other},
			rolloutAt(t, "ro-c", "s1", rollout.RolloutRunning, 10), 10},
		{"other salts add up", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutRunning, 33.33), rolloutAt(t, "ro-b", "s2", rollout.RolloutRunning, 16.67)},
			rolloutAt(t, "ro-c", "s1", rollout.RolloutRunning, 20), 50},
		{"at most 100", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutRunning, 60), rolloutAt(t, "ro-b", "s2", rollout.RolloutRunning, 60)},
			rolloutAt(t, "ro-c", "s3", rollout.RolloutRunning, 60), 100},
		{"the changed copy replaces the stored one", []*rollout.Rollout{
			rolloutAt(t, "ro-a", "s1", rollout.RolloutRunning, 80), rolloutAt(t, "ro-b", "s1", rollout.RolloutRunning, 10)},
			rolloutAt(t, "ro-a", "s1", rollout.RolloutRunning, 20), 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rollout.Exposure(tc.rs, tc.r); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestPatchSalt: a new rollout takes the salt of the patch's rollouts;
// of several (older rollouts), the widest live one's, else the oldest's.
func TestPatchSalt(t *testing.T) {
	rel := rolloutSpec().Release
	if salt, ok := rollout.PatchSalt(nil, rel); ok {
		t.Errorf("no rollouts: %q, want none", salt)
	}
	aborted := rolloutAt(t, "ro-a", "old", rollout.RolloutAborted, 100)
	if salt, _ := rollout.PatchSalt([]*rollout.Rollout{aborted}, rel); salt != "old" {
		t.Errorf("an aborted rollout only: %q, want its salt", salt)
	}
	rs := []*rollout.Rollout{aborted, rolloutAt(t, "ro-b", "narrow", rollout.RolloutRunning, 10),
		rolloutAt(t, "ro-c", "wide", rollout.RolloutPaused, 40), rolloutAt(t, "ro-d", "late", rollout.RolloutRunning, 40)}
	if salt, _ := rollout.PatchSalt(rs, rel); salt != "wide" {
		t.Errorf("several salts: %q, want the widest live one's, the oldest of a tie", salt)
	}
	rel.PatchID = "CM-2026-999"
	if salt, ok := rollout.PatchSalt(rs, rel); ok {
		t.Errorf("another patch: %q, want none", salt)
	}
}

// TestFourEyesByExposure: a start, advance or resume needs a second
// person when it lets the patch reach more than half of the handsets,
// every rollout of the patch counted, whatever the rollout's own stage.
func TestFourEyesByExposure(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		others []*rollout.Rollout
		r      *rollout.Rollout
		act    func(svc *rollout.RolloutService, id string) (*rollout.Rollout, *rollout.Approval, error)
		// pending is whether an approval is asked for instead.
		pending bool
	}{
		{name: "a start at 99.99% alone", r: rolloutAt(t, "ro-1", "s1", rollout.RolloutDraft, 99.99), act: start, pending: true},
		{name: "a start at 50% alone", r: rolloutAt(t, "ro-1", "s1", rollout.RolloutDraft, 50), act: start},
		{name: "a start at 10% beside a rollout of another salt at 45%",
			others: []*rollout.Rollout{rolloutAt(t, "ro-2", "s2", rollout.RolloutRunning, 45)},
			r:      rolloutAt(t, "ro-1", "s1", rollout.RolloutDraft, 10), act: start, pending: true},
		{name: "a start at 10% beside one of the same salt at 45%",
			others: []*rollout.Rollout{rolloutAt(t, "ro-2", "s1", rollout.RolloutRunning, 45)},
			r:      rolloutAt(t, "ro-1", "s1", rollout.RolloutDraft, 10), act: start},
		{name: "an advance to 40% beside a paused one of another salt at 20%",
			others: []*rollout.Rollout{rolloutAt(t, "ro-2", "s2", rollout.RolloutPaused, 20)},
			r:      rolloutAt(t, "ro-1", "s1", rollout.RolloutRunning, 30), act: advanceTo(40), pending: true},
		{name: "an advance to 40% beside an aborted one of another salt at 20%",
			others: []*rollout.Rollout{rolloutAt(t, "ro-2", "s2", rollout.RolloutAborted, 20)},
			r:      rolloutAt(t, "ro-1", "s1", rollout.RolloutRunning, 30), act: advanceTo(40)},
		{name: "a resume at 60%", r: rolloutAt(t, "ro-1", "s1", rollout.RolloutPaused, 60), act: resume, pending: true},
		{name: "a resume at 10% beside a completed one at 100%",
			others: []*rollout.Rollout{rolloutAt(t, "ro-2", "s1", rollout.RolloutCompleted, 100)},
			r:      rolloutAt(t, "ro-1", "s1", rollout.RolloutPaused, 10), act: resume, pending: true},
		{name: "a resume at 50%", r: rolloutAt(t, "ro-1", "s1", rollout.RolloutPaused, 50), act: resume},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, approvals := newFakeRollouts(append(tc.others, tc.r)...), &fakeApprovals{}
			svc := &rollout.RolloutService{Store: store, Approvals: approvals, Now: func() time.Time { return t0.Add(time.Hour) }}
			got, pending, err := tc.act(svc, tc.r.ID)
			if err != nil || (pending != nil) != tc.pending || got == nil {
				t.Fatalf("got %v, %+v, %v; want pending %v", got, pending, err, tc.pending)
			}
			after, _ := store.Rollout(ctx, tc.r.ID)
			if !tc.pending {
				if after.State != rollout.RolloutRunning || got.Version != after.Version {
					t.Errorf("not applied: %s at %g%%", after.State, after.Percent())
				}
				return
			}
			if after.State != tc.r.State || after.Percent() != tc.r.Percent() {
				t.Errorf("the request changed the rollout: %s at %g%%", after.State, after.Percent())
			}
			if pending.Exposure <= identity.FourEyesPercent || got.Version != after.Version {
				t.Errorf("approval %+v with rollout v%d, want the exposure past 50%% it was asked for beside the rollout as saved (v%d)",
					pending, got.Version, after.Version)
			}
			// A second person applies it.
			if r, _, err := svc.Approve(ctx, tc.r.ID, pending.ID, "bob", "agreed"); err != nil || r.State != rollout.RolloutRunning {
				t.Errorf("bob approving: %v, %+v", err, r)
			}
		})
	}
}

func start(svc *rollout.RolloutService, id string) (*rollout.Rollout, *rollout.Approval, error) {
	return svc.Start(context.Background(), id, "alice", "go")
}

func resume(svc *rollout.RolloutService, id string) (*rollout.Rollout, *rollout.Approval, error) {
	return svc.Resume(context.Background(), id, "alice", "fixed")
}

func advanceTo(percent float64) func(*rollout.RolloutService, string) (*rollout.Rollout, *rollout.Approval, error) {
	return func(svc *rollout.RolloutService, id string) (*rollout.Rollout, *rollout.Approval, error) {
		return svc.Advance(context.Background(), id, "alice", "healthy", percent)
	}
}

// TestApproveRechecksExposure: an approval applies only the exposure it
// was asked for; when another rollout of the patch (of another salt)
// widened meanwhile, approving it is a conflict and changes nothing.
func TestApproveRechecksExposure(t *testing.T) {
	ctx := context.Background()
	r := rolloutAt(t, "ro-1", "s1", rollout.RolloutRunning, 10)
	store, approvals := newFakeRollouts(r), &fakeApprovals{}
	svc := &rollout.RolloutService{Store: store, Approvals: approvals, Now: func() time.Time { return t0.Add(time.Hour) }}
	_, pending, err := svc.Advance(ctx, r.ID, "alice", "healthy", 60)
	if err != nil || pending == nil || pending.Exposure != 60 {
		t.Fatalf("advance to 60%%: %+v, %v; want pending at an exposure of 60%%", pending, err)
	}
	store.rollouts["ro-2"] = rolloutAt(t, "ro-2", "s2", rollout.RolloutRunning, 20)
	if _, _, err := svc.Approve(ctx, r.ID, pending.ID, "bob", "ok"); !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), "ask again") {
		t.Errorf("approve after ro-2 started: %v, want a conflict saying ask again", err)
	}
	if after, _ := store.Rollout(ctx, r.ID); after.Percent() != 10 {
		t.Errorf("at %g%%, want 10%%", after.Percent())
	}
}

// TestAutoAdvanceByExposure: auto-advance stops where the patch's
// exposure would pass 50%, though the rollout's own next stage is below
// it, and asks on behalf of the creator.
func TestAutoAdvanceByExposure(t *testing.T) {
	ctx := context.Background()
	r := runningRollout(t, func(r *rollout.Rollout) {
		r.ID, r.Salt, r.Stages, r.Policy.Soak, r.Policy.MinResults = "ro-1", "s1", []float64{30, 40}, time.Hour, 1
	})
	older := rolloutAt(t, "ro-0", "s0", rollout.RolloutRunning, 20)
	store, approvals := newFakeRollouts(r, older), &fakeApprovals{}
	now := t0.Add(2 * time.Hour)
	eval := &rollout.RolloutEvaluator{Store: store, Approvals: approvals, Now: func() time.Time { return now }}
	store.add(r.ID, "PX-7", 10, false, t0.Add(90*time.Minute))
	if err := eval.Evaluate(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := store.Rollout(ctx, r.ID)
	if got.Percent() != 30 || len(approvals.as) != 1 {
		t.Fatalf("at %g%% with %d approvals, want 30%% and one request", got.Percent(), len(approvals.as))
	}
	if a := approvals.as[0]; a.ToPercent != 40 || a.Exposure != 60 || a.RequestedBy != r.CreatedBy {
		t.Errorf("approval %+v, want an advance to 40%% at an exposure of 60%% for %s", a, r.CreatedBy)
	}
	// With the other rollout aborted the same advance goes on by itself.
	older.State = rollout.RolloutAborted
	store.rollouts[older.ID] = older
	approvals.as = nil
	now = now.Add(2 * time.Hour)
	r2 := runningRollout(t, func(r *rollout.Rollout) {
		r.ID, r.Salt, r.Stages, r.Policy.Soak, r.Policy.MinResults = "ro-2", "s1", []float64{30, 40}, time.Hour, 1
	})
	store.rollouts[r2.ID] = r2
	store.add(r2.ID, "PX-7", 10, false, now.Add(-time.Minute))
	if err := eval.Evaluate(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.Rollout(ctx, r2.ID); got.Percent() != 40 {
		t.Errorf("alone: at %g%%, want 40%% by itself", got.Percent())
	}
}

// fakeAudit is an in-memory AuditStore with the real one's query.
type fakeAudit struct {
	mu sync.Mutex
	es []audit.AuditEntry
}

var _ audit.AuditStore = (*fakeAudit)(nil)

func (f *fakeAudit) AppendAudit(_ context.Context, es ...audit.AuditEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range es {
		e.Seq = int64(len(f.es) + 1)
		f.es = append(f.es, e)
	}
	return nil
}

func (f *fakeAudit) ListAudit(_ context.Context, q audit.AuditQuery) ([]audit.AuditEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []audit.AuditEntry
	for _, e := range slices.Backward(f.es) {
		switch {
		case q.Actor != "" && e.Actor != q.Actor,
			q.Action != "" && !(e.Action == q.Action || strings.HasSuffix(q.Action, ".") && strings.HasPrefix(e.Action, q.Action)),
			q.Object != "" && e.Object != q.Object,
			!q.Since.IsZero() && e.At.Before(q.Since),
			!q.Until.IsZero() && !e.At.Before(q.Until),
			q.Before > 0 && e.Seq >= q.Before:
			continue
		}
		// Small pages, so that paging is exercised.
		if len(out) == 2 {
			break
		}
		out = append(out, e)
	}
	return out, nil
}

func (f *fakeAudit) WalkAudit(context.Context, func(audit.AuditEntry) error) (int64, string, error) {
	return 0, "", errors.New("not used")
}

// TestVouchedApprover: whoever the requester created, re-enabled, raised
// in role or set the password of within 24 hours (directly or through
// accounts they did that to) cannot approve their requests; a lowered
// role, an older change or another actor's does not count.
func TestVouchedApprover(t *testing.T) {
	ctx := context.Background()
	at := func(h float64) time.Time { return t0.Add(time.Duration(h * float64(time.Hour))) }
	entry := func(h float64, actor, action, object, detail string) audit.AuditEntry {
		return audit.AuditEntry{At: at(h), Actor: actor, Action: action, Object: object, Detail: detail}
	}
	for _, tc := range []struct {
		name    string
		log     []audit.AuditEntry
		now     float64 // hours after t0
		refused bool
	}{
		{"created an hour ago", []audit.AuditEntry{entry(0, "alice", "user.create", "bob", `{"kind":"user","role":"operator"}`)}, 1, true},
		{"created 25 hours ago", []audit.AuditEntry{entry(0, "alice", "user.create", "bob", `{"kind":"user","role":"operator"}`)}, 25, false},
		{"created by someone else", []audit.AuditEntry{entry(0, "carol", "user.create", "bob", ``)}, 1, false},
		{"raised to operator", []audit.AuditEntry{entry(0, "alice", "user.set-role", "bob", `{"from":"viewer","to":"operator"}`)}, 23, true},
		{"lowered to operator", []audit.AuditEntry{entry(0, "alice", "user.set-role", "bob", `{"from":"admin","to":"operator"}`)}, 1, false},
		{"re-enabled", []audit.AuditEntry{entry(0, "alice", "user.enable", "bob", ``)}, 1, true},
		{"disabled", []audit.AuditEntry{entry(0, "alice", "user.disable", "bob", ``)}, 1, false},
		{"password set", []audit.AuditEntry{entry(0, "alice", "user.password", "bob", ``)}, 1, true},
		{"through an account alice created", []audit.AuditEntry{
			entry(0, "alice", "user.create", "sock", ``), entry(0.5, "x", "session.login", "sock", ``),
			entry(1, "sock", "user.create", "puppet", ``), entry(1.5, "sock", "user.set-role", "puppet", `{"from":"viewer","to":"operator"}`),
			entry(2, "puppet", "user.create", "bob", ``)}, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &fakeAudit{}
			if err := log.AppendAudit(ctx, tc.log...); err != nil {
				t.Fatal(err)
			}
			r := rolloutAt(t, "ro-1", "s1", rollout.RolloutRunning, 50)
			store, approvals := newFakeRollouts(r), &fakeApprovals{}
			now := at(tc.now)
			svc := &rollout.RolloutService{Store: store, Approvals: approvals, Audit: log, Now: func() time.Time { return now }}
			_, pending, err := svc.Advance(ctx, r.ID, "alice", "more", 100)
			if err != nil || pending == nil {
				t.Fatalf("advance: %v, want pending", err)
			}
			_, _, err = svc.Approve(ctx, r.ID, pending.ID, "bob", "agreed")
			var ve *identity.VouchedError
			if got := errors.As(err, &ve); got != tc.refused || (!tc.refused && err != nil) {
				t.Fatalf("bob approving alice's request: %v, want refused %v", err, tc.refused)
			}
			if tc.refused && (!errors.Is(err, errs.ErrForbidden) || !strings.Contains(err.Error(), "ask another operator") ||
				!strings.Contains(err.Error(), "bob cannot approve a request of alice")) {
				t.Errorf("refusal %q, want a forbidden error saying why and to ask another operator", err)
			}
		})
	}
}
