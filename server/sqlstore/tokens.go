package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server"
)

// TokenStore keeps admin API tokens; it implements server.TokenStore.
type TokenStore struct{ db *DB }

var _ server.TokenStore = (*TokenStore)(nil)

// Tokens returns the token store of db.
func (db *DB) Tokens() *TokenStore { return &TokenStore{db: db} }

type tokenRow struct {
	ID        string `gorm:"primaryKey"`
	Name      string
	Role      string
	TokenHash string
	CreatedAt time.Time
	RevokedAt *time.Time
}

func (tokenRow) TableName() string { return "api_tokens" }

func (r tokenRow) token() *server.Token {
	t := &server.Token{ID: r.ID, Name: r.Name, Role: r.Role, CreatedAt: r.CreatedAt.UTC()}
	if r.RevokedAt != nil {
		at := r.RevokedAt.UTC()
		t.RevokedAt = &at
	}
	return t
}

// CreateToken implements server.TokenStore.
func (s *TokenStore) CreateToken(ctx context.Context, t *server.Token, hash string) error {
	row := tokenRow{ID: t.ID, Name: t.Name, Role: t.Role, TokenHash: hash, CreatedAt: t.CreatedAt.UTC()}
	if err := s.db.gorm.WithContext(ctx).Create(&row).Error; err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	return nil
}

// TokenByHash implements server.TokenStore.
func (s *TokenStore) TokenByHash(ctx context.Context, hash string) (*server.Token, error) {
	var row tokenRow
	err := s.db.gorm.WithContext(ctx).Where("token_hash = ?", hash).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("token: %w", server.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up token: %w", err)
	}
	return row.token(), nil
}

// ListTokens implements server.TokenStore.
func (s *TokenStore) ListTokens(ctx context.Context) ([]*server.Token, error) {
	var rows []tokenRow
	if err := s.db.gorm.WithContext(ctx).Order("created_at, id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]*server.Token, len(rows))
	for i, r := range rows {
		out[i] = r.token()
	}
	return out, nil
}

// RevokeToken implements server.TokenStore.
func (s *TokenStore) RevokeToken(ctx context.Context, id string) error {
	res := s.db.gorm.WithContext(ctx).Model(&tokenRow{}).Where("id = ? AND revoked_at IS NULL", id).
		Update("revoked_at", time.Now().UTC())
	if res.Error != nil {
		return fmt.Errorf("revoke token: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("token %s: %w", id, server.ErrNotFound)
	}
	return nil
}
