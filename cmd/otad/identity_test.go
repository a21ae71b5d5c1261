package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "github.com/glebarez/go-sqlite"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
)

// cli runs otad commands on one data directory.
type cli struct {
	tb  testing.TB
	env map[string]string
}

func newCLI(tb testing.TB) *cli {
	return &cli{tb: tb, env: map[string]string{"OTAD_DATA_DIR": tb.TempDir()}}
}

// run runs otad with args and returns its exit code and output.
func (c *cli) run(args ...string) (int, string, string) {
	c.tb.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return c.env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// mustRun runs otad with args and fails the test unless it exits 0.
func (c *cli) mustRun(args ...string) string {
	c.tb.Helper()
	code, stdout, stderr := c.run(args...)
	if code != exitOK {
		c.tb.Fatalf("otad %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

// db opens the CLI's database, as the commands do.
func (c *cli) db() *sqlstore.DB {
	c.tb.Helper()
	db, err := sqlstore.Open(context.Background(), "sqlite:"+filepath.Join(c.env["OTAD_DATA_DIR"], "otad.db"), sqlstore.Options{})
	if err != nil {
		c.tb.Fatal(err)
	}
	c.tb.Cleanup(func() { db.Close() })
	return db
}

func TestUserCommands(t *testing.T) {
	c := newCLI(t)
	c.env[userPasswordEnv] = "correct horse battery"
	if out := c.mustRun("user", "create", "alice", "--role", "operator"); !strings.Contains(out, "created user alice (operator)") {
		t.Errorf("user create: got %q", out)
	}
	delete(c.env, userPasswordEnv)
	// No terminal and no variable: no password, nothing created.
	if code, _, stderr := c.run("user", "create", "bob", "--role", "viewer"); code != exitFailed || !strings.Contains(stderr, userPasswordEnv) {
		t.Errorf("user create without a password: exit %d %q, want 1 naming %s", code, stderr, userPasswordEnv)
	}
	c.mustRun("user", "create", "--role", "release-engineer", "--service", "ci")
	if code, _, stderr := c.run("user", "create", "alice", "--role", "viewer", "--service"); code != exitFailed || !strings.Contains(stderr, "exists") {
		t.Errorf("a second alice: exit %d %q, want 1", code, stderr)
	}
	if code, _, _ := c.run("user", "create", "carol", "--service"); code != exitConfig {
		t.Errorf("user create without --role: exit %d, want %d", code, exitConfig)
	}
	c.mustRun("user", "set-role", "alice", "admin")
	if code, _, stderr := c.run("user", "set-role", "alice", "root"); code != exitFailed || !strings.Contains(stderr, "role") {
		t.Errorf("set-role to an unknown role: exit %d %q, want 1", code, stderr)
	}
	c.mustRun("user", "disable", "alice")
	out := c.mustRun("user", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("user list: got %q, want a header and two users", out)
	}
	for i, want := range [][]string{{"NAME", "ROLE", "KIND", "DISABLED", "CREATED"}, {"alice", "admin", "user", "yes"}, {"ci", "release-engineer", "service", "no"}} {
		if f := strings.Fields(lines[i]); len(f) < len(want) || !equalPrefix(f, want) {
			t.Errorf("user list line %d: got %q, want %q...", i, lines[i], want)
		}
	}
	if code, _, stderr := c.run("user", "disable", "nobody"); code != exitFailed || !strings.Contains(stderr, "no user nobody") {
		t.Errorf("disable an unknown user: exit %d %q", code, stderr)
	}

	// Tokens: of the service account, and of a user.
	secret := strings.TrimSpace(c.mustRun("token", "create", "ci", "--role", "release-engineer"))
	if !strings.HasPrefix(secret, "otad_") {
		t.Fatalf("token create: got %q, want a token", secret)
	}
	c.mustRun("user", "enable", "alice")
	c.mustRun("token", "create", "--user", "alice", "laptop")
	if code, _, stderr := c.run("token", "create", "alice", "--role", "admin"); code != exitFailed || !strings.Contains(stderr, "person's account") {
		t.Errorf("a service token named as a person: exit %d %q", code, stderr)
	}
	out = c.mustRun("token", "list", "--user", "alice")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !equalPrefix(strings.Fields(lines[0]), []string{"ID", "NAME", "USER", "ROLE", "CREATED", "EXPIRES", "STATE"}) {
		t.Fatalf("token list of alice: got %q, want a header and one token", out)
	}
	if f := strings.Fields(lines[1]); len(f) != 7 || !equalPrefix(f[1:], []string{"laptop", "alice", "admin"}) || f[6] != "active" {
		t.Errorf("token list of alice: got %q", lines[1])
	} else if exp, err := time.Parse(time.RFC3339, f[5]); err != nil || exp.Sub(time.Now()) < 89*24*time.Hour || exp.Sub(time.Now()) > 90*24*time.Hour {
		t.Errorf("the laptop token expires %q, want in 90 days", f[5])
	}
	// --expires: its own lifetime; a bad one is a usage error.
	c.mustRun("token", "create", "--user", "alice", "phone", "--expires", "7d")
	if code, _, stderr := c.run("token", "create", "--user", "alice", "tablet", "--expires", "forever"); code != exitConfig || !strings.Contains(stderr, "--expires") {
		t.Errorf("--expires forever: exit %d %q, want %d naming --expires", code, stderr, exitConfig)
	}
	for _, line := range strings.Split(c.mustRun("token", "list", "--user", "alice"), "\n") {
		if f := strings.Fields(line); len(f) == 7 && f[1] == "phone" {
			if exp, err := time.Parse(time.RFC3339, f[5]); err != nil || exp.Sub(time.Now()) > 7*24*time.Hour || exp.Sub(time.Now()) < 6*24*time.Hour {
				t.Errorf("the phone token expires %q, want in 7 days", f[5])
			}
		}
	}

	db := c.db()
	p, err := identity.Tokens{Store: db.Tokens(), Users: db.Users()}.Authenticate(t.Context(), secret)
	if err != nil || p.Actor() != "ci" || !p.Can(identity.PermReleaseChange) {
		t.Errorf("the ci token: got %+v %v", p, err)
	}
	entries, err := db.Audit().ListAudit(t.Context(), audit.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range entries {
		object := e.Object
		if strings.HasPrefix(e.Action, "token.") {
			if !strings.HasPrefix(object, "t-") {
				t.Errorf("entry %d: %s of %q, want a token id", e.Seq, e.Action, object)
			}
			object = "(id)"
		}
		detail := regexp.MustCompile(`"expires":"[^"]*",`).ReplaceAllString(e.Detail, "")
		actions = append(actions, strings.TrimSpace(e.Action+" "+object+" "+detail))
		if !strings.HasPrefix(e.Actor, "otad-cli") {
			t.Errorf("entry %d: actor %q, want otad-cli...", e.Seq, e.Actor)
		}
	}
	// The same entries as the admin API and the pages make for the same
	// changes (identity.UserCreatedEntry and the others).
	want := []string{`token.create (id) {"name":"phone","user":"alice"}`, `token.create (id) {"name":"laptop","user":"alice"}`, "user.enable alice",
		`token.create (id) {"name":"ci","user":"ci"}`, "user.disable alice",
		`user.set-role alice {"from":"operator","to":"admin"}`,
		`user.create ci {"kind":"service","role":"release-engineer"}`, `user.create alice {"kind":"user","role":"operator"}`}
	if strings.Join(actions, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit log:\n got %q\nwant %q", actions, want)
	}
}

// TestUserPasswordEndsSessions: otad user password logs the user out
// everywhere, and disable revokes the user's tokens for good.
func TestUserPasswordEndsSessions(t *testing.T) {
	c := newCLI(t)
	c.env[userPasswordEnv] = "correct horse battery"
	c.mustRun("user", "create", "alice", "--role", "operator")
	c.mustRun("token", "create", "--user", "alice", "laptop")
	db := c.db()
	u, _, err := db.Users().UserByName(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := (identity.Sessions{Store: db.Sessions()}).Start(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	c.env[userPasswordEnv] = "a brand new password"
	if out := c.mustRun("user", "password", "alice"); !strings.Contains(out, "set the password of alice") {
		t.Errorf("user password: got %q", out)
	}
	raw, err := sql.Open("sqlite", filepath.Join(c.env["OTAD_DATA_DIR"], "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var n int
	if err := raw.QueryRow("SELECT COUNT(*) FROM sessions").Scan(&n); err != nil || n != 0 {
		t.Errorf("sessions after the password change: %d %v, want 0", n, err)
	}
	c.mustRun("user", "disable", "alice")
	c.mustRun("user", "enable", "alice")
	if out := c.mustRun("token", "list", "--user", "alice"); !strings.Contains(out, "revoked") {
		t.Errorf("alice's token after disable and enable:\n%s\nwant it revoked", out)
	}
}

// TestListingsEscapeStoredText: a token named with a terminal escape, a
// newline, tabs and a bidi override is refused now; one stored before
// names were checked lists on one line with them written out, so a
// viewer who named a token cannot clear an admin's screen or forge a
// line under it.
func TestListingsEscapeStoredText(t *testing.T) {
	c := newCLI(t)
	c.env[userPasswordEnv] = "correct horse battery"
	c.mustRun("user", "create", "alice", "--role", "viewer")
	const name = "laptop\x1b[2J\nFORGED\tt-1\tadmin\u202e"
	code, _, stderr := c.run("token", "create", "--user", "alice", name)
	if code != exitFailed || !strings.Contains(stderr, "name:") || strings.ContainsAny(stderr, "\x1b\u202e") {
		t.Errorf("token create: exit %d, %q; want the name refused, not repeated", code, stderr)
	}
	db := c.db()
	u, _, err := db.Users().UserByName(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := db.Tokens().CreateToken(t.Context(), &identity.Token{ID: "t-old", Name: name, UserID: u.ID, CreatedAt: now,
		ExpiresAt: now.Add(time.Hour)}, "hash-of-an-old-token"); err != nil {
		t.Fatal(err)
	}
	out := c.mustRun("token", "list")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || strings.ContainsAny(out, "\x1b\u202e") ||
		!regexp.MustCompile(`  laptop\\x1b\[2J\\nFORGED\\tt-1\\tadmin\\u202e +alice +viewer `).MatchString(lines[1]) {
		t.Errorf("token list: got %q, want a header and one line with the name escaped", out)
	}
}

func TestAuditCommands(t *testing.T) {
	c := newCLI(t)
	if out := c.mustRun("audit", "verify"); !strings.HasPrefix(out, "audit log verified: 0 entries, nothing to anchor") {
		t.Errorf("verify an empty log: got %q", out)
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		c.mustRun("user", "create", name, "--role", "viewer", "--service")
	}
	// Nothing outside the database vouches for the log yet: not verified.
	code, _, stderr := c.run("audit", "verify")
	if code != exitFailed || !strings.Contains(stderr, "audit log chain intact (4 entries, head ") ||
		!strings.Contains(stderr, "not anchored: no checkpoints yet") {
		t.Errorf("verify with no checkpoint: exit %d %q, want 1, not anchored", code, stderr)
	}
	out := c.mustRun("audit", "list", "--limit", "2", "--action", "user.")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], "4 ") || !strings.Contains(lines[2], "user.create") {
		t.Errorf("audit list: got %q, want a header and entries 4 and 3", out)
	}
	if code, _, _ := c.run("audit", "list", "--help"); code != exitOK {
		t.Errorf("audit list --help: exit %d", code)
	}
	if code, _, stderr := c.run("audit", "checkpoint"); code != exitConfig || !strings.Contains(stderr, "online-key.json") {
		t.Errorf("checkpoint without an online key: exit %d %q, want %d naming the key file", code, stderr, exitConfig)
	}

	// The server's online key, and root v1 naming it, as otad serve and
	// the ceremony leave them.
	online := publishRoot(t, c.env["OTAD_DATA_DIR"])
	if out := c.mustRun("audit", "checkpoint"); out != "wrote 1 audit checkpoints\n" {
		t.Errorf("checkpoint: got %q", out)
	}
	out = c.mustRun("audit", "verify")
	if !strings.HasPrefix(out, "audit log verified: 4 entries, head ") || len(strings.Fields(out)[6]) != 65 ||
		!strings.Contains(out, "against 1 checkpoints, the newest checkpoint 4 (signed ") || !strings.Contains(out, "by key "+online.KeyID()[:8]+")") {
		t.Errorf("verify: got %q", out)
	}

	// What someone with write access to the database file could do:
	// edit entry 3, recompute every hash after it and the head.
	raw, err := sql.Open("sqlite", filepath.Join(c.env["OTAD_DATA_DIR"], "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := raw.ExecContext(t.Context(), q, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec("UPDATE audit_log SET object = 'z' WHERE seq = 3")
	es, err := c.db().Audit().ListAudit(t.Context(), audit.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	prev := audit.AuditGenesis
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		if e.Seq >= 3 {
			e.PrevHash = prev
			e.Hash = audit.AuditHash(e)
			exec("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", e.PrevHash, e.Hash, e.Seq)
		}
		prev = e.Hash
	}
	exec("UPDATE audit_head SET hash = ? WHERE id = 1", prev)
	code, _, stderr = c.run("audit", "verify")
	if code != exitFailed || !strings.Contains(stderr, "audit log broken at entry 3: its hash differs from the one checkpoint 4") {
		t.Errorf("verify after a rewrite: exit %d %q, want 1 naming entry 3 and checkpoint 4", code, stderr)
	}
	// Nor does the server sign what was appended after the rewrite.
	c.mustRun("user", "create", "e", "--role", "viewer", "--service")
	if code, _, stderr := c.run("audit", "checkpoint"); code != exitFailed || !strings.Contains(stderr, "not signing a broken log") {
		t.Errorf("checkpoint of a rewritten log: exit %d %q, want 1 refusing", code, stderr)
	}
}

// publishRoot writes the online key otad serve would make into dataDir
// and root v1 naming it into the filesystem blob store there, signed by
// a release engineer's key, and returns the online key.
func publishRoot(t *testing.T, dataDir string) *signing.PrivateKey {
	t.Helper()
	online, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.WriteUnencryptedKeyFile(filepath.Join(dataDir, "online-key.json"), online); err != nil {
		t.Fatal(err)
	}
	engineer, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	root := metadata.Root(time.Now().AddDate(1, 0, 0))
	for role, k := range map[string]*signing.PrivateKey{metadata.ROOT: engineer, metadata.TARGETS: engineer,
		metadata.SNAPSHOT: online, metadata.TIMESTAMP: online} {
		if err := root.Signed.AddKey(k.Public(), role); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.Sign(engineer.Signer()); err != nil {
		t.Fatal(err)
	}
	b, err := root.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := fsstore.New(filepath.Join(dataDir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blobs.Put(t.Context(), "tuf/1.root.json", bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return online
}

func equalPrefix(got, want []string) bool {
	for i := range want {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func TestAdminCommandsHelp(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{
		{"user", "--help"}, {"user", "create", "--help"}, {"user", "list", "--help"}, {"user", "set-role", "--help"},
		{"user", "password", "--help"}, {"token", "create", "--help"}, {"token", "--help"}, {"audit", "verify", "--help"},
		{"audit", "checkpoint", "--help"},
	} {
		if code, _, stderr := c.run(args...); code != exitOK || !strings.Contains(stderr, "Usage") {
			t.Errorf("otad %s: exit %d %q, want 0 and usage", strings.Join(args, " "), code, stderr)
		}
	}
	if code, _, _ := c.run("user", "frobnicate"); code != exitConfig {
		t.Errorf("unknown user command: exit %d, want %d", code, exitConfig)
	}
}

// createRollout creates a rollout through env and, when four eyes stop
// it (a start at 100%), approves it with the token of a second person,
// approver: the tests that need a rollout at 100% get one running.
func createRollout(tb testing.TB, env *apitest.Env, approver string, req wire.RolloutRequest) wire.Rollout {
	tb.Helper()
	var raw json.RawMessage
	if err := env.Do("POST", "/rollouts", req, &raw); err != nil {
		tb.Fatalf("create rollout: %v", err)
	}
	var ap wire.Approval
	if err := json.Unmarshal(raw, &ap); err == nil && ap.State == string(rollout.ApprovalPending) && ap.RolloutID != "" {
		second := &apitest.Env{URL: env.URL, Token: approver}
		var d wire.ApprovalDecision
		if err := second.Do("POST", "/rollouts/"+ap.RolloutID+"/approvals/"+ap.ID+"/approve",
			wire.RolloutActionRequest{Reason: "second pair of eyes"}, &d); err != nil {
			tb.Fatalf("approve rollout %s: %v", ap.RolloutID, err)
		}
		if d.Rollout == nil {
			tb.Fatalf("approve rollout %s: no rollout in the answer", ap.RolloutID)
		}
		return *d.Rollout
	}
	var ro wire.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil {
		tb.Fatalf("create rollout: %v", err)
	}
	return ro
}

// TestTokenCreateStreams: "otad token create" prints the token alone on
// stdout, so that TOKEN=$(otad token create ...) holds just the token,
// and its note on stderr says where the token went instead of ending in
// a colon that, in $(...), nothing follows.
func TestTokenCreateStreams(t *testing.T) {
	c := newCLI(t)
	code, stdout, stderr := c.run("token", "create", "ci", "--role", "release-engineer")
	if code != exitOK {
		t.Fatalf("token create: exit %d: %s", code, stderr)
	}
	if !regexp.MustCompile(`^otad_[^\s]+\n$`).MatchString(stdout) {
		t.Errorf("stdout: got %q, want the token alone on one line", stdout)
	}
	note := strings.TrimSpace(stderr)
	if !strings.Contains(note, "created token") || !strings.Contains(note, "standard output") || strings.HasSuffix(note, ":") {
		t.Errorf("stderr: got %q, want a note saying the token is on standard output, not ending in a colon", stderr)
	}
	if strings.Contains(stderr, strings.TrimSpace(stdout)) {
		t.Errorf("stderr repeats the token: %q", stderr)
	}
}
