package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Token roles.
const (
	// RoleReleaseEngineer may run the repository ceremony, upload
	// releases, sign drafts and yank targets.
	RoleReleaseEngineer = "release-engineer"
	// RoleOperator may create and change rollouts (start, pause, resume,
	// abort, advance, hold) but not touch the repository. Release
	// engineers may change rollouts too.
	RoleOperator = "operator"
	// RoleViewer may read repository, fleet and rollout status.
	RoleViewer = "viewer"
)

// Roles lists the valid token roles.
var Roles = []string{RoleReleaseEngineer, RoleOperator, RoleViewer}

// Token is an admin API token. The secret itself is never stored: only
// its sha256, which is enough for a 256-bit random secret.
type Token struct {
	ID        string
	Name      string
	Role      string
	CreatedAt time.Time
	RevokedAt *time.Time
}

// TokenStore keeps tokens.
type TokenStore interface {
	CreateToken(ctx context.Context, t *Token, hash string) error
	// TokenByHash returns ErrNotFound for an unknown hash.
	TokenByHash(ctx context.Context, hash string) (*Token, error)
	ListTokens(ctx context.Context) ([]*Token, error)
	RevokeToken(ctx context.Context, id string) error
}

// tokenPrefix marks otad tokens so secret scanners can find leaked ones.
const tokenPrefix = "otad_"

// Tokens mints and checks admin API tokens.
type Tokens struct {
	Store TokenStore
	Now   func() time.Time
}

// Create mints a token and returns it with its secret, which is shown
// once and cannot be recovered.
func (ts Tokens) Create(ctx context.Context, name, role string) (*Token, string, error) {
	if name == "" || len(name) > 64 {
		return nil, "", fmt.Errorf("%w: token name must be 1-64 characters", ErrInvalid)
	}
	if !slices.Contains(Roles, role) {
		return nil, "", fmt.Errorf("%w: role %q: want one of %s", ErrInvalid, role, strings.Join(Roles, ", "))
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
	t := &Token{ID: "t-" + hex.EncodeToString(id[:]), Name: name, Role: role, CreatedAt: now().UTC()}
	if err := ts.Store.CreateToken(ctx, t, HashToken(plain)); err != nil {
		return nil, "", err
	}
	return t, plain, nil
}

// Authenticate returns the live token for a secret, or ErrUnauthorized
// without saying whether it was unknown or revoked.
func (ts Tokens) Authenticate(ctx context.Context, plain string) (*Token, error) {
	if !strings.HasPrefix(plain, tokenPrefix) || len(plain) > 128 {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
	}
	t, err := ts.Store.TokenByHash(ctx, HashToken(plain))
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
		}
		return nil, err
	}
	if t.RevokedAt != nil {
		return nil, fmt.Errorf("%w: invalid token", ErrUnauthorized)
	}
	return t, nil
}

// HashToken is what the store keeps of a token.
func HashToken(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}

type tokenKey struct{}

// WithToken returns ctx carrying the authenticated token.
func WithToken(ctx context.Context, t *Token) context.Context {
	return context.WithValue(ctx, tokenKey{}, t)
}

// TokenFromContext returns the authenticated token, or nil.
func TokenFromContext(ctx context.Context) *Token {
	t, _ := ctx.Value(tokenKey{}).(*Token)
	return t
}
