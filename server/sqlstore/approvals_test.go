package sqlstore

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// TestApprovalStore runs the four-eyes approval store suite against
// SQLite and, when OTA_TEST_POSTGRES_DSN is set, PostgreSQL.
func TestApprovalStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RoundTrip", testApprovalRoundTrip},
		{"DecideOnce", testApprovalDecideOnce},
		{"DecideConcurrent", testApprovalDecideConcurrent},
	})
}

func mustApproval(t testing.TB, s *ApprovalStore, id, rolloutID string, at time.Time) *rollout.Approval {
	t.Helper()
	a := &rollout.Approval{ID: id, RolloutID: rolloutID, Action: rollout.ActionAdvance, ToPercent: 100, Exposure: 100,
		RequestedBy: "alice", RequestedAt: at, Reason: "healthy at 50%", State: rollout.ApprovalPending}
	if err := s.CreateApproval(t.Context(), a); err != nil {
		t.Fatalf("create approval %s: %v", id, err)
	}
	return a
}

func testApprovalRoundTrip(t *testing.T, b backend) {
	db, _, rollouts := mustRollouts(t, b)
	mustCreateRollout(t, rollouts, "ro-1")
	mustCreateRollout(t, rollouts, "ro-2")
	s := db.Approvals()
	a1 := mustApproval(t, s, "ap-1", "ro-1", t0)
	mustApproval(t, s, "ap-2", "ro-1", t0.Add(time.Minute))
	mustApproval(t, s, "ap-3", "ro-2", t0)

	got, err := s.Approval(t.Context(), "ap-1")
	if err != nil {
		t.Fatal(err)
	}
	want := *a1
	want.RequestedAt = µs(want.RequestedAt).UTC()
	if *got != want {
		t.Errorf("got %+v, want %+v", got, &want)
	}
	list, err := s.RolloutApprovals(t.Context(), "ro-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "ap-2" || list[1].ID != "ap-1" {
		t.Errorf("approvals of ro-1: %+v, want ap-2 then ap-1 (newest first)", list)
	}
	if list, err := s.RolloutApprovals(t.Context(), "ro-nosuch"); err != nil || len(list) != 0 {
		t.Errorf("approvals of an unknown rollout: %v %v, want none", list, err)
	}
	if _, err := s.Approval(t.Context(), "ap-nosuch"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown approval: %v, want ErrNotFound", err)
	}
	if err := s.CreateApproval(t.Context(), a1); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("id taken: %v, want ErrConflict", err)
	}
	orphan := *a1
	orphan.ID, orphan.RolloutID = "ap-9", "ro-nosuch"
	if err := s.CreateApproval(t.Context(), &orphan); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("approval of an unknown rollout: %v, want ErrNotFound", err)
	}
}

func testApprovalDecideOnce(t *testing.T, b backend) {
	db, _, rollouts := mustRollouts(t, b)
	mustCreateRollout(t, rollouts, "ro-1")
	s := db.Approvals()
	a := mustApproval(t, s, "ap-1", "ro-1", t0)
	d := *a
	d.State, d.DecidedBy, d.DecidedAt, d.DecisionReason = rollout.ApprovalApproved, "bob", t0.Add(time.Hour), "looks good"
	if err := s.DecideApproval(t.Context(), &d); err != nil {
		t.Fatal(err)
	}
	got, err := s.Approval(t.Context(), "ap-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != rollout.ApprovalApproved || got.DecidedBy != "bob" || !got.DecidedAt.Equal(µs(t0.Add(time.Hour))) || got.DecisionReason != "looks good" {
		t.Errorf("after approve: %+v", got)
	}
	r := d
	r.State, r.DecidedBy = rollout.ApprovalRejected, "carol"
	if err := s.DecideApproval(t.Context(), &r); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("deciding a decided approval: %v, want ErrConflict", err)
	}
	if got, _ := s.Approval(t.Context(), "ap-1"); got.State != rollout.ApprovalApproved || got.DecidedBy != "bob" {
		t.Errorf("the second decision overwrote the first: %+v", got)
	}
	r.ID = "ap-nosuch"
	if err := s.DecideApproval(t.Context(), &r); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("deciding an unknown approval: %v, want ErrNotFound", err)
	}
	p := d
	p.State = rollout.ApprovalPending
	if err := s.DecideApproval(t.Context(), &p); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("deciding to pending: %v, want ErrInvalid", err)
	}
}

// testApprovalDecideConcurrent: of many replicas deciding one approval at
// once, exactly one wins.
func testApprovalDecideConcurrent(t *testing.T, b backend) {
	db, _, rollouts := mustRollouts(t, b)
	mustCreateRollout(t, rollouts, "ro-1")
	s := db.Approvals()
	a := mustApproval(t, s, "ap-1", "ro-1", t0)
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := *a
			d.State, d.DecidedBy, d.DecidedAt = rollout.ApprovalApproved, string(rune('a'+i)), t0
			switch err := s.DecideApproval(t.Context(), &d); {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, errs.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("decide: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 7 {
		t.Errorf("%d wins and %d conflicts, want 1 and 7", wins.Load(), conflicts.Load())
	}
}
