package apitest_test

import (
	"context"
	"database/sql"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/glebarez/go-sqlite"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/sqlstore"
)

// A database administrator edits an audit entry and recomputes every
// hash after it and the head, through SQL: GET /admin/audit/verify and
// the audit page, which verified the log before, now name the entry,
// from the checkpoint the server signed into the blob store.
func TestAuditRewriteCaughtByCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "otad.db")
	db, err := sqlstore.Open(t.Context(), "sqlite:"+path, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	env := apitest.Start(t, apitest.Options{DB: db})
	ctx := t.Context()

	var v wire.AuditVerify
	if err := env.Do("GET", "/audit/verify", nil, &v); err != nil {
		t.Fatal(err)
	}
	if !v.OK || v.Anchored == nil || *v.Anchored || v.Unanchored != "no checkpoints yet" {
		t.Errorf("verify before any checkpoint: %+v, want ok, not anchored: no checkpoints yet", v)
	}

	// The ceremony publishes root v1, which names the server's online
	// key: checkpoints signed with it are trusted from then on.
	env.Ceremony(t, apitest.NewEngineers(t, 1), 1)
	for i := range 20 {
		e := audit.AuditEntry{At: time.Now(), Actor: "alice", Action: "user.create", Object: "user-" + string(rune('a'+i)), Reason: "hiring"}
		if err := db.Audit().AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := env.App.Checkpoints.Checkpoint(ctx); err != nil || n != 1 {
		t.Fatalf("checkpoint: %d, %v", n, err)
	}
	head := lastSeq(t, db)
	v = wire.AuditVerify{}
	if err := env.Do("GET", "/audit/verify", nil, &v); err != nil {
		t.Fatal(err)
	}
	if !v.OK || v.Anchored == nil || !*v.Anchored || v.Checkpoints != 1 || v.NewestCheckpoint == nil ||
		v.NewestCheckpoint.Seq != head || v.NewestCheckpoint.KeyID != env.Online.KeyID() || v.NewestCheckpoint.Hash != *v.HeadHash ||
		v.SinceCheckpoint == nil || *v.SinceCheckpoint != 0 {
		t.Errorf("verify a clean log: %+v (newest %+v), want anchored by a checkpoint of entry %d", v, v.NewestCheckpoint, head)
	}
	page := dashboard(t, env)
	if body := page("/audit"); !strings.Contains(body, "Chain verified: ") || !strings.Contains(body, "checked against the signed checkpoints") {
		t.Errorf("the audit page of a clean log:\n%s", body)
	}

	// The rewrite: entry 7's reason, then every hash from 7 on and the
	// head, as the probe did.
	target := head - 13
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	rawExec(t, raw, "UPDATE audit_log SET reason = 'routine' WHERE seq = ?", target)
	es, err := db.Audit().ListAudit(ctx, audit.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	prev := audit.AuditGenesis
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		if e.Seq >= target {
			e.PrevHash = prev
			e.Hash = audit.AuditHash(e)
			rawExec(t, raw, "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", e.PrevHash, e.Hash, e.Seq)
		}
		prev = e.Hash
	}
	rawExec(t, raw, "UPDATE audit_head SET hash = ? WHERE id = 1", prev)
	if _, err := audit.VerifyAudit(ctx, db.Audit(), nil); err != nil {
		t.Fatalf("the chain alone shows the rewrite (%v): it does not replay the probe's", err)
	}

	v = wire.AuditVerify{}
	if err := env.Do("GET", "/audit/verify", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.OK || v.BrokenAt != target || !strings.Contains(v.Why, "differs from the one checkpoint") {
		t.Errorf("verify after the rewrite: %+v, want broken at entry %d against the checkpoint", v, target)
	}
	want := "BROKEN at entry " + itoa(target) + ": its hash differs from the one checkpoint " + itoa(head)
	if body := page("/audit"); !strings.Contains(body, want) {
		t.Errorf("the audit page after the rewrite lacks %q:\n%s", want, body)
	}
}

func lastSeq(t *testing.T, db *sqlstore.DB) int64 {
	t.Helper()
	es, err := db.Audit().ListAudit(t.Context(), audit.AuditQuery{Limit: 1})
	if err != nil || len(es) != 1 {
		t.Fatalf("the newest audit entry: %v, %v", es, err)
	}
	return es[0].Seq
}

func rawExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// dashboard logs a viewer into env's pages and returns a GET of a page's
// body.
func dashboard(t *testing.T, env *apitest.Env) func(path string) string {
	t.Helper()
	pages := logInPages(t, env, "vera", identity.RoleViewer)
	return func(path string) string {
		t.Helper()
		resp, body := pages.get(path)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		return body
	}
}
