package sqlstore

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// identitySchema is migration 8 with seq the dialect's column definition
// of audit_log's key (on SQLite an INTEGER PRIMARY KEY is the rowid, the
// cheapest key there is).
//
//   - users are people (with an argon2id password hash) and service
//     accounts (service, no password); the role is the user's, and every
//     token and session acts with it;
//   - sessions are dashboard logins by the sha256 of their cookie;
//     last_seen is indexed for the prune of idle sessions;
//   - api_tokens.user_id is the token's user; the role column stays for
//     old rows but is no longer read;
//   - audit_log is the hash chain of administrative actions (see
//     audit.AuditEntry), and audit_head its one-row head: appends lock
//     it, and it records the last entry so that entries cut from the
//     end of the log show;
//   - rollout_approvals are the four-eyes requests to widen a rollout
//     and what became of them.
func identitySchema(seq string) []string {
	return []string{
		`CREATE TABLE users (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL UNIQUE,
	role TEXT NOT NULL,
	password_hash TEXT NOT NULL,
	service BOOLEAN NOT NULL,
	disabled BOOLEAN NOT NULL,
	created_at TIMESTAMP NOT NULL
)`,
		`CREATE TABLE sessions (
	hash TEXT PRIMARY KEY,
	user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
	csrf_token TEXT NOT NULL,
	created_at TIMESTAMP NOT NULL,
	last_seen TIMESTAMP NOT NULL
)`,
		`CREATE INDEX sessions_user ON sessions (user_id)`,
		`CREATE INDEX sessions_last_seen ON sessions (last_seen)`,
		// SQLite accepts a REFERENCES clause on an added column only
		// with a NULL default, which this has; backfillIdentity sets it
		// on every existing token.
		`ALTER TABLE api_tokens ADD COLUMN user_id TEXT REFERENCES users (id)`,
		`CREATE INDEX api_tokens_user ON api_tokens (user_id)`,
		`CREATE TABLE audit_log (
	` + seq + `,
	at TIMESTAMP NOT NULL,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	object TEXT NOT NULL,
	reason TEXT NOT NULL,
	detail TEXT NOT NULL,
	prev_hash TEXT NOT NULL,
	hash TEXT NOT NULL
)`,
		`CREATE INDEX audit_log_actor ON audit_log (actor, seq)`,
		`CREATE INDEX audit_log_action ON audit_log (action, seq)`,
		`CREATE INDEX audit_log_at ON audit_log (at)`,
		`CREATE TABLE audit_head (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	seq BIGINT NOT NULL,
	hash TEXT NOT NULL
)`,
		`INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '')`,
		`CREATE TABLE rollout_approvals (
	id TEXT PRIMARY KEY,
	rollout_id TEXT NOT NULL REFERENCES rollouts (id),
	to_percent DOUBLE PRECISION NOT NULL,
	action TEXT NOT NULL,
	requested_by TEXT NOT NULL,
	requested_at TIMESTAMP NOT NULL,
	reason TEXT NOT NULL,
	state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'cancelled')),
	decided_by TEXT NOT NULL,
	decided_at TIMESTAMP,
	decision_reason TEXT NOT NULL
)`,
		`CREATE INDEX rollout_approvals_rollout ON rollout_approvals (rollout_id, state)`,
	}
}

// backfillIdentity is migration 8's data step: a service account for
// every existing token, and the rollout events so far as the first
// entries of the audit log.
func backfillIdentity(tx *gorm.DB, _ string) error {
	if err := backfillTokenUsers(tx); err != nil {
		return fmt.Errorf("token users: %w", err)
	}
	if err := backfillRolloutAudit(tx, backfillBatch); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// backfillTokenUsers gives each existing token its own service account
// with the token's name and role, so that every token keeps acting as it
// did. Old token names were free text and could repeat: the account
// name is the token name made valid (lower case, other characters as
// '-') and, when taken, suffixed "-2", "-3", ... in creation order.
func backfillTokenUsers(tx *gorm.DB) error {
	type oldToken struct {
		ID        string
		Name      string
		Role      string
		CreatedAt time.Time
	}
	var tokens []oldToken
	if err := tx.Raw("SELECT id, name, role, created_at FROM api_tokens ORDER BY created_at, id").Scan(&tokens).Error; err != nil {
		return err
	}
	taken := map[string]bool{}
	for _, t := range tokens {
		name := uniqueName(serviceAccountName(t.Name), taken)
		taken[name] = true
		u := userRow{ID: newUserID(), Name: name, Role: t.Role, Service: true, CreatedAt: dbTime(t.CreatedAt)}
		if err := tx.Create(&u).Error; err != nil {
			return fmt.Errorf("token %s: %w", t.ID, err)
		}
		if err := tx.Exec("UPDATE api_tokens SET user_id = ? WHERE id = ?", u.ID, t.ID).Error; err != nil {
			return fmt.Errorf("token %s: %w", t.ID, err)
		}
	}
	return nil
}

// serviceAccountName makes a token name into a valid user name
// (identity.ValidateUser), leaving room for a suffix.
func serviceAccountName(token string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(token) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := b.String()
	if name == "" || !isAlnum(name[0]) {
		name = "token-" + name
	}
	if len(name) > 56 {
		name = name[:56]
	}
	return name
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// uniqueName returns name, or name-2, name-3, ... the first not taken.
func uniqueName(name string, taken map[string]bool) string {
	if !taken[name] {
		return name
	}
	for i := 2; ; i++ {
		if n := name + "-" + strconv.Itoa(i); !taken[n] {
			return n
		}
	}
}

// newUserID is an id of the form identity.Users.Create gives.
func newUserID() string {
	var b [8]byte
	rand.Read(b[:])
	return "u-" + hex.EncodeToString(b[:])
}

// backfillBatch is how many rollout events the back-fill reads at once.
const backfillBatch = 500

// backfillRolloutAudit appends every rollout event to the audit log as
// rollout.RolloutEventAudit makes it, in the order (at, id), chained from
// the genesis, and sets the head. It reads the events in batches by
// keyset rather than all at once, batch at a time.
func backfillRolloutAudit(tx *gorm.DB, batch int) error {
	var prev *audit.AuditEntry
	var lastAt time.Time
	lastID := int64(-1)
	for {
		q := tx.Order("at, id").Limit(batch)
		if lastID >= 0 {
			q = q.Where("at > ? OR (at = ? AND id > ?)", lastAt, lastAt, lastID)
		}
		var rows []rolloutEventRow
		if err := q.Find(&rows).Error; err != nil {
			return fmt.Errorf("read rollout events: %w", err)
		}
		if len(rows) == 0 {
			break
		}
		entries := make([]auditRow, len(rows))
		for i := range rows {
			ev, err := rows[i].event()
			if err != nil {
				return err
			}
			e := rollout.RolloutEventAudit(ev)
			e.Chain(prev)
			entries[i] = toAuditRow(e)
			prev = &e
		}
		if err := tx.Create(&entries).Error; err != nil {
			return fmt.Errorf("append: %w", err)
		}
		last := rows[len(rows)-1]
		lastAt, lastID = last.At, last.ID
	}
	if prev == nil {
		return nil
	}
	return tx.Exec("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", prev.Seq, prev.Hash).Error
}

// identityLimitsSchema is migration 11:
//
//   - server_secrets holds secrets the replicas share, by name: the key
//     that signs device cookies (identity.DeviceCookies), made by the
//     migration's data step;
//   - api_tokens.expires_at is when a token stops working (NULL for
//     none; tokens are always made with one), parent_id the token a
//     token was minted with, which revoking revokes it with (REFERENCES
//     with a NULL default, which SQLite accepts on an added column).
var identityLimitsSchema = []string{
	`CREATE TABLE server_secrets (
	name TEXT PRIMARY KEY,
	secret TEXT NOT NULL,
	created_at TIMESTAMP NOT NULL
)`,
	`ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMP`,
	`ALTER TABLE api_tokens ADD COLUMN parent_id TEXT REFERENCES api_tokens (id)`,
	`CREATE INDEX api_tokens_parent ON api_tokens (parent_id)`,
}

// DeviceCookieSecret names the device cookies' key in server_secrets.
const DeviceCookieSecret = "device-cookie"

// backfillIdentityLimits is migration 11's data step: a random device
// cookie key; the tokens that had no expiry expire
// identity.DefaultTokenLifetime after the migration (not at once: the
// automation that holds them gets that long to mint new ones, which
// otad token list shows); and the live tokens of disabled users are
// revoked, as disabling now does, so that enabling them does not bring
// the tokens back.
func backfillIdentityLimits(tx *gorm.DB, _ string) error {
	var key [32]byte
	rand.Read(key[:])
	now := dbTime(time.Now())
	if err := tx.Exec("INSERT INTO server_secrets (name, secret, created_at) VALUES (?, ?, ?)",
		DeviceCookieSecret, hex.EncodeToString(key[:]), now).Error; err != nil {
		return fmt.Errorf("device cookie key: %w", err)
	}
	if err := tx.Exec("UPDATE api_tokens SET expires_at = ? WHERE expires_at IS NULL",
		now.Add(identity.DefaultTokenLifetime)).Error; err != nil {
		return fmt.Errorf("token expiry: %w", err)
	}
	if err := tx.Exec("UPDATE api_tokens SET revoked_at = ? WHERE revoked_at IS NULL AND user_id IN (SELECT id FROM users WHERE disabled = ?)",
		now, true).Error; err != nil {
		return fmt.Errorf("tokens of disabled users: %w", err)
	}
	return nil
}
