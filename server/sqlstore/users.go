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

// UserStore keeps users and service accounts; it implements
// identity.UserStore.
type UserStore struct{ db *DB }

var _ identity.UserStore = (*UserStore)(nil)

// Users returns the user store of db.
func (db *DB) Users() *UserStore { return &UserStore{db: db} }

type userRow struct {
	ID           string `gorm:"primaryKey"`
	Name         string
	Role         string
	PasswordHash string
	Service      bool
	Disabled     bool
	CreatedAt    time.Time
}

func (userRow) TableName() string { return "users" }

func (r *userRow) user() *identity.User {
	return &identity.User{ID: r.ID, Name: r.Name, Role: r.Role, Service: r.Service, Disabled: r.Disabled,
		CreatedAt: r.CreatedAt.UTC()}
}

// CreateUser implements identity.UserStore.
func (s *UserStore) CreateUser(ctx context.Context, u *identity.User, passwordHash string) error {
	row := userRow{ID: u.ID, Name: u.Name, Role: u.Role, PasswordHash: passwordHash, Service: u.Service,
		Disabled: u.Disabled, CreatedAt: dbTime(u.CreatedAt)}
	err := s.db.gorm.WithContext(ctx).Create(&row).Error
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		return fmt.Errorf("user %s exists: %w", u.Name, errs.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create user %s: %w", u.Name, err)
	}
	return nil
}

// UserByName implements identity.UserStore.
func (s *UserStore) UserByName(ctx context.Context, name string) (*identity.User, string, error) {
	row, err := s.take(ctx, "name = ?", name)
	if err != nil {
		return nil, "", fmt.Errorf("user %s: %w", name, err)
	}
	return row.user(), row.PasswordHash, nil
}

// UserByID implements identity.UserStore.
func (s *UserStore) UserByID(ctx context.Context, id string) (*identity.User, error) {
	row, err := s.take(ctx, "id = ?", id)
	if err != nil {
		return nil, fmt.Errorf("user %s: %w", id, err)
	}
	return row.user(), nil
}

func (s *UserStore) take(ctx context.Context, where string, arg string) (*userRow, error) {
	var row userRow
	err := s.db.gorm.WithContext(ctx).Where(where, arg).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, errs.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up: %w", err)
	}
	return &row, nil
}

// ListUsers implements identity.UserStore: people and service accounts,
// by name.
func (s *UserStore) ListUsers(ctx context.Context) ([]*identity.User, error) {
	var rows []userRow
	if err := s.db.gorm.WithContext(ctx).Order("name").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	out := make([]*identity.User, len(rows))
	for i := range rows {
		out[i] = rows[i].user()
	}
	return out, nil
}

// SetUserRole implements identity.UserStore.
func (s *UserStore) SetUserRole(ctx context.Context, id, role string) error {
	return updateUser(s.db.gorm.WithContext(ctx), id, "role", role)
}

// SetPassword implements identity.UserStore: the new hash and the end of
// the user's other sessions in one transaction.
func (s *UserStore) SetPassword(ctx context.Context, id, passwordHash, keepSession string) error {
	return s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := updateUser(tx, id, "password_hash", passwordHash); err != nil {
			return err
		}
		if err := tx.Exec("DELETE FROM sessions WHERE user_id = ? AND hash <> ?", id, keepSession).Error; err != nil {
			return fmt.Errorf("user %s: end sessions: %w", id, err)
		}
		return nil
	})
}

// SetUserDisabled implements identity.UserStore. Sessions are deleted and
// live tokens revoked here, so that a re-enabled user logs in again and
// mints new tokens rather than finding old ones alive (tokens also
// check the user's flag on every request, which covers one minted while
// this runs).
func (s *UserStore) SetUserDisabled(ctx context.Context, id string, disabled bool) error {
	return s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := updateUser(tx, id, "disabled", disabled); err != nil {
			return err
		}
		if !disabled {
			return nil
		}
		if err := tx.Exec("DELETE FROM sessions WHERE user_id = ?", id).Error; err != nil {
			return fmt.Errorf("user %s: end sessions: %w", id, err)
		}
		if err := tx.Exec("UPDATE api_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", dbTime(s.db.now()), id).Error; err != nil {
			return fmt.Errorf("user %s: revoke tokens: %w", id, err)
		}
		return nil
	})
}

func updateUser(g *gorm.DB, id, column string, value any) error {
	res := g.Model(&userRow{}).Where("id = ?", id).Update(column, value)
	if res.Error != nil {
		return fmt.Errorf("user %s: set %s: %w", id, column, res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("user %s: %w", id, errs.ErrNotFound)
	}
	return nil
}
