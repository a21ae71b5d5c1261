package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// fakeApprovals is an in-memory ApprovalStore with the real one's
// compare-and-swap.
type fakeApprovals struct {
	mu sync.Mutex
	as []*rollout.Approval
}

var _ rollout.ApprovalStore = (*fakeApprovals)(nil)

func (f *fakeApprovals) CreateApproval(_ context.Context, a *rollout.Approval) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := *a
	f.as = append(f.as, &c)
	return nil
}

func (f *fakeApprovals) Approval(_ context.Context, id string) (*rollout.Approval, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.as {
		if a.ID == id {
			c := *a
			return &c, nil
		}
	}
	return nil, fmt.Errorf("approval %s: %w", id, errs.ErrNotFound)
}

func (f *fakeApprovals) RolloutApprovals(_ context.Context, rolloutID string) ([]*rollout.Approval, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*rollout.Approval
	for i := len(f.as) - 1; i >= 0; i-- {
		if f.as[i].RolloutID == rolloutID {
			c := *f.as[i]
			out = append(out, &c)
		}
	}
	return out, nil
}

func (f *fakeApprovals) DecideApproval(_ context.Context, a *rollout.Approval) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.as {
		if s.ID == a.ID {
			if !s.Pending() {
				return errs.ErrConflict
			}
			*s = *a
			return nil
		}
	}
	return errs.ErrNotFound
}

// TestFourEyesRules: which advances and starts wait for a second person.
func TestFourEyesRules(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		stages  []float64
		stage   int
		draft   bool
		percent float64 // for an advance; 0 is the next stage
		// wantPercent is where the rollout is after the call; pending
		// whether an approval was asked for instead.
		wantPercent float64
		pending     bool
	}{
		{name: "advance to the next stage, 50%", stages: []float64{10, 50, 100}, stage: 0, wantPercent: 50},
		{name: "advance to 50% exactly", stages: []float64{10, 100}, percent: 50, wantPercent: 50},
		{name: "advance to 50.01%", stages: []float64{10, 100}, percent: 50.01, wantPercent: 10, pending: true},
		{name: "advance to the next stage, 100%", stages: []float64{10, 50, 100}, stage: 1, wantPercent: 50, pending: true},
		{name: "advance from 75% to 100%", stages: []float64{10, 75, 100}, stage: 1, wantPercent: 75, pending: true},
		{name: "start at 50%", stages: []float64{50, 100}, draft: true, wantPercent: 50},
		{name: "start at 100%", stages: []float64{100}, draft: true, wantPercent: 100, pending: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mutate := func(r *rollout.Rollout) { r.Stages = tc.stages }
			var r *rollout.Rollout
			if tc.draft {
				r = draftRollout(t, mutate)
			} else {
				r = runningRollout(t, mutate)
				r.Stage = tc.stage
			}
			store, approvals := newFakeRollouts(r), &fakeApprovals{}
			svc := &rollout.RolloutService{Store: store, Approvals: approvals, Now: func() time.Time { return t0.Add(time.Hour) }}
			var (
				pending *rollout.Approval
				err     error
			)
			if tc.draft {
				_, pending, err = svc.Start(ctx, r.ID, "alice", "go")
			} else {
				_, pending, err = svc.Advance(ctx, r.ID, "alice", "healthy", tc.percent)
			}
			if err != nil || (pending != nil) != tc.pending {
				t.Fatalf("got %+v, %v; want pending %v", pending, err, tc.pending)
			}
			after, _ := store.Rollout(ctx, r.ID)
			if tc.pending {
				if after.Percent() != r.Percent() || after.State != r.State {
					t.Errorf("the request changed the rollout: %s at %g%%", after.State, after.Percent())
				}
				if pending.RequestedBy != "alice" || !pending.Pending() || len(approvals.as) != 1 {
					t.Errorf("approval %+v, want alice's, pending, stored", pending)
				}
				if last := store.events[len(store.events)-1]; last.Action != rollout.ActionApprovalRequested || last.Reason == "" {
					t.Errorf("last event %+v, want approval_requested with the reason", last)
				}
				return
			}
			if after.Percent() != tc.wantPercent || len(approvals.as) != 0 {
				t.Errorf("at %g%% with %d approvals, want %g%% and none", after.Percent(), len(approvals.as), tc.wantPercent)
			}
		})
	}
}

// TestFourEyesApprove: the requester cannot approve; another can, once,
// and the change is theirs; a reject closes it; a newer request and a
// pause cancel pending ones.
func TestFourEyesApprove(t *testing.T) {
	ctx := context.Background()
	r := runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{10, 50, 100} })
	r.Stage = 1
	store, approvals := newFakeRollouts(r), &fakeApprovals{}
	svc := &rollout.RolloutService{Store: store, Approvals: approvals, Now: func() time.Time { return t0.Add(time.Hour) }}
	request := func() *rollout.Approval {
		t.Helper()
		_, pending, err := svc.Advance(ctx, r.ID, "alice", "all of it", 0)
		if err != nil || pending == nil {
			t.Fatalf("advance: %v, want pending", err)
		}
		return pending
	}
	a := request()
	if _, _, err := svc.Approve(ctx, r.ID, a.ID, "alice", "me"); !errors.Is(err, rollout.ErrSelfApproval) || !errors.Is(err, errs.ErrForbidden) {
		t.Errorf("self approval: %v, want ErrSelfApproval", err)
	}
	if _, _, err := svc.Approve(ctx, "ro-other", a.ID, "bob", "ok"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("approval of another rollout: %v, want ErrNotFound", err)
	}
	got, d, err := svc.Approve(ctx, r.ID, a.ID, "bob", "checked")
	if err != nil || got.Percent() != 100 || d.State != rollout.ApprovalApproved || d.DecidedBy != "bob" {
		t.Fatalf("approve: %v %v %+v", err, got, d)
	}
	if last := store.events[len(store.events)-1]; last.Actor != "bob" || last.Action != rollout.ActionAdvance || last.ToPercent != 100 {
		t.Errorf("approved event %+v, want bob's advance to 100%%", last)
	}
	if _, _, err := svc.Approve(ctx, r.ID, a.ID, "carol", "again"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("approving twice: %v, want ErrConflict", err)
	}

	// From 100% nothing is left to widen; start over at 50%.
	r2 := runningRollout(t, func(r *rollout.Rollout) { r.ID, r.Stages = "ro-2", []float64{50, 100} })
	store.rollouts[r2.ID] = r2
	r2.Version = 1
	r = r2
	first := request()
	second := request()
	if _, err := svc.Reject(ctx, r.ID, second.ID, "alice", "withdrawn"); err != nil {
		t.Fatalf("reject: %v", err)
	}
	third := request()
	if _, err := svc.Pause(ctx, r.ID, "bob", "wait"); err != nil {
		t.Fatal(err)
	}
	want := map[string]rollout.ApprovalState{first.ID: rollout.ApprovalCancelled, second.ID: rollout.ApprovalRejected, third.ID: rollout.ApprovalCancelled}
	for id, st := range want {
		if a, _ := approvals.Approval(ctx, id); a.State != st {
			t.Errorf("approval %s: %s, want %s", id, a.State, st)
		}
	}
}

// TestFourEyesAutoAdvance: the evaluator advances on its own up to 50%,
// and past it only asks, once per stage, on behalf of the rollout's
// creator, who then cannot approve it alone.
func TestFourEyesAutoAdvance(t *testing.T) {
	ctx := context.Background()
	r := runningRollout(t, func(r *rollout.Rollout) {
		r.Stages, r.Policy.Soak, r.Policy.MinResults = []float64{10, 50, 100}, time.Hour, 1
	})
	store, approvals := newFakeRollouts(r), &fakeApprovals{}
	now := t0.Add(2 * time.Hour)
	eval := &rollout.RolloutEvaluator{Store: store, Approvals: approvals, Now: func() time.Time { return now }}
	store.add(r.ID, "PX-7", 10, false, t0.Add(90*time.Minute))
	if err := eval.Evaluate(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.Rollout(ctx, r.ID); got.Percent() != 50 || len(approvals.as) != 0 {
		t.Fatalf("first pass: at %g%% with %d approvals, want 50%% by itself", got.Percent(), len(approvals.as))
	}
	now = now.Add(2 * time.Hour)
	store.add(r.ID, "PX-7", 10, false, now.Add(-time.Minute))
	for range 2 {
		if err := eval.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := store.Rollout(ctx, r.ID)
	if got.Percent() != 50 || len(approvals.as) != 1 {
		t.Fatalf("past 50%%: at %g%% with %d approvals, want 50%% and one request", got.Percent(), len(approvals.as))
	}
	a := approvals.as[0]
	if a.RequestedBy != r.CreatedBy || a.ToPercent != 100 || !a.Pending() {
		t.Errorf("approval %+v, want a pending one to 100%% on behalf of %s", a, r.CreatedBy)
	}
	if i := slices.IndexFunc(store.events, func(ev rollout.Event) bool { return ev.Action == rollout.ActionApprovalRequested }); i < 0 ||
		store.events[i].Actor != audit.SystemActor {
		t.Errorf("events %s, want system's approval_requested", actions(store.events))
	}
	svc := &rollout.RolloutService{Store: store, Approvals: approvals, Now: func() time.Time { return now }}
	if _, _, err := svc.Approve(ctx, r.ID, a.ID, r.CreatedBy, "mine"); !errors.Is(err, rollout.ErrSelfApproval) {
		t.Errorf("the creator approving the auto-advance: %v, want ErrSelfApproval", err)
	}
	if got, _, err := svc.Approve(ctx, r.ID, a.ID, "bob", "fine"); err != nil || got.Percent() != 100 {
		t.Errorf("bob approving: %v, at %v", err, got)
	}
}
