package sqlstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/patchfleet/ota/manifests"
)

// DraftStore keeps TUF drafts; it implements manifests.DraftStore.
type DraftStore struct{ db *DB }

var _ manifests.DraftStore = (*DraftStore)(nil)

// Drafts returns the draft store of db.
func (db *DB) Drafts() *DraftStore { return &DraftStore{db: db} }

type draftRow struct {
	ID          string `gorm:"primaryKey"`
	State       string
	Kind        string
	CreatedBy   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	RootDoc     *string
	TargetsDoc  *string
	PendingSlot *int
}

func (draftRow) TableName() string { return "tuf_drafts" }

type draftSignatureRow struct {
	DraftID   string `gorm:"primaryKey"`
	Part      string `gorm:"primaryKey"`
	KeyID     string `gorm:"primaryKey;column:keyid"`
	Sig       string
	CreatedAt time.Time
}

func (draftSignatureRow) TableName() string { return "tuf_draft_signatures" }

func optionalText(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

func optionalBytes(s *string) []byte {
	if s == nil {
		return nil
	}
	return []byte(*s)
}

// CreateDraft implements manifests.DraftStore.
func (s *DraftStore) CreateDraft(ctx context.Context, d *manifests.Draft) error {
	one := 1
	row := draftRow{ID: d.ID, State: d.State, Kind: d.Kind, CreatedBy: d.CreatedBy,
		CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
		RootDoc: optionalText(d.Root), TargetsDoc: optionalText(d.Targets), PendingSlot: &one}
	err := s.db.gorm.WithContext(ctx).Create(&row).Error
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		pending, perr := s.PendingDraft(ctx)
		if perr != nil {
			return manifests.ErrDraftPending
		}
		return fmt.Errorf("%w: draft %s (%s, by %s); sign it or discard it first", manifests.ErrDraftPending, pending.ID, pending.Kind, pending.CreatedBy)
	}
	if err != nil {
		return fmt.Errorf("create draft: %w", err)
	}
	return nil
}

// Draft implements manifests.DraftStore.
func (s *DraftStore) Draft(ctx context.Context, id string) (*manifests.Draft, error) {
	return s.load(ctx, "id = ?", id)
}

// PendingDraft implements manifests.DraftStore.
func (s *DraftStore) PendingDraft(ctx context.Context) (*manifests.Draft, error) {
	return s.load(ctx, "pending_slot = 1")
}

func (s *DraftStore) load(ctx context.Context, where string, args ...any) (*manifests.Draft, error) {
	var row draftRow
	err := s.db.gorm.WithContext(ctx).Where(where, args...).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("draft: %w", manifests.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("load draft: %w", err)
	}
	var sigs []draftSignatureRow
	if err := s.db.gorm.WithContext(ctx).Where("draft_id = ?", row.ID).Order("part, keyid").Find(&sigs).Error; err != nil {
		return nil, fmt.Errorf("load draft signatures: %w", err)
	}
	d := fromDraftRow(row)
	for _, sr := range sigs {
		sig, err := hex.DecodeString(sr.Sig)
		if err != nil {
			return nil, fmt.Errorf("draft %s: stored signature by %s is not hex: %w", row.ID, sr.KeyID, err)
		}
		d.Signatures = append(d.Signatures, manifests.DraftSignature{Part: sr.Part, KeyID: sr.KeyID, Sig: sig})
	}
	return d, nil
}

func fromDraftRow(row draftRow) *manifests.Draft {
	return &manifests.Draft{ID: row.ID, State: row.State, Kind: row.Kind, CreatedBy: row.CreatedBy,
		CreatedAt: row.CreatedAt.UTC(), UpdatedAt: row.UpdatedAt.UTC(),
		Root: optionalBytes(row.RootDoc), Targets: optionalBytes(row.TargetsDoc)}
}

// ListDrafts implements manifests.DraftStore. Signatures are loaded too:
// views count them.
func (s *DraftStore) ListDrafts(ctx context.Context, limit int) ([]*manifests.Draft, error) {
	var rows []draftRow
	if err := s.db.gorm.WithContext(ctx).Order("created_at DESC, id").Limit(limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list drafts: %w", err)
	}
	out := make([]*manifests.Draft, 0, len(rows))
	for _, row := range rows {
		d, err := s.Draft(ctx, row.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// AddSignatures implements manifests.DraftStore: all of sigs or none, and
// only while the draft is pending.
func (s *DraftStore) AddSignatures(ctx context.Context, id string, sigs []manifests.DraftSignature) error {
	now := s.db.now()
	return s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var row draftRow
		q := tx.Where("id = ?", id)
		if s.db.dialect == dialectPostgres {
			// Hold the row so a concurrent publish cannot move it on
			// while these signatures land.
			q = q.Clauses(clause.Locking{Strength: "UPDATE"})
		}
		err := q.Take(&row).Error
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return fmt.Errorf("draft %s: %w", id, manifests.ErrNotExist)
		}
		if err != nil {
			return err
		}
		if row.State != manifests.DraftPending {
			return fmt.Errorf("draft %s is %s: %w", id, row.State, manifests.ErrDraftNotPending)
		}
		rows := make([]draftSignatureRow, len(sigs))
		for i, sg := range sigs {
			rows[i] = draftSignatureRow{DraftID: id, Part: sg.Part, KeyID: sg.KeyID, Sig: hex.EncodeToString(sg.Sig), CreatedAt: now}
		}
		return tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "draft_id"}, {Name: "part"}, {Name: "keyid"}},
			DoUpdates: clause.AssignmentColumns([]string{"sig", "created_at"}),
		}).Create(&rows).Error
	})
}

// SetDraftState implements manifests.DraftStore.
func (s *DraftStore) SetDraftState(ctx context.Context, id, state string) error {
	res := s.db.gorm.WithContext(ctx).Model(&draftRow{}).
		Where("id = ? AND state = ?", id, manifests.DraftPending).
		Updates(map[string]any{"state": state, "pending_slot": nil, "updated_at": s.db.now()})
	if res.Error != nil {
		return fmt.Errorf("set draft state: %w", res.Error)
	}
	if res.RowsAffected == 1 {
		return nil
	}
	d, err := s.Draft(ctx, id)
	if err != nil {
		return err
	}
	return fmt.Errorf("draft %s is %s: %w", id, d.State, manifests.ErrDraftNotPending)
}
