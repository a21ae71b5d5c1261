package sqlstore

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/signing"
)

// TestAuditCheckpoints replays, on a real database, the three rewrites
// of the audit log that a database administrator can make unseen by the
// chain alone (each recomputes the hashes and the head), and checks that
// the checkpoints signed outside the database catch each, naming the
// first entry rewritten.
func TestAuditCheckpoints(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"Clean", testAuditCheckpointsClean},
		{"Rewrites", testAuditCheckpointRewrites},
		{"Forged", testAuditCheckpointForged},
		{"RefusesToSignARewrite", testAuditCheckpointRefusesRewrite},
	})
}

// checkpointEnv is a log of 20 entries with a checkpoint store on disk,
// the online key signing it and the verifier trusting that key only.
type checkpointEnv struct {
	db       *DB
	blobs    manifests.BlobStore
	online   *signing.PrivateKey
	maker    *audit.AuditCheckpoints
	verifier *audit.AuditCheckpoints
}

func trust(keys ...*signing.PrivateKey) func(context.Context) (map[string]*metadata.Key, error) {
	return func(context.Context) (map[string]*metadata.Key, error) {
		m := map[string]*metadata.Key{}
		for _, k := range keys {
			m[k.KeyID()] = k.Public()
		}
		return m, nil
	}
}

func newCheckpointEnv(t *testing.T, b backend, entries int) *checkpointEnv {
	t.Helper()
	db := mustDB(t, b)
	blobs, err := fsstore.New(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	online, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	env := &checkpointEnv{db: db, blobs: blobs, online: online,
		maker:    &audit.AuditCheckpoints{Blobs: blobs, Signer: online.Signer(), Log: db.Audit(), Keys: trust(online)},
		verifier: &audit.AuditCheckpoints{Blobs: blobs, Keys: trust(online)}}
	env.append(t, entries)
	return env
}

func (env *checkpointEnv) append(t *testing.T, n int) {
	t.Helper()
	for n > 0 {
		batch := make([]audit.AuditEntry, min(n, 500))
		for i := range batch {
			batch[i] = entry(i)
		}
		if err := env.db.Audit().AppendAudit(t.Context(), batch...); err != nil {
			t.Fatal(err)
		}
		n -= len(batch)
	}
}

func (env *checkpointEnv) checkpoint(t *testing.T, want int) {
	t.Helper()
	if n, err := env.maker.Checkpoint(t.Context()); err != nil || n != want {
		t.Fatalf("checkpoint: wrote %d, %v; want %d", n, err, want)
	}
}

func (env *checkpointEnv) verify(t *testing.T) (audit.AuditVerification, error) {
	t.Helper()
	return audit.VerifyAudit(t.Context(), env.db.Audit(), env.verifier)
}

func wantBroken(t *testing.T, err error, seq int64, why string) {
	t.Helper()
	var broken *audit.AuditBrokenError
	if !errors.As(err, &broken) {
		t.Fatalf("verify: got %v, want an AuditBrokenError at entry %d", err, seq)
	}
	if broken.Seq != seq || !strings.Contains(broken.Why, why) {
		t.Errorf("verify: got %v, want a break at entry %d (%s)", err, seq, why)
	}
}

func testAuditCheckpointsClean(t *testing.T, b backend) {
	env := newCheckpointEnv(t, b, 0)
	v, err := env.verify(t)
	if err != nil || v.Anchored() || v.Unanchored != "no checkpoints yet" {
		t.Errorf("an empty log with no checkpoint: got %+v, %v; want not anchored, no checkpoints yet", v, err)
	}
	env.checkpoint(t, 0) // the head has not moved: nothing to sign
	env.append(t, 12)
	if v, err := env.verify(t); err != nil || v.Anchored() || v.Entries != 12 {
		t.Errorf("before the first checkpoint: got %+v, %v; want 12 entries, not anchored", v, err)
	}
	env.checkpoint(t, 1)
	env.checkpoint(t, 0)
	env.append(t, 3)
	env.checkpoint(t, 1)
	env.append(t, 2)
	v, err = env.verify(t)
	if err != nil {
		t.Fatalf("verify a clean log: %v", err)
	}
	if !v.Anchored() || v.Checkpoints != 2 || v.Newest.Seq != 15 || v.Newest.From != 13 || v.Entries != 17 ||
		v.SinceCheckpoint() != 2 || v.Newest.KeyID != env.online.KeyID() || v.Unanchored != "" {
		t.Errorf("verify a clean log: got %+v (newest %+v), want 17 entries, 2 checkpoints, the newest of 13-15, 2 since", v, v.Newest)
	}
	if _, err := env.blobs.Stat(t.Context(), "audit/checkpoints/00000000000000000015.json"); err != nil {
		t.Errorf("the newest checkpoint's object: %v", err)
	}

	// A log that outgrew one checkpoint between two passes gets several.
	env.maker.Entries = 5
	env.append(t, 10)
	env.checkpoint(t, 3)
	v, err = env.verify(t)
	if err != nil || v.Checkpoints != 5 || v.Newest.Seq != 27 || v.Newest.From != 26 || v.SinceCheckpoint() != 0 {
		t.Errorf("after 10 more: got %+v, %v; want 5 checkpoints, the newest of 26-27", v, err)
	}
	// A replica that takes the lease over goes on from the store.
	env.append(t, 1)
	other := &audit.AuditCheckpoints{Blobs: env.blobs, Signer: env.online.Signer(), Log: env.db.Audit(), Keys: trust(env.online)}
	if n, err := other.Checkpoint(t.Context()); err != nil || n != 1 {
		t.Errorf("another replica's checkpoint: wrote %d, %v; want 1", n, err)
	}
	if v, err := env.verify(t); err != nil || v.Checkpoints != 6 || v.Newest.From != 28 {
		t.Errorf("after another replica's checkpoint: got %+v, %v", v, err)
	}
}

// The rewrites, as the probe made them: raw SQL, with every hash after
// the change and the head recomputed.
func testAuditCheckpointRewrites(t *testing.T, b backend) {
	for _, tc := range []struct {
		name    string
		rewrite func(t *testing.T, db *DB)
		wantSeq int64
		wantWhy string
	}{
		{"EditAndRechain", func(t *testing.T, db *DB) {
			exec(t, db, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 7")
			rechain(t, db, 7)
		}, 7, "its hash differs from the one checkpoint 20"},
		{"DeleteRenumberRechain", func(t *testing.T, db *DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq = 7")
			for s := 8; s <= 20; s++ {
				exec(t, db, "UPDATE audit_log SET seq = ? WHERE seq = ?", s-1, s)
			}
			rechain(t, db, 7)
		}, 7, "its hash differs from the one checkpoint 20"},
		{"CutTheEndMoveTheHead", func(t *testing.T, db *DB) {
			exec(t, db, "DELETE FROM audit_log WHERE seq > 15")
			exec(t, db, "UPDATE audit_head SET seq = 15, hash = (SELECT hash FROM audit_log WHERE seq = 15) WHERE id = 1")
		}, 16, "the log ends at entry 15 but checkpoint 20"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newCheckpointEnv(t, b, 20)
			env.checkpoint(t, 1)
			if v, err := env.verify(t); err != nil || !v.Anchored() || v.Entries != 20 {
				t.Fatalf("before the rewrite: got %+v, %v", v, err)
			}
			tc.rewrite(t, env.db)
			// The chain alone does not show it: that is the finding.
			if _, err := audit.VerifyAudit(t.Context(), env.db.Audit(), nil); err != nil {
				t.Fatalf("the rewrite left a broken chain (%v): it does not replay the probe's", err)
			}
			_, err := env.verify(t)
			wantBroken(t, err, tc.wantSeq, tc.wantWhy)
		})
	}
}

// exec runs one statement on the database as its administrator would.
func exec(t *testing.T, db *DB, sql string, args ...any) {
	t.Helper()
	if err := db.gorm.WithContext(t.Context()).Exec(sql, args...).Error; err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// rechain recomputes the links and hashes of the entries from seq on,
// and the head, as someone who knows audit.AuditHash (it is public)
// would after changing the log.
func rechain(t *testing.T, db *DB, from int64) {
	t.Helper()
	var rows []auditRow
	if err := db.gorm.WithContext(t.Context()).Order("seq").Find(&rows).Error; err != nil {
		t.Fatal(err)
	}
	prev := audit.AuditGenesis
	for _, r := range rows {
		e := r.entry()
		if e.Seq >= from {
			e.PrevHash = prev
			e.Hash = audit.AuditHash(e)
			exec(t, db, "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", e.PrevHash, e.Hash, e.Seq)
		}
		prev = e.Hash
	}
	exec(t, db, "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", rows[len(rows)-1].Seq, prev)
}

// A checkpoint signed by a key no root lists is refused, and so is
// anything else written under the checkpoints' prefix.
func testAuditCheckpointForged(t *testing.T, b backend) {
	env := newCheckpointEnv(t, b, 20)
	env.checkpoint(t, 1)
	env.append(t, 3)
	rogue, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	forger := &audit.AuditCheckpoints{Blobs: env.blobs, Signer: rogue.Signer(), Log: env.db.Audit(), Keys: trust(env.online, rogue)}
	if n, err := forger.Checkpoint(t.Context()); err != nil || n != 1 {
		t.Fatalf("forge: wrote %d, %v", n, err)
	}
	_, err = env.verify(t)
	wantBroken(t, err, 23, "is not signed by a timestamp key of any published root")

	env2 := newCheckpointEnv(t, b, 2)
	env2.checkpoint(t, 1)
	if _, err := env2.blobs.Put(t.Context(), audit.AuditCheckpointPrefix+"notes.txt", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	_, err = env2.verify(t)
	wantBroken(t, err, 0, "is not named as the server names checkpoints")
}

// The checkpoint job does not vouch for a log rewritten under its last
// checkpoint: it refuses to sign, naming where the log broke.
func testAuditCheckpointRefusesRewrite(t *testing.T, b backend) {
	env := newCheckpointEnv(t, b, 20)
	env.checkpoint(t, 1)
	exec(t, env.db, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
	rechain(t, env.db, 4)
	env.append(t, 2)
	n, err := env.maker.Checkpoint(t.Context())
	if n != 0 {
		t.Errorf("checkpoint of a rewritten log: wrote %d, want none", n)
	}
	wantBroken(t, err, 21, "does not match checkpoint 20")
	_, err = env.verify(t)
	wantBroken(t, err, 4, "its hash differs from the one checkpoint 20")
}
