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

// SessionStore keeps dashboard sessions; it implements
// identity.SessionStore.
type SessionStore struct{ db *DB }

var _ identity.SessionStore = (*SessionStore)(nil)

// Sessions returns the session store of db.
func (db *DB) Sessions() *SessionStore { return &SessionStore{db: db} }

type sessionRow struct {
	Hash      string `gorm:"primaryKey"`
	UserID    string
	CSRFToken string `gorm:"column:csrf_token"`
	CreatedAt time.Time
	LastSeen  time.Time
}

func (sessionRow) TableName() string { return "sessions" }

// CreateSession implements identity.SessionStore. An unknown user is
// ErrNotFound.
func (s *SessionStore) CreateSession(ctx context.Context, sess *identity.Session, hash string) error {
	row := sessionRow{Hash: hash, UserID: sess.UserID, CSRFToken: sess.CSRFToken, CreatedAt: dbTime(sess.CreatedAt),
		LastSeen: dbTime(sess.LastSeen)}
	err := s.db.gorm.WithContext(ctx).Create(&row).Error
	switch {
	case errors.Is(err, gorm.ErrForeignKeyViolated):
		return fmt.Errorf("session of user %s: %w", sess.UserID, errs.ErrNotFound)
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return fmt.Errorf("session exists: %w", errs.ErrConflict)
	case err != nil:
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// sessionUserRow is a session joined with its user.
type sessionUserRow struct {
	UserID     string
	CSRFToken  string `gorm:"column:csrf_token"`
	CreatedAt  time.Time
	LastSeen   time.Time
	UName      string
	URole      string
	UService   bool
	UDisabled  bool
	UCreatedAt time.Time
}

// SessionByHash implements identity.SessionStore, reading the session and
// its user in one query: it runs on every dashboard request.
func (s *SessionStore) SessionByHash(ctx context.Context, hash string) (*identity.Session, *identity.User, error) {
	var rows []sessionUserRow
	err := s.db.gorm.WithContext(ctx).Raw(`SELECT s.user_id, s.csrf_token, s.created_at, s.last_seen,
	u.name AS u_name, u.role AS u_role, u.service AS u_service, u.disabled AS u_disabled, u.created_at AS u_created_at
FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = ?`, hash).Scan(&rows).Error
	if err != nil {
		return nil, nil, fmt.Errorf("look up session: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil, fmt.Errorf("session: %w", errs.ErrNotFound)
	}
	r := rows[0]
	sess := &identity.Session{UserID: r.UserID, CSRFToken: r.CSRFToken, CreatedAt: r.CreatedAt.UTC(), LastSeen: r.LastSeen.UTC()}
	u := &identity.User{ID: r.UserID, Name: r.UName, Role: r.URole, Service: r.UService, Disabled: r.UDisabled,
		CreatedAt: r.UCreatedAt.UTC()}
	return sess, u, nil
}

// TouchSession implements identity.SessionStore.
func (s *SessionStore) TouchSession(ctx context.Context, hash string, at time.Time) error {
	res := s.db.gorm.WithContext(ctx).Model(&sessionRow{}).Where("hash = ?", hash).Update("last_seen", dbTime(at))
	if res.Error != nil {
		return fmt.Errorf("touch session: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("session: %w", errs.ErrNotFound)
	}
	return nil
}

// DeleteSession implements identity.SessionStore.
func (s *SessionStore) DeleteSession(ctx context.Context, hash string) error {
	res := s.db.gorm.WithContext(ctx).Exec("DELETE FROM sessions WHERE hash = ?", hash)
	if res.Error != nil {
		return fmt.Errorf("delete session: %w", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("session: %w", errs.ErrNotFound)
	}
	return nil
}

// DeleteSessionsBefore implements identity.SessionStore.
func (s *SessionStore) DeleteSessionsBefore(ctx context.Context, lastSeen, created time.Time) (int64, error) {
	res := s.db.gorm.WithContext(ctx).Exec("DELETE FROM sessions WHERE last_seen < ? OR created_at < ?",
		dbTime(lastSeen), dbTime(created))
	if res.Error != nil {
		return 0, fmt.Errorf("prune sessions: %w", res.Error)
	}
	return res.RowsAffected, nil
}
