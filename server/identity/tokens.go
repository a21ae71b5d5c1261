package identity

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
)

// Token is an API token of a user or of a service account: it acts as
// that user, with the user's current role, until it expires or is
// revoked; disabling the user revokes it. The secret itself is never
// stored: only its sha256, which is enough for a 256-bit random secret.
type Token struct {
	ID        string
	Name      string
	UserID    string
	CreatedAt time.Time
	// ExpiresAt is when the token stops working; zero is never, which
	// only a row the store cannot date has (every token is minted with
	// an expiry, and migration 11 gave the older ones one).
	ExpiresAt time.Time
	RevokedAt *time.Time
	// ParentID is the token this one was minted with through the API,
	// "" for one minted in a dashboard session or by otad token create.
	// A child expires no later than its parent and is revoked with it:
	// whoever revokes a leaked token must not have to find what was
	// minted with it.
	ParentID string
}

// Expired reports whether t has expired at now.
func (t *Token) Expired(now time.Time) bool {
	return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
}

// Token lifetimes: DefaultTokenLifetime for a token minted without
// one (Tokens.Lifetime changes it), at most MaxTokenLifetime.
const (
	DefaultTokenLifetime = 90 * 24 * time.Hour
	MaxTokenLifetime     = 2 * 365 * 24 * time.Hour
)

// ParseTokenLifetime parses a token lifetime: a Go duration ("720h",
// "30m") or a whole number of days ("90d").
func ParseTokenLifetime(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if n, err = strconv.Atoi(days); err == nil && n >= 0 && n <= 100_000 {
			d = time.Duration(n) * 24 * time.Hour
		} else {
			err = errors.New("bad number of days")
		}
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 || d > MaxTokenLifetime {
		return 0, errs.Fieldf("expires_in", "%q: want a duration such as 30d or 720h, at most %dd", s, MaxTokenLifetime/(24*time.Hour))
	}
	return d, nil
}

// TokenStore keeps tokens.
type TokenStore interface {
	// CreateToken stores t. For a t with a ParentID it refuses
	// (ErrUnauthorized) when the parent is revoked, even by a
	// revocation under way: a child is never left live under a revoked
	// parent.
	CreateToken(ctx context.Context, t *Token, hash string) error
	// TokenByHash returns the token and its user, or ErrNotFound for an
	// unknown hash.
	TokenByHash(ctx context.Context, hash string) (*Token, *User, error)
	// ListTokens lists the tokens of one user, or of all for userID "".
	ListTokens(ctx context.Context, userID string) ([]*Token, error)
	// RevokeToken revokes a token and every token minted from it, down
	// the ParentID links; ErrNotFound for an unknown or revoked id.
	RevokeToken(ctx context.Context, id string) error
}

// tokenPrefix marks otad tokens so secret scanners can find leaked ones.
const tokenPrefix = "otad_"

// Tokens mints and checks API tokens.
type Tokens struct {
	Store TokenStore
	Users UserStore
	Now   func() time.Time
	// Lifetime is how long a token minted without one works (default
	// DefaultTokenLifetime).
	Lifetime time.Duration
}

func (ts Tokens) now() time.Time { return clock.Now(ts.Now) }

// TokenOptions are the choices of minting a token.
type TokenOptions struct {
	// Lifetime is how long the token works: 0 is the Tokens' default;
	// more than MaxTokenLifetime is refused.
	Lifetime time.Duration
	// By is who mints it. When By authenticated with a token, the new
	// token is that token's child: it expires no later, and revoking
	// the parent revokes it (a token minted from a leaked one must not
	// outlive it).
	By *Principal
}

// Create mints a token with the default lifetime for the service
// account name; see CreateService.
func (ts Tokens) Create(ctx context.Context, name, role string) (*Token, string, error) {
	return ts.CreateService(ctx, name, role, TokenOptions{})
}

// CreateService mints a token for the service account name, creating the
// account with role if it does not exist, and returns it with its
// secret, which is shown once and cannot be recovered. It is what
// `otad token create` does; a service account that exists already must
// have role, and a person's account is refused (people mint their own
// tokens with CreateFor).
func (ts Tokens) CreateService(ctx context.Context, name, role string, opts TokenOptions) (*Token, string, error) {
	if err := ValidateUser(name, role, "", true); err != nil {
		return nil, "", err
	}
	u, _, err := ts.Users.UserByName(ctx, name)
	switch {
	case errs.IsNotFound(err):
		u, err = Users{Store: ts.Users, Now: ts.Now}.Create(ctx, name, role, "", true)
		if errors.Is(err, errs.ErrConflict) {
			// Another replica created it in between.
			u, _, err = ts.Users.UserByName(ctx, name)
		}
		if err != nil {
			return nil, "", err
		}
	case err != nil:
		return nil, "", err
	}
	if !u.Service {
		return nil, "", fmt.Errorf("%w: %s is a person's account; log in and mint a token there, or pick another service account name", errs.ErrConflict, name)
	}
	if u.Role != role {
		return nil, "", fmt.Errorf("%w: service account %s has role %s, not %s; change it with otad user set-role", errs.ErrConflict, name, u.Role, role)
	}
	return ts.Mint(ctx, u, name, opts)
}

// CreateFor mints a token named name with the default lifetime that
// acts as u.
func (ts Tokens) CreateFor(ctx context.Context, u *User, name string) (*Token, string, error) {
	return ts.Mint(ctx, u, name, TokenOptions{})
}

// Mint mints a token named name that acts as u, as opts say, and
// returns it with its secret, which is shown once.
func (ts Tokens) Mint(ctx context.Context, u *User, name string, opts TokenOptions) (*Token, string, error) {
	if err := textrule.ValidateTokenName(name); err != nil {
		return nil, "", err
	}
	lifetime := opts.Lifetime
	switch {
	case lifetime == 0:
		lifetime = cmp.Or(ts.Lifetime, DefaultTokenLifetime)
	case lifetime < 0 || lifetime > MaxTokenLifetime:
		return nil, "", errs.Fieldf("expires_in", "want a positive duration of at most %dd", MaxTokenLifetime/(24*time.Hour))
	}
	if u.Disabled {
		return nil, "", fmt.Errorf("%w: user %s is disabled", errs.ErrConflict, u.Name)
	}
	var id [8]byte
	var secret [32]byte
	rand.Read(id[:])
	rand.Read(secret[:])
	plain := tokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(secret[:]))
	now := ts.now().UTC()
	t := &Token{ID: "t-" + hex.EncodeToString(id[:]), Name: name, UserID: u.ID, CreatedAt: now,
		ExpiresAt: now.Add(lifetime).Truncate(time.Microsecond)}
	if by := opts.By; by != nil && by.TokenID != "" {
		t.ParentID = by.TokenID
		if !by.TokenExpiresAt.IsZero() && by.TokenExpiresAt.Before(t.ExpiresAt) {
			t.ExpiresAt = by.TokenExpiresAt
		}
	}
	if err := ts.Store.CreateToken(ctx, t, HashToken(plain)); err != nil {
		return nil, "", err
	}
	return t, plain, nil
}

// Authenticate returns the principal of a live token, or ErrUnauthorized
// without saying whether it was unknown, revoked, expired or its user
// disabled.
func (ts Tokens) Authenticate(ctx context.Context, plain string) (*Principal, error) {
	if !strings.HasPrefix(plain, tokenPrefix) || len(plain) > 128 {
		return nil, fmt.Errorf("%w: invalid token", errs.ErrUnauthorized)
	}
	t, u, err := ts.Store.TokenByHash(ctx, HashToken(plain))
	if err != nil {
		if errs.IsNotFound(err) {
			return nil, fmt.Errorf("%w: invalid token", errs.ErrUnauthorized)
		}
		return nil, err
	}
	if t.RevokedAt != nil || t.Expired(ts.now()) || u == nil || u.Disabled {
		return nil, fmt.Errorf("%w: invalid token", errs.ErrUnauthorized)
	}
	return &Principal{User: u, TokenID: t.ID, TokenExpiresAt: t.ExpiresAt}, nil
}

// HashToken is what the store keeps of a token.
func HashToken(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}
