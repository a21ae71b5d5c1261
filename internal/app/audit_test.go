package app_test

import (
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/server/audit"
)

// The replica holding the lease checkpoints the audit log in its
// background jobs, every AuditCheckpointInterval when the head moved,
// into the blob store.
func TestAuditCheckpointJob(t *testing.T) {
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	ctx := t.Context()
	// env's own App holds the lease for 3 of its 1 h passes: let it
	// expire, so that the replica below takes it.
	clk.Advance(4 * time.Hour)
	for _, name := range []string{"a", "b", "c"} {
		if err := env.DB.Audit().AppendAudit(ctx, audit.AuditEntry{At: clk.Now(), Actor: "alice", Action: "user.create", Object: name}); err != nil {
			t.Fatal(err)
		}
	}
	head := func() int64 {
		es, err := env.DB.Audit().ListAudit(ctx, audit.AuditQuery{Limit: 1})
		if err != nil || len(es) != 1 {
			t.Fatalf("the newest entry: %v, %v", es, err)
		}
		return es[0].Seq
	}
	checkpointed := func(seq int64) bool {
		_, err := env.Blobs.Stat(ctx, audit.AuditCheckpointKey(seq))
		return err == nil
	}
	r := &leaseReplica{name: "replica"}
	a, err := app.New(ctx, app.Config{DB: env.DB, Blobs: env.Blobs, Online: env.Online, Now: clk.Now,
		RefreshInterval: 10 * time.Millisecond, AuditCheckpointInterval: time.Nanosecond, Holder: "replica",
		AfterPass: func() { r.passes.Add(1) }, AfterPolicies: func() { r.policies.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	a.Run(ctx)
	t.Cleanup(a.Close)
	first := head()
	waitFor(t, "a checkpoint of the log", func() bool { return checkpointed(first) })
	if err := env.DB.Audit().AppendAudit(ctx, audit.AuditEntry{At: clk.Now(), Actor: "alice", Action: "user.create", Object: "d"}); err != nil {
		t.Fatal(err)
	}
	next := head()
	waitFor(t, "a checkpoint of the entry appended since", func() bool { return checkpointed(next) })
	v, err := audit.VerifyAudit(ctx, env.DB.Audit(), a.Checkpoints)
	// No root is published: nothing says the online key is the
	// server's yet, and verify says so rather than "verified".
	if err != nil || v.Anchored() || v.Unanchored != "2 checkpoints, but no published root lists a timestamp key to check them with (the TUF repository is not initialized)" {
		t.Errorf("verify before the ceremony: got %+v, %v", v, err)
	}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	if v, err = audit.VerifyAudit(ctx, env.DB.Audit(), a.Checkpoints); err != nil || !v.Anchored() || v.Checkpoints < 2 {
		t.Errorf("verify after the ceremony: got %+v, %v; want anchored by the checkpoints", v, err)
	}
}
