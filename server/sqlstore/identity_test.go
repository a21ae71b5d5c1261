package sqlstore

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// TestIdentityStores runs the user, session, token and audit store
// suite against SQLite and, when OTA_TEST_POSTGRES_DSN is set,
// PostgreSQL, each test on a fresh, migrated database.
func TestIdentityStores(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"Users", testUsers},
		{"UserUpdatesOfUnknown", testUserUpdatesOfUnknown},
		{"DisableEndsSessions", testDisableEndsSessions},
		{"Sessions", testSessions},
		{"SessionService", testSessionService},
		{"Tokens", testTokens},
		{"AuditAppendConcurrent", testAuditAppendConcurrent},
		{"AuditTampering", testAuditTampering},
		{"AuditList", testAuditList},
		{"RolloutEventsAudited", testRolloutEventsAudited},
		{"MigrationBackfill", testMigrationBackfill},
	})
}

func mustDB(t testing.TB, b backend) *DB {
	t.Helper()
	db := mustOpen(t, b.newDSN(t))
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db
}

func mustUser(t testing.TB, db *DB, name, role string, service bool) *identity.User {
	t.Helper()
	u := &identity.User{ID: "u-" + name, Name: name, Role: role, Service: service, CreatedAt: t0}
	hash := ""
	if !service {
		hash = "hash-of-" + name
	}
	if err := db.Users().CreateUser(t.Context(), u, hash); err != nil {
		t.Fatalf("create user %s: %v", name, err)
	}
	return u
}

func testUsers(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	s := db.Users()
	alice := mustUser(t, db, "alice", identity.RoleAdmin, false)
	mustUser(t, db, "ci", identity.RoleOperator, true)

	if err := s.CreateUser(ctx, &identity.User{ID: "u-other", Name: "alice", Role: identity.RoleViewer, CreatedAt: t0}, "x"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a second alice: got %v, want ErrConflict", err)
	}
	if err := s.CreateUser(ctx, &identity.User{ID: alice.ID, Name: "alice2", Role: identity.RoleViewer, CreatedAt: t0}, "x"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a taken id: got %v, want ErrConflict", err)
	}
	u, hash, err := s.UserByName(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	want := &identity.User{ID: "u-alice", Name: "alice", Role: identity.RoleAdmin, CreatedAt: µs(t0)}
	if *u != *want || hash != "hash-of-alice" {
		t.Errorf("alice: got %+v %q, want %+v %q", u, hash, want, "hash-of-alice")
	}
	ci, hash, err := s.UserByName(ctx, "ci")
	if err != nil || !ci.Service || hash != "" {
		t.Errorf("ci: got %+v %q %v, want a service account without hash", ci, hash, err)
	}
	if _, _, err := s.UserByName(ctx, "nobody"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown name: got %v, want ErrNotFound", err)
	}
	if _, err := s.UserByID(ctx, "u-nobody"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown id: got %v, want ErrNotFound", err)
	}

	if err := s.SetUserRole(ctx, alice.ID, identity.RoleViewer); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword(ctx, alice.ID, "new-hash", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUserDisabled(ctx, alice.ID, true); err != nil {
		t.Fatal(err)
	}
	u, hash, err = s.UserByName(ctx, "alice")
	if err != nil || u.Role != identity.RoleViewer || !u.Disabled || hash != "new-hash" {
		t.Errorf("alice after changes: got %+v %q %v, want a disabled viewer with the new hash", u, hash, err)
	}
	if u, err := s.UserByID(ctx, alice.ID); err != nil || u.Name != "alice" {
		t.Errorf("by id: got %+v %v", u, err)
	}
	list, err := s.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range list {
		names = append(names, u.Name)
	}
	if !slices.Equal(names, []string{"alice", "ci"}) {
		t.Errorf("list: got %v, want [alice ci]", names)
	}
}

func testUserUpdatesOfUnknown(t *testing.T, b backend) {
	s := mustDB(t, b).Users()
	ctx := t.Context()
	for name, f := range map[string]func() error{
		"SetUserRole":     func() error { return s.SetUserRole(ctx, "u-none", identity.RoleAdmin) },
		"SetPassword":     func() error { return s.SetPassword(ctx, "u-none", "h", "") },
		"SetUserDisabled": func() error { return s.SetUserDisabled(ctx, "u-none", true) },
		"Enable":          func() error { return s.SetUserDisabled(ctx, "u-none", false) },
	} {
		if err := f(); !errors.Is(err, errs.ErrNotFound) {
			t.Errorf("%s of an unknown user: got %v, want ErrNotFound", name, err)
		}
	}
}

func newSession(user string, at time.Time) *identity.Session {
	return &identity.Session{UserID: user, CSRFToken: "csrf-" + user, CreatedAt: at, LastSeen: at}
}

func testDisableEndsSessions(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	alice := mustUser(t, db, "alice", identity.RoleAdmin, false)
	bob := mustUser(t, db, "bob", identity.RoleAdmin, false)
	ss := db.Sessions()
	for _, h := range []string{"a1", "a2"} {
		if err := ss.CreateSession(ctx, newSession(alice.ID, t0), h); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.CreateSession(ctx, newSession(bob.ID, t0), "b1"); err != nil {
		t.Fatal(err)
	}
	if err := db.Users().SetUserDisabled(ctx, alice.ID, true); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, db, "sessions", "user_id = ?", alice.ID); n != 0 {
		t.Errorf("alice's sessions after disable: got %d, want 0", n)
	}
	if _, _, err := ss.SessionByHash(ctx, "b1"); err != nil {
		t.Errorf("bob's session after alice's disable: %v", err)
	}
	if err := db.Users().SetUserDisabled(ctx, alice.ID, false); err != nil {
		t.Fatal(err)
	}
	if u, _ := db.Users().UserByID(ctx, alice.ID); u == nil || u.Disabled {
		t.Errorf("alice after enable: got %+v, want enabled", u)
	}
}

func testSessions(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)
	ss := db.Sessions()
	if err := ss.CreateSession(ctx, newSession(alice.ID, t0), "h1"); err != nil {
		t.Fatal(err)
	}
	if err := ss.CreateSession(ctx, newSession(alice.ID, t0), "h1"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a taken hash: got %v, want ErrConflict", err)
	}
	if err := ss.CreateSession(ctx, newSession("u-none", t0), "h2"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("a session of an unknown user: got %v, want ErrNotFound", err)
	}
	s, u, err := ss.SessionByHash(ctx, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if *s != *newSession(alice.ID, µs(t0)) || u.Name != "alice" || u.Role != identity.RoleOperator || u.ID != alice.ID {
		t.Errorf("session: got %+v of %+v", s, u)
	}
	later := t0.Add(5 * time.Minute)
	if err := ss.TouchSession(ctx, "h1", later); err != nil {
		t.Fatal(err)
	}
	if s, _, _ := ss.SessionByHash(ctx, "h1"); s == nil || !s.LastSeen.Equal(µs(later)) || !s.CreatedAt.Equal(µs(t0)) {
		t.Errorf("after touch: got %+v, want last seen %s", s, later)
	}
	if err := ss.TouchSession(ctx, "none", later); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("touch unknown: got %v, want ErrNotFound", err)
	}
	if _, _, err := ss.SessionByHash(ctx, "none"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("look up unknown: got %v, want ErrNotFound", err)
	}
	if err := ss.DeleteSession(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if err := ss.DeleteSession(ctx, "h1"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("delete twice: got %v, want ErrNotFound", err)
	}

	// Prune: idle ones by last_seen, old ones by created_at.
	for _, s := range []struct {
		hash              string
		created, lastSeen time.Time
	}{
		{"fresh", t0.Add(-time.Hour), t0},
		{"idle", t0.Add(-time.Hour), t0.Add(-31 * time.Minute)},
		{"old", t0.Add(-13 * time.Hour), t0},
	} {
		if err := ss.CreateSession(ctx, &identity.Session{UserID: alice.ID, CSRFToken: "c", CreatedAt: s.created, LastSeen: s.lastSeen}, s.hash); err != nil {
			t.Fatal(err)
		}
	}
	n, err := ss.DeleteSessionsBefore(ctx, t0.Add(-30*time.Minute), t0.Add(-12*time.Hour))
	if err != nil || n != 2 {
		t.Errorf("prune: got %d %v, want 2", n, err)
	}
	if _, _, err := ss.SessionByHash(ctx, "fresh"); err != nil {
		t.Errorf("the fresh session after prune: %v", err)
	}
}

// testSessionService runs identity.Sessions on the store: start, look up,
// idle expiry, end.
func testSessionService(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)
	now := t0
	svc := identity.Sessions{Store: db.Sessions(), Now: func() time.Time { return now }}
	secret, _, err := svc.Start(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, u, err := svc.Lookup(ctx, secret); err != nil || u.ID != alice.ID {
		t.Fatalf("lookup: got %+v %v", u, err)
	}
	now = now.Add(10 * time.Minute)
	if _, _, err := svc.Lookup(ctx, secret); err != nil {
		t.Fatalf("lookup after 10 minutes: %v", err)
	}
	now = now.Add(29 * time.Minute) // 29 minutes after the touch at 10
	if _, _, err := svc.Lookup(ctx, secret); err != nil {
		t.Errorf("lookup 29 minutes after the last: %v", err)
	}
	now = now.Add(31 * time.Minute)
	if _, _, err := svc.Lookup(ctx, secret); !errors.Is(err, identity.ErrSessionExpired) {
		t.Errorf("lookup after 31 idle minutes: got %v, want ErrSessionExpired", err)
	}
	secret, _, err = svc.Start(ctx, alice)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.End(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.Lookup(ctx, secret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("lookup after end: got %v, want ErrUnauthorized", err)
	}
}

func testTokens(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users(), Now: func() time.Time { return t0 }}
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)

	ciTok, ciSecret, err := tokens.Create(ctx, "ci", identity.RoleReleaseEngineer)
	if err != nil {
		t.Fatal(err)
	}
	ci, _, err := db.Users().UserByName(ctx, "ci")
	if err != nil || !ci.Service || ci.Role != identity.RoleReleaseEngineer || ciTok.UserID != ci.ID {
		t.Fatalf("service account of ci: got %+v %v (token user %s)", ci, err, ciTok.UserID)
	}
	if _, _, err := tokens.Create(ctx, "ci", identity.RoleReleaseEngineer); err != nil {
		t.Errorf("a second token of ci: %v", err)
	}
	if _, _, err := tokens.Create(ctx, "ci", identity.RoleViewer); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("ci with another role: got %v, want ErrConflict", err)
	}
	if _, _, err := tokens.Create(ctx, "alice", identity.RoleOperator); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a service token named as a person: got %v, want ErrConflict", err)
	}
	aliceTok, aliceSecret, err := tokens.CreateFor(ctx, alice, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Tokens().CreateToken(ctx, &identity.Token{ID: "t-x", Name: "x", UserID: "u-none", CreatedAt: t0}, "hx"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("a token of an unknown user: got %v, want ErrNotFound", err)
	}

	tok, u, err := db.Tokens().TokenByHash(ctx, identity.HashToken(aliceSecret))
	if err != nil {
		t.Fatal(err)
	}
	aliceTok.CreatedAt = µs(aliceTok.CreatedAt)
	if *tok != *aliceTok || u.ID != alice.ID || u.Name != "alice" || u.Role != identity.RoleOperator || u.Service || u.Disabled {
		t.Errorf("alice's token: got %+v of %+v, want %+v of alice", tok, u, aliceTok)
	}
	if _, _, err := db.Tokens().TokenByHash(ctx, "none"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown hash: got %v, want ErrNotFound", err)
	}

	for _, tc := range []struct {
		user string
		want []string
	}{
		{"", []string{"ci", "ci", "laptop"}},
		{ci.ID, []string{"ci", "ci"}},
		{alice.ID, []string{"laptop"}},
		{"u-none", nil},
	} {
		list, err := db.Tokens().ListTokens(ctx, tc.user)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, t := range list {
			got = append(got, t.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("tokens of %q: got %v, want %v", tc.user, got, tc.want)
		}
	}

	// The token acts with the user's current role, and not at all once
	// the user is disabled.
	p, err := tokens.Authenticate(ctx, aliceSecret)
	if err != nil || p.Actor() != "alice" || !p.Can(identity.PermRolloutChange) || p.TokenID != aliceTok.ID {
		t.Fatalf("authenticate alice: got %+v %v", p, err)
	}
	if err := db.Users().SetUserRole(ctx, alice.ID, identity.RoleViewer); err != nil {
		t.Fatal(err)
	}
	if p, err := tokens.Authenticate(ctx, aliceSecret); err != nil || p.Can(identity.PermRolloutChange) {
		t.Errorf("alice as viewer: got %+v %v, want a principal that cannot change rollouts", p, err)
	}
	if err := db.Users().SetUserDisabled(ctx, alice.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Authenticate(ctx, aliceSecret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("token of a disabled user: got %v, want ErrUnauthorized", err)
	}
	if _, _, err := tokens.CreateFor(ctx, &identity.User{ID: alice.ID, Name: "alice", Disabled: true}, "more"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("a token for a disabled user: got %v, want ErrConflict", err)
	}
	if err := db.Tokens().RevokeToken(ctx, ciTok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Authenticate(ctx, ciSecret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("a revoked token: got %v, want ErrUnauthorized", err)
	}
	if err := db.Tokens().RevokeToken(ctx, ciTok.ID); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("revoke twice: got %v, want ErrNotFound", err)
	}
}

func entry(i int) audit.AuditEntry {
	return audit.AuditEntry{At: t0.Add(time.Duration(i) * time.Second), Actor: fmt.Sprintf("actor-%d", i%3),
		Action: "user.create", Object: fmt.Sprintf("user-%d", i), Reason: "because", Detail: `{"n":1}`}
}

func mustVerify(t testing.TB, db *DB) audit.AuditVerification {
	t.Helper()
	v, err := audit.VerifyAudit(t.Context(), db.Audit(), nil)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return v
}

// testAuditAppendConcurrent appends from 8 goroutines at once, single
// entries and batches: the chain must come out whole.
func testAuditAppendConcurrent(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	const workers, appends = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*appends)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range appends {
				es := []audit.AuditEntry{entry(w*100 + i)}
				if i%3 == 0 {
					es = append(es, entry(w*100+i+50))
				}
				if err := db.Audit().AppendAudit(ctx, es...); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("append: %v", err)
	}
	want := int64(workers * (appends + 4)) // i = 0, 3, 6, 9 append two
	v := mustVerify(t, db)
	if v.Entries != want || len(v.HeadHash) != 64 {
		t.Errorf("verify: got %+v, want %d entries and a head", v, want)
	}
	list, err := db.Audit().ListAudit(ctx, audit.AuditQuery{Limit: 1})
	if err != nil || len(list) != 1 || list[0].Seq != want || list[0].Hash != v.HeadHash {
		t.Errorf("newest entry: got %+v %v, want seq %d with the head hash", list, err, want)
	}
}

func testAuditTampering(t *testing.T, b backend) {
	for _, tc := range []struct {
		name    string
		sql     string
		wantSeq int64
		wantWhy string
	}{
		{"EditReason", "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3", 3, "edited"},
		{"EditActor", "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1", 1, "edited"},
		{"DeleteMiddle", "DELETE FROM audit_log WHERE seq = 3", 3, "missing"},
		{"DeleteLast", "DELETE FROM audit_log WHERE seq = 5", 5, "removed from the end"},
		{"DeleteAll", "DELETE FROM audit_log", 1, "removed from the end"},
		{"ReplaceLink", "UPDATE audit_log SET prev_hash = hash WHERE seq = 4", 4, "link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := mustDB(t, b)
			ctx := t.Context()
			for i := range 5 {
				if err := db.Audit().AppendAudit(ctx, entry(i)); err != nil {
					t.Fatal(err)
				}
			}
			if v := mustVerify(t, db); v.Entries != 5 {
				t.Fatalf("before tampering: got %d entries, want 5", v.Entries)
			}
			if err := db.gorm.WithContext(ctx).Exec(tc.sql).Error; err != nil {
				t.Fatal(err)
			}
			_, err := audit.VerifyAudit(ctx, db.Audit(), nil)
			var broken *audit.AuditBrokenError
			if !errors.As(err, &broken) {
				t.Fatalf("verify after %s: got %v, want an AuditBrokenError", tc.sql, err)
			}
			if broken.Seq != tc.wantSeq || !strings.Contains(broken.Why, tc.wantWhy) {
				t.Errorf("verify after %s: got %v, want a break at %d (%s)", tc.sql, err, tc.wantSeq, tc.wantWhy)
			}
		})
	}
}

func testAuditList(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	var all []audit.AuditEntry
	for i, a := range []struct{ actor, action, object string }{
		{"alice", "rollout.create", "ro_1"},
		{"bob", "rollout.pause", "ro_1"},
		{"alice", "user.create", "carol"},
		{"alice", "rollouts.weird", "x"},
		{"system", "rollout.halt", "ro_2"},
		{"bob", "rollout", "ro_3"},
	} {
		e := audit.AuditEntry{At: t0.Add(time.Duration(i) * time.Minute), Actor: a.actor, Action: a.action, Object: a.object}
		all = append(all, e)
		if err := db.Audit().AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// Filler to check the limits.
	for range 11 {
		es := make([]audit.AuditEntry, 100)
		for i := range es {
			es[i] = audit.AuditEntry{At: t0.Add(time.Hour), Actor: "filler", Action: "filler.x"}
		}
		if err := db.Audit().AppendAudit(ctx, es...); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		q    audit.AuditQuery
		want []int64
		n    int
	}{
		{name: "Actor", q: audit.AuditQuery{Actor: "alice"}, want: []int64{4, 3, 1}},
		{name: "Action", q: audit.AuditQuery{Action: "rollout.pause"}, want: []int64{2}},
		{name: "ActionPrefix", q: audit.AuditQuery{Action: "rollout."}, want: []int64{5, 2, 1}},
		{name: "Object", q: audit.AuditQuery{Object: "ro_1"}, want: []int64{2, 1}},
		{name: "SinceUntil", q: audit.AuditQuery{Since: t0.Add(time.Minute), Until: t0.Add(3 * time.Minute)}, want: []int64{3, 2}},
		{name: "Before", q: audit.AuditQuery{Before: 3, Actor: "alice"}, want: []int64{1}},
		{name: "ActorLimit", q: audit.AuditQuery{Actor: "bob", Limit: 1}, want: []int64{6}},
		{name: "DefaultLimit", q: audit.AuditQuery{}, n: 100},
		{name: "MaxLimit", q: audit.AuditQuery{Limit: 5000}, n: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := db.Audit().ListAudit(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if len(got) != tc.n || got[0].Seq != 1106 {
					t.Errorf("got %d entries from %d, want %d from 1106", len(got), got[0].Seq, tc.n)
				}
				return
			}
			var seqs []int64
			for _, e := range got {
				seqs = append(seqs, e.Seq)
			}
			if !slices.Equal(seqs, tc.want) {
				t.Errorf("got %v, want %v", seqs, tc.want)
			}
		})
	}
	got, err := db.Audit().ListAudit(ctx, audit.AuditQuery{Object: "carol"})
	if err != nil || len(got) != 1 {
		t.Fatalf("carol: got %+v %v", got, err)
	}
	want := all[2]
	want.Chain(&audit.AuditEntry{Seq: 2, Hash: got[0].PrevHash})
	if got[0] != want {
		t.Errorf("entry read back:\n got %+v\nwant %+v", got[0], want)
	}
}

// testRolloutEventsAudited: every rollout event is in the audit log, in
// the same transaction, and a refused update writes neither.
func testRolloutEventsAudited(t *testing.T, b backend) {
	db, _, s := mustRollouts(t, b)
	ctx := t.Context()
	r := mustCreateRollout(t, s, "ro_1")
	ev, err := r.Start("bob", "go", t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRollout(ctx, r, 1, []rollout.Event{ev}); err != nil {
		t.Fatal(err)
	}
	// A stale update: no event, no audit entry.
	if err := s.UpdateRollout(ctx, r, 1, []rollout.Event{ev}); !errors.Is(err, errs.ErrConflict) {
		t.Fatalf("stale update: got %v, want ErrConflict", err)
	}
	got, err := db.Audit().ListAudit(ctx, audit.AuditQuery{Action: "rollout."})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Action != "rollout.start" || got[1].Action != "rollout.create" {
		t.Fatalf("audit: got %+v, want start then create", got)
	}
	start := got[0]
	if start.Actor != "bob" || start.Object != "ro_1" || start.Reason != "go" || !start.At.Equal(µs(t0.Add(time.Minute))) ||
		!strings.Contains(start.Detail, `"from_state":"draft"`) || !strings.Contains(start.Detail, `"to_state":"running"`) {
		t.Errorf("start entry: got %+v", start)
	}
	if v := mustVerify(t, db); v.Entries != 2 {
		t.Errorf("verify: got %d entries, want 2", v.Entries)
	}

	// An audit append that fails rolls the rollout change back.
	var fail atomic.Bool
	if err := db.gorm.Callback().Create().Before("gorm:create").Register("test:fail_audit", func(tx *gorm.DB) {
		if fail.Load() && tx.Statement.Table == "audit_log" {
			tx.AddError(errors.New("injected: audit not written"))
		}
	}); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	pause, err := r.Pause("bob", "wait", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateRollout(ctx, r, r.Version, []rollout.Event{pause}); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("update with a failing audit: got %v, want the injected error", err)
	}
	if got := mustRollout(t, s, "ro_1"); got.State != rollout.RolloutRunning {
		t.Errorf("after the failed update: state %s, want running", got.State)
	}
	if evs := mustEvents(t, s, "ro_1", 0); len(evs) != 2 {
		t.Errorf("events after the failed update: got %d, want 2", len(evs))
	}
}

// testMigrationBackfill applies migrations 1-7, writes what an older
// otad wrote (tokens with roles and repeated names, rollout events),
// applies 8 and checks the service accounts and the audit log.
func testMigrationBackfill(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	ctx := t.Context()
	mustMigrate(t, db, migrations[:7])
	g := db.gorm.WithContext(ctx)
	old := []struct{ id, name, role string }{
		{"t-1", "ci", identity.RoleOperator},
		{"t-2", "ci", identity.RoleViewer},
		{"t-3", "Release Bot", identity.RoleReleaseEngineer},
		{"t-4", "ci-2", identity.RoleViewer},
	}
	for i, tok := range old {
		if err := g.Exec("INSERT INTO api_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
			tok.id, tok.name, tok.role, "hash-"+tok.id, dbTime(t0.Add(time.Duration(i)*time.Second))).Error; err != nil {
			t.Fatal(err)
		}
	}
	// Rollout events as migration 7's schema holds them, out of id
	// order by time, several at one instant.
	var evs []rollout.Event
	for _, id := range []string{"ro_a", "ro_b"} {
		r, create := newDraft(t, id)
		row, err := toRolloutRow(r, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Create(row).Error; err != nil {
			t.Fatal(err)
		}
		evs = append(evs, create)
	}
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	evs = append(evs,
		rollout.Event{RolloutID: "ro_b", At: at(5), Actor: "bob", Action: rollout.ActionPause, Reason: "late"},
		rollout.Event{RolloutID: "ro_a", At: at(2), Actor: "alice", Action: rollout.ActionStart, Reason: "go",
			FromState: rollout.RolloutDraft, ToState: rollout.RolloutRunning, FromPercent: 1, ToPercent: 1},
		rollout.Event{RolloutID: "ro_a", At: at(2), Actor: "system", Action: rollout.ActionAdvance, Reason: "soaked",
			FromPercent: 1, ToPercent: 10},
		rollout.Event{RolloutID: "ro_b", At: at(3), Actor: "bob", Action: rollout.ActionStart, Reason: "go"},
	)
	for _, ev := range evs {
		rows, err := eventRows(ev.RolloutID, []rollout.Event{ev})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Create(&rows).Error; err != nil {
			t.Fatal(err)
		}
	}

	// Migration 8 with a small batch, so that the back-fill's keyset
	// crosses batches, at one instant too.
	list := slices.Clone(migrations)
	list[7].Data = func(tx *gorm.DB, _ string) error {
		if err := backfillTokenUsers(tx); err != nil {
			return err
		}
		return backfillRolloutAudit(tx, 2)
	}
	mustMigrate(t, db, list)

	wantUsers := map[string]struct{ name, role string }{
		"t-1": {"ci", identity.RoleOperator},
		"t-2": {"ci-2", identity.RoleViewer},
		"t-3": {"release-bot", identity.RoleReleaseEngineer},
		"t-4": {"ci-2-2", identity.RoleViewer},
	}
	for _, tok := range old {
		tk, u, err := db.Tokens().TokenByHash(ctx, "hash-"+tok.id)
		if err != nil {
			t.Fatalf("token %s: %v", tok.id, err)
		}
		w := wantUsers[tok.id]
		if tk.Name != tok.name || u.Name != w.name || u.Role != w.role || !u.Service || u.Disabled {
			t.Errorf("token %s: got %+v of %+v, want of service account %s (%s)", tok.id, tk, u, w.name, w.role)
		}
		if err := identity.ValidateUser(u.Name, u.Role, "", true); err != nil {
			t.Errorf("service account %q: %v", u.Name, err)
		}
	}

	// The audit log is the events by (at, id): the two creates at t0,
	// then ro_a's start and advance at 2, ro_b's start at 3, its pause
	// at 5.
	var got []string
	if _, _, err := db.Audit().WalkAudit(ctx, func(e audit.AuditEntry) error {
		got = append(got, fmt.Sprintf("%d %s %s %s", e.Seq, e.Object, e.Action, e.Actor))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"1 ro_a rollout.create alice", "2 ro_b rollout.create alice", "3 ro_a rollout.start alice",
		"4 ro_a rollout.advance system", "5 ro_b rollout.start bob", "6 ro_b rollout.pause bob"}
	if !slices.Equal(got, want) {
		t.Errorf("audit log:\n got %q\nwant %q", got, want)
	}
	if v := mustVerify(t, db); v.Entries != 6 {
		t.Errorf("verify: got %d entries, want 6", v.Entries)
	}
	// New appends chain on.
	if err := db.Audit().AppendAudit(ctx, entry(1)); err != nil {
		t.Fatal(err)
	}
	if v := mustVerify(t, db); v.Entries != 7 {
		t.Errorf("verify after an append: got %d entries, want 7", v.Entries)
	}
}
