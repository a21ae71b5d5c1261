package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/audit"
)

// AuditStore keeps the hash-chained audit log; it implements
// audit.AuditStore.
type AuditStore struct{ db *DB }

var _ audit.AuditStore = (*AuditStore)(nil)

// Audit returns the audit store of db.
func (db *DB) Audit() *AuditStore { return &AuditStore{db: db} }

// Audit list limits.
const (
	defaultAuditListLimit = 100
	maxAuditListLimit     = 1000
)

type auditRow struct {
	Seq      int64 `gorm:"primaryKey;autoIncrement:false"`
	At       time.Time
	Actor    string
	Action   string
	Object   string
	Reason   string
	Detail   string
	PrevHash string
	Hash     string
}

func (auditRow) TableName() string { return "audit_log" }

func toAuditRow(e audit.AuditEntry) auditRow {
	return auditRow{Seq: e.Seq, At: dbTime(e.At), Actor: e.Actor, Action: e.Action, Object: e.Object,
		Reason: e.Reason, Detail: e.Detail, PrevHash: e.PrevHash, Hash: e.Hash}
}

func (r *auditRow) entry() audit.AuditEntry {
	return audit.AuditEntry{Seq: r.Seq, At: r.At.UTC(), Actor: r.Actor, Action: r.Action, Object: r.Object,
		Reason: r.Reason, Detail: r.Detail, PrevHash: r.PrevHash, Hash: r.Hash}
}

// AppendAudit implements audit.AuditStore.
func (s *AuditStore) AppendAudit(ctx context.Context, entries ...audit.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return s.db.appendAudit(tx, entries)
	})
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	return nil
}

// appendAudit chains entries after the log's head and appends them, in
// tx, which the stores' write transactions call so that an action and
// its entry commit together. It locks the head row: PostgreSQL with FOR
// UPDATE, held until tx ends, so concurrent appends (from any replica)
// chain one after the other; on SQLite the write transaction already
// holds the database's one write lock. Callers take it last in their
// transaction, so that every transaction takes the locks in one order
// (their rows, then the head) and none waits on the head while holding
// a row another waiter needs.
func (db *DB) appendAudit(tx *gorm.DB, entries []audit.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	q := "SELECT seq, hash FROM audit_head WHERE id = 1"
	if db.dialect == dialectPostgres {
		q += " FOR UPDATE"
	}
	var head []struct {
		Seq  int64
		Hash string
	}
	if err := tx.Raw(q).Scan(&head).Error; err != nil {
		return fmt.Errorf("lock audit head: %w", err)
	}
	if len(head) != 1 {
		return fmt.Errorf("audit head: got %d rows, want 1 (has the database been migrated?)", len(head))
	}
	var prev *audit.AuditEntry
	if head[0].Seq > 0 {
		prev = &audit.AuditEntry{Seq: head[0].Seq, Hash: head[0].Hash}
	}
	rows := make([]auditRow, len(entries))
	for i := range entries {
		e := entries[i]
		e.Chain(prev)
		rows[i] = toAuditRow(e)
		prev = &e
	}
	if err := tx.Create(&rows).Error; err != nil {
		return fmt.Errorf("insert audit entries: %w", err)
	}
	if err := tx.Exec("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", prev.Seq, prev.Hash).Error; err != nil {
		return fmt.Errorf("move audit head: %w", err)
	}
	return nil
}

// ListAudit implements audit.AuditStore. An Action prefix ("rollout.")
// is the range [prefix, prefix with its '.' as '/'), which the (action,
// seq) index serves without LIKE and its escaping.
func (s *AuditStore) ListAudit(ctx context.Context, q audit.AuditQuery) ([]audit.AuditEntry, error) {
	g := s.db.gorm.WithContext(ctx).Model(&auditRow{})
	if q.Actor != "" {
		g = g.Where("actor = ?", q.Actor)
	}
	switch {
	case strings.HasSuffix(q.Action, "."):
		g = g.Where("action >= ? AND action < ?", q.Action, strings.TrimSuffix(q.Action, ".")+"/")
	case q.Action != "":
		g = g.Where("action = ?", q.Action)
	}
	if q.Object != "" {
		g = g.Where("object = ?", q.Object)
	}
	if !q.Since.IsZero() {
		g = g.Where("at >= ?", dbTime(q.Since))
	}
	if !q.Until.IsZero() {
		g = g.Where("at < ?", dbTime(q.Until))
	}
	if q.Before > 0 {
		g = g.Where("seq < ?", q.Before)
	}
	limit := q.Limit
	switch {
	case limit < 1:
		limit = defaultAuditListLimit
	case limit > maxAuditListLimit:
		limit = maxAuditListLimit
	}
	var rows []auditRow
	if err := g.Order("seq DESC").Limit(limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	out := make([]audit.AuditEntry, len(rows))
	for i := range rows {
		out[i] = rows[i].entry()
	}
	return out, nil
}

// WalkAudit implements audit.AuditStore. It reads the log and then the
// head in one read-only transaction, a snapshot on both dialects
// (REPEATABLE READ on PostgreSQL, a read transaction in WAL mode on
// SQLite), so that appends meanwhile neither show nor look like a
// break. Rows stream: the log is never all in memory.
func (s *AuditStore) WalkAudit(ctx context.Context, fn func(audit.AuditEntry) error) (int64, string, error) {
	var headSeq int64
	var headHash string
	opts := &sql.TxOptions{ReadOnly: true}
	if s.db.dialect == dialectPostgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		rows, err := tx.Raw("SELECT seq, at, actor, action, object, reason, detail, prev_hash, hash FROM audit_log ORDER BY seq").Rows()
		if err != nil {
			return fmt.Errorf("walk audit: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var r auditRow
			if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Action, &r.Object, &r.Reason, &r.Detail, &r.PrevHash, &r.Hash); err != nil {
				return fmt.Errorf("walk audit: %w", err)
			}
			if err := fn(r.entry()); err != nil {
				return err
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("walk audit: %w", err)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("walk audit: %w", err)
		}
		var head []struct {
			Seq  int64
			Hash string
		}
		if err := tx.Raw("SELECT seq, hash FROM audit_head WHERE id = 1").Scan(&head).Error; err != nil {
			return fmt.Errorf("read audit head: %w", err)
		}
		if len(head) != 1 {
			return fmt.Errorf("audit head: got %d rows, want 1", len(head))
		}
		headSeq, headHash = head[0].Seq, head[0].Hash
		return nil
	}, opts)
	if err != nil {
		return 0, "", err
	}
	return headSeq, headHash, nil
}
