package sqlstore

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/textrule"
)

// TestRolloutOperatorText runs, on the real store, what the service does
// with the text an operator types (issue 13, finding 6): ids, salts and
// selector values are refused when they hold an identifier, reasons are
// kept scrubbed in the events, holds, approvals and the audit log; and
// the cap on rollouts not finished holds under concurrent creates.
func TestRolloutOperatorText(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RefusedIDs", testOperatorIDsRefused},
		{"ScrubbedReasons", testOperatorReasonsScrubbed},
		{"OpenRolloutsCapped", testOpenRolloutsCapped},
		{"OpenRolloutsCappedConcurrently", testOpenRolloutsCappedConcurrently},
	})
}

// The probe's values and a few more disguises.
var plantedInIDs = []string{"867530012345670", "IMEI867530x012345x670", "867530__012345__670", "203.0.113.77", "10-0-0-1",
	"0x7f000001", "a.b@example.com", "0a-1b-2c-3d-4e-5f"}

func testOperatorIDsRefused(t *testing.T, b backend) {
	s, store, _ := newService(t, b)
	ctx := t.Context()
	for _, v := range plantedInIDs {
		for _, tc := range []struct {
			field string
			edit  func(*rollout.RolloutSpec)
		}{
			{"id", func(sp *rollout.RolloutSpec) { sp.ID = v }},
			{"salt", func(sp *rollout.RolloutSpec) { sp.Salt = v }},
			{"models[0]", func(sp *rollout.RolloutSpec) { sp.Selector.Models = []string{v} }},
			{"channels[0]", func(sp *rollout.RolloutSpec) { sp.Selector.Channels = []string{"c-" + strings.ToLower(v)} }},
		} {
			sp := spec(privacyTarget)
			sp.Draft = true
			tc.edit(&sp)
			_, _, err := s.Create(ctx, sp, "alice")
			wantField(t, err, tc.field)
			if strings.Contains(err.Error(), v) {
				t.Errorf("%s %q: the message repeats the value: %v", tc.field, v, err)
			}
		}
	}
	sp := spec(privacyTarget)
	sp.Draft = true
	sp.Selector.BuildMin = "203.0.113.77"
	_, _, err := s.Create(ctx, sp, "alice")
	wantField(t, err, "build_min")
	if rs, err := store.Rollouts(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("%d rollouts stored (%v), want none", len(rs), err)
	}

	// Ids and a salt an operator chooses that are not identifiers, and
	// the ids the server makes, still pass. The rollouts of one patch
	// share the first one's salt (cohorts nest: rollout.PatchSalt).
	const salt = "salt-cm-2026-001"
	for _, id := range []string{"ro-privacy", "cm-2026-001-beta", "ro_1"} {
		sp := spec(privacyTarget)
		sp.ID, sp.Salt, sp.Draft = id, salt, true
		if _, _, err := s.Create(ctx, sp, "alice"); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
	}
	sp = spec(privacyTarget)
	sp.Draft = true
	r, _, err := s.Create(ctx, sp, "alice")
	if err != nil || !textrule.ValidRolloutID(r.ID) || r.Salt != salt {
		t.Fatalf("create with a server-made id: %v, id %q, salt %q", err, r.ID, r.Salt)
	}
	if _, err := s.HoldModel(ctx, r.ID, "alice", "held for a test", "IMEI867530x012345x670"); err == nil {
		t.Fatal("a hold of a model that is an IMEI was accepted")
	} else {
		wantField(t, err, "model")
	}
}

func testOperatorReasonsScrubbed(t *testing.T, b backend) {
	s, store, _ := newService(t, b)
	ctx := t.Context()
	// Each reason names the handset by another identifier.
	reasons := map[string]string{
		"create":  "asked by alice @example.com",
		"start":   "call +86 138 1234 5678 first",
		"pause":   "handset 867,530,012,345,670 bricked",
		"hold":    "PX-7 of IMEI867530x012345x671 failed",
		"release": "seen at 0x7f000001",
		"resume":  "imei 867530\u200b012345\u200b672",
		"advance": "ok from 203.0.113.77",
		"approve": "fine, says bob\uff20example.com",
		"abort":   "ip 2001\uff1adb8\uff1a\uff1a1 complained",
	}
	sp := spec(privacyTarget)
	sp.Stages = []float64{10, 100}
	sp.Draft, sp.Reason = true, reasons["create"]
	r, _, err := s.Create(ctx, sp, "alice")
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { _, _, err := s.Start(ctx, r.ID, "alice", reasons["start"]); return err },
		func() error { _, err := s.Pause(ctx, r.ID, "alice", reasons["pause"]); return err },
		func() error { _, err := s.HoldModel(ctx, r.ID, "alice", reasons["hold"], "PX-7"); return err },
		func() error {
			got, err := store.Rollout(ctx, r.ID)
			if err == nil && (len(got.Holds) != 1 || got.Holds[0].Reason != textrule.Scrub(reasons["hold"])) {
				err = fmt.Errorf("holds %+v: want PX-7 held for %q", got.Holds, textrule.Scrub(reasons["hold"]))
			}
			return err
		},
		func() error { _, err := s.ReleaseHold(ctx, r.ID, "alice", reasons["release"], "PX-7"); return err },
		func() error { _, _, err := s.Resume(ctx, r.ID, "alice", reasons["resume"]); return err },
		func() error {
			_, pending, err := s.Advance(ctx, r.ID, "alice", reasons["advance"], 0)
			if pending != nil {
				_, _, err = s.Approve(ctx, r.ID, pending.ID, "bob", reasons["approve"])
			}
			return err
		},
		func() error { _, err := s.Abort(ctx, r.ID, "alice", reasons["abort"]); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	evs, err := s.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := store.db.Audit().ListAudit(ctx, audit.AuditQuery{Limit: audit.MaxAuditLimit})
	if err != nil {
		t.Fatal(err)
	}
	approvals, err := store.db.Approvals().RolloutApprovals(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, ev := range evs {
		kept = append(kept, ev.Reason, ev.Detail)
	}
	for _, e := range entries {
		kept = append(kept, e.Reason, e.Detail)
	}
	for _, a := range approvals {
		kept = append(kept, a.Reason, a.DecisionReason)
	}
	all := strings.Join(kept, "\n")
	for action, reason := range reasons {
		if !strings.Contains(all, textrule.Scrub(reason)) {
			t.Errorf("%s: the scrubbed reason %q is not kept:\n%s", action, textrule.Scrub(reason), all)
		}
	}
	// "db8:", not "db8": the log's random ids are hex and hold "db8"
	// about once in a few hundred runs, but never a colon.
	for _, needle := range []string{"867530", "8613812345678", "138 1234", "example.com", "0x7f", "203.0.113", "db8:", "db8\uff1a", "\u200b"} {
		if strings.Contains(all, needle) {
			t.Errorf("%q kept in the events, approvals or audit log:\n%s", needle, all)
		}
	}
	if len(evs) < len(reasons) {
		t.Errorf("%d events, want one for each of %d actions", len(evs), len(reasons))
	}
}

func testOpenRolloutsCapped(t *testing.T, b backend) {
	s, store, _ := newService(t, b)
	s.MaxOpen = 3
	ctx := t.Context()
	var ids []string
	for i := range 3 {
		sp := spec(privacyTarget)
		sp.Draft = i == 0 // a draft counts as a running rollout does
		r, _, err := s.Create(ctx, sp, "alice")
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		ids = append(ids, r.ID)
	}
	_, _, err := s.Create(ctx, spec(privacyTarget), "alice")
	if !errors.Is(err, rollout.ErrTooManyOpenRollouts) || !errors.Is(err, errs.ErrConflict) ||
		!strings.Contains(err.Error(), "3 are draft, running or paused") || !strings.Contains(err.Error(), "complete or abort some") {
		t.Fatalf("fourth create: got %v, want ErrTooManyOpenRollouts saying to complete or abort some", err)
	}
	if rs, _ := store.Rollouts(ctx); len(rs) != 3 {
		t.Fatalf("%d rollouts stored, want 3: the refused create stored one", len(rs))
	}
	entries, err := store.db.Audit().ListAudit(ctx, audit.AuditQuery{Limit: audit.MaxAuditLimit})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(entries); n != 3+2 { // 3 creates, 2 starts
		t.Fatalf("%d audit entries, want 5: the refused create left some", n)
	}
	// Aborting one, or completing it, makes room.
	if _, err := s.Abort(ctx, ids[1], "alice", "make room"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Create(ctx, spec(privacyTarget), "alice"); err != nil {
		t.Fatalf("create after an abort: %v", err)
	}
	if _, _, err := s.Create(ctx, spec(privacyTarget), "alice"); !errors.Is(err, rollout.ErrTooManyOpenRollouts) {
		t.Fatalf("create past the cap again: got %v", err)
	}
}

func testOpenRolloutsCappedConcurrently(t *testing.T, b backend) {
	s, store, _ := newService(t, b)
	s.MaxOpen = 5
	// newService's clock and change counter are not for goroutines.
	s.Now, s.OnChange = func() time.Time { return t0 }, nil
	ctx := t.Context()
	var wg sync.WaitGroup
	var mu sync.Mutex
	created, refused := 0, 0
	for range 30 {
		wg.Go(func() {
			_, _, err := s.Create(ctx, spec(privacyTarget), "alice")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				created++
			case errors.Is(err, rollout.ErrTooManyOpenRollouts):
				refused++
			default:
				t.Errorf("create: %v", err)
			}
		})
	}
	wg.Wait()
	rs, err := store.Rollouts(ctx, rollout.OpenRolloutStates...)
	if err != nil {
		t.Fatal(err)
	}
	if created != 5 || refused != 25 || len(rs) != 5 {
		t.Fatalf("30 creates at once under a cap of 5: %d created, %d refused, %d open; want 5, 25, 5", created, refused, len(rs))
	}
}
