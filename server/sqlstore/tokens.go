package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// TokenStore keeps the API tokens of users and service accounts; it implements identity.TokenStore.
type TokenStore struct{ db *DB }

var _ identity.TokenStore = (*TokenStore)(nil)

// Tokens returns the token store of db.
func (db *DB) Tokens() *TokenStore { return &TokenStore{db: db} }

type tokenRow struct {
	ID   string `gorm:"primaryKey"`
	Name string
	// Role is what tokens had before they belonged to users; it is
	// written empty and not read: the user's role applies.
	Role      string
	UserID    *string
	TokenHash string
	CreatedAt time.Time
	RevokedAt *time.Time
	ExpiresAt *time.Time
	ParentID  *string
}

func (tokenRow) TableName() string { return "api_tokens" }

func (r tokenRow) token() *identity.Token {
	t := &identity.Token{ID: r.ID, Name: r.Name, CreatedAt: r.CreatedAt.UTC()}
	if r.UserID != nil {
		t.UserID = *r.UserID
	}
	if r.ExpiresAt != nil {
		t.ExpiresAt = r.ExpiresAt.UTC()
	}
	if r.ParentID != nil {
		t.ParentID = *r.ParentID
	}
	if r.RevokedAt != nil {
		at := r.RevokedAt.UTC()
		t.RevokedAt = &at
	}
	return t
}

// CreateToken implements identity.TokenStore. An unknown user is
// ErrNotFound. A child token is written in a transaction that first
// locks its parent's row, live (FOR UPDATE on PostgreSQL; SQLite's write
// transaction excludes every other writer): a revocation of the parent
// either comes first, and the child is refused, or waits for the child
// and then finds it (see RevokeToken).
func (s *TokenStore) CreateToken(ctx context.Context, t *identity.Token, hash string) error {
	if t.UserID == "" {
		return fmt.Errorf("create token %s: no user: %w", t.Name, errs.ErrInvalid)
	}
	userID := t.UserID
	row := tokenRow{ID: t.ID, Name: t.Name, UserID: &userID, TokenHash: hash, CreatedAt: dbTime(t.CreatedAt)}
	if !t.ExpiresAt.IsZero() {
		at := dbTime(t.ExpiresAt)
		row.ExpiresAt = &at
	}
	if t.ParentID != "" {
		parent := t.ParentID
		row.ParentID = &parent
	}
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if row.ParentID != nil {
			var live []string
			if err := tx.Raw("SELECT id FROM api_tokens WHERE id = ? AND revoked_at IS NULL"+s.db.forUpdate(), *row.ParentID).
				Scan(&live).Error; err != nil {
				return err
			}
			if len(live) == 0 {
				return fmt.Errorf("%w: the token this one is minted with is revoked", errs.ErrUnauthorized)
			}
		}
		return tx.Create(&row).Error
	})
	switch {
	case errors.Is(err, errs.ErrUnauthorized):
		return err
	case errors.Is(err, gorm.ErrForeignKeyViolated):
		return fmt.Errorf("token of user %s: %w", t.UserID, errs.ErrNotFound)
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return fmt.Errorf("token %s exists: %w", t.ID, errs.ErrConflict)
	case err != nil:
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

// tokenUserRow is a token joined with its user.
type tokenUserRow struct {
	ID         string
	Name       string
	UserID     *string
	CreatedAt  time.Time
	RevokedAt  *time.Time
	ExpiresAt  *time.Time
	ParentID   *string
	UName      string
	URole      string
	UService   bool
	UDisabled  bool
	UCreatedAt time.Time
}

// TokenByHash implements identity.TokenStore, reading the token and its
// user in one query: it runs on every API request.
func (s *TokenStore) TokenByHash(ctx context.Context, hash string) (*identity.Token, *identity.User, error) {
	var rows []tokenUserRow
	err := s.db.gorm.WithContext(ctx).Raw(`SELECT t.id, t.name, t.user_id, t.created_at, t.revoked_at, t.expires_at, t.parent_id,
	u.name AS u_name, u.role AS u_role, u.service AS u_service, u.disabled AS u_disabled, u.created_at AS u_created_at
FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?`, hash).Scan(&rows).Error
	if err != nil {
		return nil, nil, fmt.Errorf("look up token: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil, fmt.Errorf("token: %w", errs.ErrNotFound)
	}
	r := rows[0]
	t := tokenRow{ID: r.ID, Name: r.Name, UserID: r.UserID, CreatedAt: r.CreatedAt, RevokedAt: r.RevokedAt,
		ExpiresAt: r.ExpiresAt, ParentID: r.ParentID}.token()
	u := &identity.User{ID: t.UserID, Name: r.UName, Role: r.URole, Service: r.UService, Disabled: r.UDisabled,
		CreatedAt: r.UCreatedAt.UTC()}
	return t, u, nil
}

// ListTokens implements identity.TokenStore.
func (s *TokenStore) ListTokens(ctx context.Context, userID string) ([]*identity.Token, error) {
	q := s.db.gorm.WithContext(ctx).Order("created_at, id")
	if userID != "" {
		q = q.Where("user_id = ?", userID)
	}
	var rows []tokenRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]*identity.Token, len(rows))
	for i, r := range rows {
		out[i] = r.token()
	}
	return out, nil
}

// RevokeToken implements identity.TokenStore: it revokes id, then the
// tokens minted from it one generation at a time, each in a statement
// of its own. Revoking a generation waits for any child being minted
// from one of its tokens (CreateToken locks the parent) and, on
// PostgreSQL's read committed, the next statement then sees that child;
// one recursive statement would read the tree as it was when it began.
func (s *TokenStore) RevokeToken(ctx context.Context, id string) error {
	now := dbTime(s.db.now())
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Exec("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", now, id)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("token %s: %w", id, errs.ErrNotFound)
		}
		for gen := []string{id}; len(gen) > 0; {
			var next []string
			if err := tx.Raw("SELECT id FROM api_tokens WHERE parent_id IN ? AND revoked_at IS NULL", gen).Scan(&next).Error; err != nil {
				return err
			}
			if len(next) == 0 {
				return nil
			}
			if err := tx.Exec("UPDATE api_tokens SET revoked_at = ? WHERE id IN ? AND revoked_at IS NULL", now, next).Error; err != nil {
				return err
			}
			gen = next
		}
		return nil
	})
	if err != nil && !errors.Is(err, errs.ErrNotFound) {
		return fmt.Errorf("revoke token: %w", err)
	}
	return err
}
