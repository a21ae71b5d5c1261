package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
)

// Lease is a named lease in the leases table; it implements server.Lease
// on both dialects, shared by every replica of the database.
type Lease struct {
	db   *DB
	name string
}

var _ server.Lease = (*Lease)(nil)

// Lease returns the lease called name. Nothing is written until Acquire.
func (db *DB) Lease(name string) *Lease { return &Lease{db: db, name: name} }

// acquireLeaseSQL inserts the lease, or takes over the row when its
// holder is the same (a renewal) or it expired: one statement. On a
// conflict PostgreSQL locks the row and evaluates the DO UPDATE's WHERE
// on its latest version, even against an INSERT of the same name still
// in flight, and SQLite has one writer at a time; so of two replicas
// racing for a free or expired lease the second sees the first's holder
// and expiry, and changes no row.
const acquireLeaseSQL = `INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder OR leases.expires_at < ?`

// Acquire implements server.Lease.
func (l *Lease) Acquire(ctx context.Context, holder string, ttl time.Duration, now time.Time) (bool, error) {
	if holder == "" || ttl <= 0 {
		return false, fmt.Errorf("lease %s: want a holder and a positive ttl: %w", l.name, errs.ErrInvalid)
	}
	res := l.db.gorm.WithContext(ctx).Exec(acquireLeaseSQL, l.name, holder, dbTime(now.Add(ttl)), dbTime(now))
	if res.Error != nil {
		return false, fmt.Errorf("lease %s: acquire: %w", l.name, res.Error)
	}
	return res.RowsAffected == 1, nil
}

// Release implements server.Lease. Releasing a lease holder does not
// have (any more) changes nothing.
func (l *Lease) Release(ctx context.Context, holder string) error {
	if err := l.db.gorm.WithContext(ctx).Exec("DELETE FROM leases WHERE name = ? AND holder = ?", l.name, holder).Error; err != nil {
		return fmt.Errorf("lease %s: release: %w", l.name, err)
	}
	return nil
}
