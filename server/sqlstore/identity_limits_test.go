package sqlstore

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// TestIdentityLimits runs the checks of token expiry and lineage, the
// end of sessions on a password change, the revocation of tokens on
// disable and migration 11 on both databases.
func TestIdentityLimits(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"TokenExpiry", testTokenExpiry},
		{"TokenLineage", testTokenLineage},
		{"MintRacesRevoke", testMintRacesRevoke},
		{"DisableRevokesTokens", testDisableRevokesTokens},
		{"PasswordEndsSessions", testPasswordEndsSessions},
		{"MigrationIdentityLimits", testMigrationIdentityLimits},
	})
}

func testTokenExpiry(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	now := t0
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users(), Now: func() time.Time { return now }, Lifetime: 30 * 24 * time.Hour}
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)

	def, defSecret, err := tokens.CreateFor(ctx, alice, "default")
	if err != nil {
		t.Fatal(err)
	}
	_, shortSecret, err := tokens.Mint(ctx, alice, "short", identity.TokenOptions{Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if want := µs(t0.Add(30 * 24 * time.Hour)); !def.ExpiresAt.Equal(want) {
		t.Errorf("default lifetime: expires %s, want %s (Tokens.Lifetime)", def.ExpiresAt, want)
	}
	stored, _, err := db.Tokens().TokenByHash(ctx, identity.HashToken(shortSecret))
	if err != nil || !stored.ExpiresAt.Equal(µs(t0.Add(time.Hour))) {
		t.Fatalf("stored expiry: got %+v %v, want %s", stored, err, t0.Add(time.Hour))
	}
	for _, lifetime := range []time.Duration{-time.Hour, identity.MaxTokenLifetime + time.Hour} {
		if _, _, err := tokens.Mint(ctx, alice, "bad", identity.TokenOptions{Lifetime: lifetime}); !errors.Is(err, errs.ErrInvalid) {
			t.Errorf("lifetime %v: got %v, want ErrInvalid", lifetime, err)
		}
	}

	now = t0.Add(time.Hour - time.Second)
	if _, err := tokens.Authenticate(ctx, shortSecret); err != nil {
		t.Errorf("a second before expiry: %v", err)
	}
	now = t0.Add(time.Hour)
	if _, err := tokens.Authenticate(ctx, shortSecret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("at expiry: got %v, want ErrUnauthorized", err)
	}
	if _, err := tokens.Authenticate(ctx, defSecret); err != nil {
		t.Errorf("the default token an hour on: %v", err)
	}
	now = t0.Add(31 * 24 * time.Hour)
	if _, err := tokens.Authenticate(ctx, defSecret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("the default token after 31 days: got %v, want ErrUnauthorized", err)
	}
}

func testTokenLineage(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	now := t0
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users(), Now: func() time.Time { return now }}
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)

	parent, parentSecret, err := tokens.Mint(ctx, alice, "parent", identity.TokenOptions{Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	auth := func(secret string) *identity.Principal {
		t.Helper()
		p, err := tokens.Authenticate(ctx, secret)
		if err != nil {
			t.Fatalf("authenticate: %v", err)
		}
		return p
	}
	// A child asks for longer than its parent lives: it gets the
	// parent's expiry.
	child, childSecret, err := tokens.Mint(ctx, alice, "child", identity.TokenOptions{Lifetime: 30 * 24 * time.Hour, By: auth(parentSecret)})
	if err != nil {
		t.Fatal(err)
	}
	if child.ParentID != parent.ID || !child.ExpiresAt.Equal(parent.ExpiresAt) {
		t.Errorf("child: parent %q expires %s, want parent %q and its expiry %s", child.ParentID, child.ExpiresAt, parent.ID, parent.ExpiresAt)
	}
	grandchild, grandSecret, err := tokens.Mint(ctx, alice, "grandchild", identity.TokenOptions{Lifetime: time.Hour, By: auth(childSecret)})
	if err != nil {
		t.Fatal(err)
	}
	if !grandchild.ExpiresAt.Equal(µs(t0.Add(time.Hour))) {
		t.Errorf("grandchild expires %s, want its own shorter hour", grandchild.ExpiresAt)
	}
	// One minted in a session, no parent.
	_, otherSecret, err := tokens.Mint(ctx, alice, "other", identity.TokenOptions{By: &identity.Principal{User: alice, SessionID: "s"}})
	if err != nil {
		t.Fatal(err)
	}
	if stored, _, _ := db.Tokens().TokenByHash(ctx, identity.HashToken(grandSecret)); stored == nil || stored.ParentID != child.ID {
		t.Errorf("stored grandchild: %+v, want parent %s", stored, child.ID)
	}
	all, err := db.Tokens().ListTokens(ctx, alice.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := identity.LiveDescendants(all, parent.ID); !slices.Equal(got, []string{child.ID, grandchild.ID}) {
		t.Errorf("descendants of the parent: got %v, want [child grandchild]", got)
	}

	childP := auth(childSecret)
	revoker := &identity.Principal{User: alice, SessionID: "s"}
	if _, with, err := tokens.Revoke(ctx, revoker, parent.ID); err != nil || !slices.Equal(with, []string{child.ID, grandchild.ID}) {
		t.Fatalf("revoke the parent: with %v, %v", with, err)
	}
	for name, secret := range map[string]string{"parent": parentSecret, "child": childSecret, "grandchild": grandSecret} {
		if _, err := tokens.Authenticate(ctx, secret); !errors.Is(err, errs.ErrUnauthorized) {
			t.Errorf("the %s after revoking the parent: got %v, want ErrUnauthorized", name, err)
		}
	}
	if _, err := tokens.Authenticate(ctx, otherSecret); err != nil {
		t.Errorf("a token of the same user not minted from the parent: %v", err)
	}
	// A request that authenticated with the child just before the
	// revocation cannot mint from it after.
	if _, _, err := tokens.Mint(ctx, alice, "late", identity.TokenOptions{By: childP}); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("minting from a revoked token: got %v, want ErrUnauthorized", err)
	}
	if n := countRows(t, db, "api_tokens", "name = ?", "late"); n != 0 {
		t.Errorf("the refused token was stored (%d rows)", n)
	}
}

func testDisableRevokesTokens(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users()}
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)
	bob := mustUser(t, db, "bob", identity.RoleOperator, false)
	_, aliceSecret, err := tokens.CreateFor(ctx, alice, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	_, bobSecret, err := tokens.CreateFor(ctx, bob, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	for _, disabled := range []bool{true, false} {
		if err := db.Users().SetUserDisabled(ctx, alice.ID, disabled); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tokens.Authenticate(ctx, aliceSecret); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("alice's token after disable and enable: got %v, want ErrUnauthorized", err)
	}
	if tok, _, _ := db.Tokens().TokenByHash(ctx, identity.HashToken(aliceSecret)); tok == nil || tok.RevokedAt == nil {
		t.Errorf("alice's token: %+v, want it revoked", tok)
	}
	if _, err := tokens.Authenticate(ctx, bobSecret); err != nil {
		t.Errorf("bob's token after alice's disable: %v", err)
	}
}

func testPasswordEndsSessions(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	alice := mustUser(t, db, "alice", identity.RoleAdmin, false)
	bob := mustUser(t, db, "bob", identity.RoleAdmin, false)
	ss := db.Sessions()
	for _, h := range []string{"a-phone", "a-laptop", "a-here"} {
		if err := ss.CreateSession(ctx, newSession(alice.ID, t0), h); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.CreateSession(ctx, newSession(bob.ID, t0), "b1"); err != nil {
		t.Fatal(err)
	}
	users := identity.Users{Store: db.Users()}
	// Alice changes her own password in the session "a-here": it stays.
	self := &identity.Principal{User: alice, SessionHash: "a-here"}
	if _, err := users.SetPassword(ctx, self, "alice", "a new long password"); err != nil {
		t.Fatal(err)
	}
	var left []string
	if err := db.gorm.Raw("SELECT hash FROM sessions ORDER BY hash").Scan(&left).Error; err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(left, []string{"a-here", "b1"}) {
		t.Errorf("sessions after alice's own change: got %v, want [a-here b1]", left)
	}
	// An admin (or otad user password) sets it: every session ends.
	if _, err := users.SetPassword(ctx, &identity.Principal{User: bob, SessionHash: "b1"}, "alice", "another long password"); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, db, "sessions", "user_id = ?", alice.ID); n != 0 {
		t.Errorf("alice's sessions after bob set her password: %d, want 0", n)
	}
	if n := countRows(t, db, "sessions", "user_id = ?", bob.ID); n != 1 {
		t.Errorf("bob's sessions: %d, want 1", n)
	}
	if _, _, err := users.Store.UserByName(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := users.SetPassword(ctx, nil, "alice", "short"); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("a short password: got %v, want ErrInvalid", err)
	}
}

func testMigrationIdentityLimits(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	ctx := t.Context()
	mustMigrate(t, db, migrations[:9])
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)
	bob := mustUser(t, db, "bob", identity.RoleOperator, false)
	g := db.gorm.WithContext(ctx)
	for _, tok := range []struct{ id, user string }{{"t-a", alice.ID}, {"t-b", bob.ID}} {
		if err := g.Exec("INSERT INTO api_tokens (id, name, role, token_hash, created_at, user_id) VALUES (?, ?, '', ?, ?, ?)",
			tok.id, tok.id, "hash-"+tok.id, dbTime(t0), tok.user).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Exec("UPDATE users SET disabled = ? WHERE id = ?", true, bob.ID).Error; err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	mustMigrate(t, db, migrations)

	a, _, err := db.Tokens().TokenByHash(ctx, "hash-t-a")
	if err != nil {
		t.Fatal(err)
	}
	if lo, hi := before.Add(identity.DefaultTokenLifetime-time.Minute), time.Now().Add(identity.DefaultTokenLifetime+time.Minute); a.ExpiresAt.Before(lo) || a.ExpiresAt.After(hi) || a.RevokedAt != nil {
		t.Errorf("alice's old token: expires %s revoked %v, want %s after the migration and live", a.ExpiresAt, a.RevokedAt, identity.DefaultTokenLifetime)
	}
	bt, _, err := db.Tokens().TokenByHash(ctx, "hash-t-b")
	if err != nil || bt.RevokedAt == nil {
		t.Errorf("the token of disabled bob: %+v %v, want revoked (enabling bob must not bring it back)", bt, err)
	}
	key, err := db.ServerSecret(ctx, DeviceCookieSecret)
	if err != nil || len(key) != 32 {
		t.Errorf("device cookie key: %d bytes, %v; want 32", len(key), err)
	}
	if _, err := db.ServerSecret(ctx, "nope"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("an unknown secret: got %v, want ErrNotFound", err)
	}
}

// testMintRacesRevoke mints children of a token while it is revoked:
// whatever the order, no child is left live under the revoked parent.
func testMintRacesRevoke(t *testing.T, b backend) {
	db := mustDB(t, b)
	ctx := t.Context()
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users()}
	alice := mustUser(t, db, "alice", identity.RoleOperator, false)
	for round := range 3 {
		parent, parentSecret, err := tokens.CreateFor(ctx, alice, fmt.Sprintf("parent-%d", round))
		if err != nil {
			t.Fatal(err)
		}
		by, err := tokens.Authenticate(ctx, parentSecret)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, err := tokens.Mint(ctx, alice, fmt.Sprintf("child-%d-%d", round, i), identity.TokenOptions{By: by})
				if err != nil && !errors.Is(err, errs.ErrUnauthorized) {
					t.Errorf("mint: %v", err)
				}
			}()
			if i == 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := db.Tokens().RevokeToken(ctx, parent.ID); err != nil {
						t.Errorf("revoke: %v", err)
					}
				}()
			}
		}
		wg.Wait()
		if n := countRows(t, db, "api_tokens", "parent_id = ? AND revoked_at IS NULL", parent.ID); n != 0 {
			t.Errorf("round %d: %d children live under the revoked parent", round, n)
		}
	}
}
