package identity

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
	"golang.org/x/crypto/argon2"
)

// User is a person who logs in to the dashboard and mints API tokens, or
// a service account (Service, no password) whose tokens automation uses.
// One identity serves the admin API and the pages.
type User struct {
	ID        string
	Name      string
	Role      string
	Service   bool
	Disabled  bool
	CreatedAt time.Time
}

// Kind is "service" for a service account, else "user" (a person).
func (u *User) Kind() string {
	if u.Service {
		return "service"
	}
	return "user"
}

// Can reports whether u may do p: a disabled user may do nothing.
func (u *User) Can(p Permission) bool { return u != nil && !u.Disabled && RoleCan(u.Role, p) }

// UserStore keeps users. Stores return ErrNotFound for an unknown user
// and ErrConflict for a name already taken.
type UserStore interface {
	CreateUser(ctx context.Context, u *User, passwordHash string) error
	// UserByName returns the user and its password hash ("" for a
	// service account).
	UserByName(ctx context.Context, name string) (*User, string, error)
	UserByID(ctx context.Context, id string) (*User, error)
	ListUsers(ctx context.Context) ([]*User, error)
	SetUserRole(ctx context.Context, id, role string) error
	// SetUserDisabled disables or re-enables a user. Disabling also ends
	// the user's sessions and revokes its tokens, in the same
	// transaction: re-enabling brings neither back.
	SetUserDisabled(ctx context.Context, id string, disabled bool) error
	// SetPassword sets a user's password hash and ends the user's
	// sessions but the one whose hash is keepSession ("" for none), in
	// the same transaction.
	SetPassword(ctx context.Context, id, passwordHash, keepSession string) error
}

// Principal is who a request acts as: a user (through a session or one
// of its tokens) or a service account (through its token). Actor is what
// the audit log records.
type Principal struct {
	User *User
	// TokenID is set for a request authenticated by an API token,
	// SessionID for one authenticated by a dashboard session.
	TokenID, SessionID string
	// TokenExpiresAt is when the token (TokenID) expires: a token it
	// mints expires no later.
	TokenExpiresAt time.Time
	// SessionHash is the store's key of the session (SessionID is its
	// first 16 characters, for logs): a password change keeps it.
	SessionHash string
}

// Can reports whether the principal may do p.
func (p *Principal) Can(perm Permission) bool { return p != nil && p.User.Can(perm) }

// Actor names the principal in the audit log and in rollout events.
func (p *Principal) Actor() string {
	if p == nil || p.User == nil {
		return ""
	}
	return p.User.Name
}

type principalKey struct{}

// WithPrincipal returns ctx carrying the authenticated principal.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFromContext returns the authenticated principal, or nil.
func PrincipalFromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// Password rules.
const (
	MinPasswordLength = 12
	MaxPasswordLength = 256
)

// validUserName reports whether name is a user name: 1-64 characters of
// a-z, 0-9, '.', '_' or '-', starting with a letter or digit. It is a
// loop rather than a regular expression: every login runs it, a flood
// of them too.
func validUserName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// argon2id parameters: OWASP's second recommended set (19 MiB, 2 passes,
// 1 lane), about 30 ms here, so that a login storm cannot exhaust a
// 2-core replica's memory.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

// HashPassword hashes a password with argon2id into the PHC string
// format ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
func HashPassword(password string) string {
	var salt [16]byte
	rand.Read(salt[:])
	key := argon2.IDKey([]byte(password), salt[:], argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt[:]), b64.EncodeToString(key))
}

// CheckPassword reports whether password matches a HashPassword hash,
// with the parameters the hash names.
func CheckPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false
	}
	var m uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 || m > 1<<20 || t > 16 {
		return false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is checked against when a login names no user, so that the
// answer takes as long as for a wrong password. It is made at the first
// such login, not when a binary that imports server starts (otactl,
// handset): a hash costs 19 MiB and tens of milliseconds.
var dummyHash = sync.OnceValue(func() string { return HashPassword("no such user, no such password") })

// Users manages users and checks logins.
type Users struct {
	Store UserStore
	Now   func() time.Time
	// Limiter refuses logins to an account after too many failures; nil
	// is no limit.
	Limiter *LoginLimiter
	// Devices signs the device cookies that exempt a browser which
	// logged in before from its account's lockout; nil issues none and
	// judges every attempt by the account's lockout.
	Devices *DeviceCookies
}

func (us Users) now() time.Time { return clock.Now(us.Now) }

// ValidateUser checks a new user's name, role and password (service
// accounts have none).
func ValidateUser(name, role, password string, service bool) error {
	// A name is the actor of every entry of the audit log, which cannot
	// be edited: it gets the identifier rules of the fields that have
	// no reason to hold a long number.
	if !validUserName(name) || textrule.NameLike(name, textrule.MaxNameDigits) {
		return errs.Fieldf("name", "want 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit%s", textrule.NoIdentifier(textrule.MaxNameDigits))
	}
	if !slices.Contains(Roles, role) {
		return errs.Fieldf("role", "%q: want one of %s", role, strings.Join(Roles, ", "))
	}
	if service {
		if password != "" {
			return errs.Fieldf("password", "a service account has no password; it acts through its tokens")
		}
		return nil
	}
	if n := len([]rune(password)); n < MinPasswordLength || len(password) > MaxPasswordLength {
		return errs.Fieldf("password", "want %d to %d characters", MinPasswordLength, MaxPasswordLength)
	}
	return nil
}

// Create stores a new user (service false, with a password) or service
// account (service true, password "").
func (us Users) Create(ctx context.Context, name, role, password string, service bool) (*User, error) {
	if err := ValidateUser(name, role, password, service); err != nil {
		return nil, err
	}
	u := &User{ID: "u-" + randomHex(8), Name: name, Role: role, Service: service, CreatedAt: us.now().UTC()}
	hash := ""
	if !service {
		hash = HashPassword(password)
	}
	if err := us.Store.CreateUser(ctx, u, hash); err != nil {
		return nil, err
	}
	return u, nil
}

// ErrSessionExpired is a session past its idle or absolute expiry. It is
// an ErrUnauthorized.
var ErrSessionExpired = fmt.Errorf("%w: session expired; log in again", errs.ErrUnauthorized)

// Session is a dashboard login, kept server side so that it can be
// revoked. The store keeps the hash of its secret, never the secret.
type Session struct {
	UserID    string
	CSRFToken string
	CreatedAt time.Time
	LastSeen  time.Time
}

// SessionStore keeps sessions by the hash of their secret. Lookups
// return ErrNotFound for an unknown hash.
type SessionStore interface {
	CreateSession(ctx context.Context, s *Session, hash string) error
	// SessionByHash returns the session and its user.
	SessionByHash(ctx context.Context, hash string) (*Session, *User, error)
	TouchSession(ctx context.Context, hash string, at time.Time) error
	DeleteSession(ctx context.Context, hash string) error
	// DeleteSessionsBefore deletes sessions last seen before t (idle
	// expiry) or created before created (absolute expiry).
	DeleteSessionsBefore(ctx context.Context, lastSeen, created time.Time) (int64, error)
}

// Session expiry defaults.
const (
	DefaultSessionIdle     = 30 * time.Minute
	DefaultSessionAbsolute = 12 * time.Hour
	// sessionTouchEvery is how stale LastSeen may get before a request
	// writes it again: idle expiry is this much late at worst.
	sessionTouchEvery = time.Minute
)

// Sessions starts, checks and ends dashboard sessions.
type Sessions struct {
	Store          SessionStore
	Now            func() time.Time
	Idle, Absolute time.Duration
}

func (ss Sessions) now() time.Time { return clock.Now(ss.Now) }

func (ss Sessions) limits() (idle, absolute time.Duration) {
	idle, absolute = ss.Idle, ss.Absolute
	if idle <= 0 {
		idle = DefaultSessionIdle
	}
	if absolute <= 0 {
		absolute = DefaultSessionAbsolute
	}
	return idle, absolute
}

// Start opens a session for u and returns its secret (the cookie value).
func (ss Sessions) Start(ctx context.Context, u *User) (string, *Session, error) {
	if u.Disabled || u.Service {
		return "", nil, fmt.Errorf("%w: this account cannot log in", errs.ErrUnauthorized)
	}
	now := ss.now().UTC()
	secret := "s_" + randomHex(32)
	s := &Session{UserID: u.ID, CSRFToken: randomHex(32), CreatedAt: now, LastSeen: now}
	if err := ss.Store.CreateSession(ctx, s, HashToken(secret)); err != nil {
		return "", nil, err
	}
	return secret, s, nil
}

// Lookup returns the live session of a secret and its user, or an
// ErrUnauthorized: unknown, expired (then deleted) or a disabled user.
func (ss Sessions) Lookup(ctx context.Context, secret string) (*Session, *User, error) {
	if !strings.HasPrefix(secret, "s_") || len(secret) > 128 {
		return nil, nil, fmt.Errorf("%w: invalid session", errs.ErrUnauthorized)
	}
	hash := HashToken(secret)
	s, u, err := ss.Store.SessionByHash(ctx, hash)
	if errs.IsNotFound(err) {
		return nil, nil, fmt.Errorf("%w: invalid session; log in again", errs.ErrUnauthorized)
	}
	if err != nil {
		return nil, nil, err
	}
	now := ss.now()
	idle, absolute := ss.limits()
	if now.Sub(s.LastSeen) > idle || now.Sub(s.CreatedAt) > absolute {
		if err := ss.Store.DeleteSession(ctx, hash); err != nil && !errs.IsNotFound(err) {
			return nil, nil, err
		}
		return nil, nil, ErrSessionExpired
	}
	if u.Disabled {
		return nil, nil, fmt.Errorf("%w: this account is disabled", errs.ErrUnauthorized)
	}
	if now.Sub(s.LastSeen) > sessionTouchEvery {
		if err := ss.Store.TouchSession(ctx, hash, now.UTC()); err != nil && !errors.Is(err, errs.ErrNotFound) {
			return nil, nil, err
		}
	}
	return s, u, nil
}

// End deletes the session of a secret (logout). An unknown one is
// already ended.
func (ss Sessions) End(ctx context.Context, secret string) error {
	err := ss.Store.DeleteSession(ctx, HashToken(secret))
	if errs.IsNotFound(err) {
		return nil
	}
	return err
}

// Prune deletes expired sessions and returns how many.
func (ss Sessions) Prune(ctx context.Context) (int64, error) {
	now := ss.now().UTC()
	idle, absolute := ss.limits()
	return ss.Store.DeleteSessionsBefore(ctx, now.Add(-idle), now.Add(-absolute))
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
