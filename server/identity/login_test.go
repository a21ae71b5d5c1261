package identity

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
)

// loginStore is a UserStore of a fixed set of users that counts
// lookups; only UserByName is used by Login.
type loginStore struct {
	UserStore
	users   map[string]*User
	hashes  map[string]string
	lookups int
}

func (s *loginStore) UserByName(_ context.Context, name string) (*User, string, error) {
	s.lookups++
	u := s.users[name]
	if u == nil {
		return nil, "", fmt.Errorf("user %s: %w", name, errs.ErrNotFound)
	}
	c := *u
	return &c, s.hashes[name], nil
}

const loginPassword = "correct horse battery"

func newLoginStore(names ...string) *loginStore {
	s := &loginStore{users: map[string]*User{}, hashes: map[string]string{}}
	hash := HashPassword(loginPassword)
	for _, n := range names {
		s.users[n] = &User{ID: "u-" + n, Name: n, Role: RoleAdmin}
		s.hashes[n] = hash
	}
	return s
}

// fastUnknownNames makes the hash that a login at an unknown name is
// checked against fail at once, so that a test can send a flood of
// them; wrong passwords of real accounts still cost a real hash.
func fastUnknownNames(tb testing.TB) {
	old := dummyHash
	dummyHash = func() string { return "" }
	tb.Cleanup(func() { dummyHash = old })
}

func isRateLimited(err error) bool {
	var rl *errs.RateLimitError
	return errors.As(err, &rl)
}

// TestLoginOversizedInput: the probe's 1 MB user names, and passwords
// no account can have, are refused like a wrong password before any
// lookup, and keep nothing.
func TestLoginOversizedInput(t *testing.T) {
	store := newLoginStore("admin")
	lim := NewLoginLimiter(10, 15*time.Minute)
	us := Users{Store: store, Limiter: lim}
	huge := strings.Repeat("a", 1<<20)
	for name, in := range map[string][2]string{
		"1 MB name":             {huge, loginPassword},
		"65-byte name":          {strings.Repeat("a", MaxLoginNameBytes+1), loginPassword},
		"name no account has":   {"Admin Root", loginPassword},
		"password over the cap": {"admin", strings.Repeat("p", MaxPasswordLength+1)},
	} {
		_, err := us.Login(t.Context(), in[0], in[1], "")
		if !errors.Is(err, errs.ErrUnauthorized) || err.Error() != "unauthorized: wrong user name or password" {
			t.Errorf("%s: got %v, want the wrong-password answer", name, err)
		}
	}
	if store.lookups != 0 {
		t.Errorf("%d lookups, want none", store.lookups)
	}
	if n := lim.Bytes(); n != 0 {
		t.Errorf("the tracker holds %d bytes, want 0", n)
	}
	// A name with spaces around it is the name.
	if u, err := us.Login(t.Context(), "  admin ", loginPassword, ""); err != nil || u.Name != "admin" {
		t.Errorf("trimmed name: got %v %v", u, err)
	}
}

// TestLoginFloodKeepsAccountsTracked floods the tracker with 200,000
// made-up names, the probe's spray: its memory stays within its budget
// by its own count, and a real account is still locked after its
// failures (the old tracker stopped counting new names past 100,001).
func TestLoginFloodKeepsAccountsTracked(t *testing.T) {
	fastUnknownNames(t)
	store := newLoginStore("admin", "alice")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// Five failures lock, to keep the real password checks (argon2, slow
	// under the race detector) few.
	lim := NewLoginLimiter(5, 15*time.Minute)
	lim.MaxBytes = 1 << 20
	us := Users{Store: store, Limiter: lim, Now: func() time.Time { return now }}
	ctx := t.Context()
	for i := range 200_000 {
		name := fmt.Sprintf("spray-%07d-%s", i, strings.Repeat("x", 40))
		if _, err := us.Login(ctx, name, "guess", ""); !errors.Is(err, errs.ErrUnauthorized) {
			t.Fatalf("made-up name %d: got %v", i, err)
		}
		if i%40_000 == 0 {
			now = now.Add(time.Second)
			// alice fails once in a while amid the spray.
			if _, err := us.Login(ctx, "alice", "wrong password!", ""); isRateLimited(err) {
				t.Fatalf("alice locked after %d failures", i/40_000)
			}
		}
		if i%1000 == 999 {
			if b := lim.Bytes(); b > lim.MaxBytes {
				t.Fatalf("after %d names the tracker holds %d bytes, over its %d", i+1, b, lim.MaxBytes)
			}
		}
	}
	// The spray's names fill their own table only.
	if b := lim.Bytes(); b < lim.MaxBytes/8 {
		t.Errorf("the tracker holds %d bytes after the spray, want the unknown names' table used", b)
	}
	for i := range 5 {
		_, err := us.Login(ctx, "admin", "wrong password!", "")
		if isRateLimited(err) {
			t.Fatalf("admin locked after %d failures, want 5", i)
		}
		if i == 4 {
			var le *LoginError
			if !errors.As(err, &le) || len(le.Audit) != 2 || le.Audit[1].Action != "user.locked" {
				t.Errorf("the fifth failure: audit %+v, want session.login_failed and user.locked", le)
			}
		}
	}
	if _, err := us.Login(ctx, "admin", loginPassword, ""); !isRateLimited(err) {
		t.Errorf("admin after 5 failures amid the spray, right password: got %v, want locked", err)
	}
	// alice's 5 failures were counted too, across the whole spray.
	if _, err := us.Login(ctx, "alice", loginPassword, ""); !isRateLimited(err) {
		t.Errorf("alice after 5 failures spread over the spray: got %v, want locked", err)
	}
	now = now.Add(15 * time.Minute)
	if _, err := us.Login(ctx, "admin", loginPassword, ""); err != nil {
		t.Errorf("admin once the failures aged out: %v", err)
	}
}

// TestLoginUnknownNamesLockAlike: a name that is no account locks after
// as many failures as an account, so a lockout does not tell which
// names exist; the failures are audited without the name, at most once
// a minute.
func TestLoginUnknownNamesLockAlike(t *testing.T) {
	fastUnknownNames(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	us := Users{Store: newLoginStore(), Limiter: NewLoginLimiter(3, 15*time.Minute), Now: func() time.Time { return now }}
	var audited []audit.AuditEntry
	for i := range 4 {
		_, err := us.Login(t.Context(), "nobody", "my secret password", "")
		if locked := isRateLimited(err); locked != (i == 3) {
			t.Errorf("attempt %d: locked %v, want %v", i+1, locked, i == 3)
		}
		var le *LoginError
		if errors.As(err, &le) {
			audited = append(audited, le.Audit...)
		}
	}
	now = now.Add(time.Minute)
	_, err := us.Login(t.Context(), "somebody", "my secret password", "")
	var le *LoginError
	if errors.As(err, &le) {
		audited = append(audited, le.Audit...)
	}
	var got []string
	for _, e := range audited {
		got = append(got, e.Actor+" "+e.Action+" "+e.Object+" "+e.Detail)
		if strings.Contains(e.Detail+e.Object, "body") || strings.Contains(e.Detail+e.Object, "secret") {
			t.Errorf("entry %+v names the name or the password", e)
		}
	}
	want := `(anonymous) session.login_failed (unknown user) {"failures":"1"}` + "\n" +
		`(anonymous) session.login_failed (unknown user) {"failures":"3"}`
	if strings.Join(got, "\n") != want {
		t.Errorf("audit:\n got %s\nwant %s", strings.Join(got, "\n"), want)
	}
}

// TestDeviceCookies: a cookie is good for its account only, not after
// its age, not when tampered with or signed with another key.
func TestDeviceCookies(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := &DeviceCookies{Key: []byte("0123456789abcdef0123456789abcdef")}
	c := d.Issue("admin", now)
	if id := d.check(c, "admin", now.Add(time.Hour)); len(id) != 32 {
		t.Fatalf("a fresh cookie: id %q, want its 32-digit nonce", id)
	}
	other := &DeviceCookies{Key: []byte("another key, another installation")}
	tampered := strings.Replace(c, ".", ".x", 1)
	for name, bad := range map[string]func() string{
		"another account": func() string { return d.check(c, "alice", now) },
		"expired":         func() string { return d.check(c, "admin", now.Add(DefaultDeviceCookieAge+time.Second)) },
		"another key":     func() string { return other.check(c, "admin", now) },
		"tampered":        func() string { return d.check(tampered, "admin", now) },
		"renamed":         func() string { return d.check(strings.Replace(c, "YWRtaW4", "YWxpY2U", 1), "alice", now) },
		"too long":        func() string { return d.check(c+strings.Repeat("A", 300), "admin", now) },
		"empty":           func() string { return d.check("", "admin", now) },
	} {
		if id := bad(); id != "" {
			t.Errorf("%s: accepted as %q", name, id)
		}
	}
	if d.Issue("admin", now) == c {
		t.Error("two cookies alike: the nonce is not random")
	}
}

// TestValidUserName: the loop accepts what the regular expression it
// replaced did.
func TestValidUserName(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	for _, name := range []string{"", "a", "0", "alice", "a.b_c-d", ".a", "_a", "-a", "A", "al ice", "ålice",
		strings.Repeat("a", 64), strings.Repeat("a", 65), "a\x00", "a/b", "a..b", "9-", "z~"} {
		if got, want := validUserName(name), re.MatchString(name); got != want {
			t.Errorf("validUserName(%q) = %v, want %v", name, got, want)
		}
	}
}
