package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token is an API token of a user or of a service account: it acts as
// that user, with the user's current role, and stops working when the
// user is disabled. The secret itself is never stored: only its sha256,
// which is enough for a 256-bit random secret.
type Token struct {
	ID        string
	Name      string
	UserID    string
	CreatedAt time.Time
	RevokedAt *time.Time
}

// TokenStore keeps tokens.
type TokenStore interface {
	CreateToken(ctx context.Context, t *Token, hash string) error
	// TokenByHash returns the token and its user, or ErrNotFound for an
	// unknown hash.
	TokenByHash(ctx context.Context, hash string) (*Token, *User, error)
	// ListTokens lists the tokens of one user, or of all for userID "".
	ListTokens(ctx context.Context, userID string) ([]*Token, error)
	// RevokeToken returns ErrNotFound for an unknown id.
	RevokeToken(ctx context.Context, id string) error
}

// tokenPrefix marks otad tokens so secret scanners can find leaked ones.
const tokenPrefix = "otad_"

// Tokens mints and checks API tokens.
type Tokens struct {
	Store TokenStore
	Users UserStore
	Now   func() time.Time
}

// Create mints a token for the service account name, creating the
// account with role if it does not exist, and returns it with its
// secret, which is shown once and cannot be recovered. It is what
// `otad token create` does; a service account that exists already must
// have role, and a person's account is refused (people mint their own
// tokens with CreateFor).
func (ts Tokens) Create(ctx context.Context, name, role string) (*Token, string, error) {
	if err := ValidateUser(name, role, "", true); err != nil {
		return nil, "", err
	}
	u, _, err := ts.Users.UserByName(ctx, name)
	switch {
	case isNotFound(err):
		u, err = Users{Store: ts.Users, Now: ts.Now}.Create(ctx, name, role, "", true)
		if errors.Is(err, ErrConflict) {
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
		return nil, "", fmt.Errorf("%w: %s is a person's account; log in and mint a token there, or pick another service account name", ErrConflict, name)
	}
	if u.Role != role {
		return nil, "", fmt.Errorf("%w: service account %s has role %s, not %s; change it with otad user set-role", ErrConflict, name, u.Role, role)
	}
	return ts.CreateFor(ctx, u, name)
}

// CreateFor mints a token named name that acts as u.
func (ts Tokens) CreateFor(ctx context.Context, u *User, name string) (*Token, string, error) {
	if err := ValidateTokenName(name); err != nil {
		return nil, "", err
	}
	if u.Disabled {
		return nil, "", fmt.Errorf("%w: user %s is disabled", ErrConflict, u.Name)
	}
	var id [8]byte
	var secret [32]byte
	rand.Read(id[:])
	rand.Read(secret[:])
	plain := tokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(secret[:]))
	now := time.Now
	if ts.Now != nil {
		now = ts.Now
	}
	t := &Token{ID: "t-" + hex.EncodeToString(id[:]), Name: name, UserID: u.ID, CreatedAt: now().UTC()}
	if err := ts.Store.CreateToken(ctx, t, HashToken(plain)); err != nil {
		return nil, "", err
	}
	return t, plain, nil
}

// Authenticate returns the principal of a live token, or ErrUnauthorized
// without saying whether it was unknown, revoked or its user disabled.
func (ts Tokens) Authenticate(ctx context.Context, plain string) (*Principal, error) {
	if !strings.HasPrefix(plain, tokenPrefix) || len(plain) > 128 {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
	}
	t, u, err := ts.Store.TokenByHash(ctx, HashToken(plain))
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
		}
		return nil, err
	}
	if t.RevokedAt != nil || u == nil || u.Disabled {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
	}
	return &Principal{User: u, TokenID: t.ID}, nil
}

// HashToken is what the store keeps of a token.
func HashToken(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}
