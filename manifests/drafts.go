package manifests

import (
	"context"
	"errors"
	"time"
)

// Draft states.
const (
	DraftPending   = "pending"
	DraftPublished = "published"
	DraftDiscarded = "discarded"
)

// Draft roles: the parts of a draft that carry signatures.
const (
	PartRoot    = "root"
	PartTargets = "targets"
)

// Draft is a proposed change to the offline-signed metadata: a new root, a
// new targets, or both (the first ceremony, and root rotations that change
// the targets keys). Release engineers sign each part on their own
// machines; the repository publishes the draft once every part has the
// signatures its threshold needs. At most one draft is pending at a time,
// so versions never race.
type Draft struct {
	ID        string
	State     string
	Kind      string // DraftKind*: what it does, for people and the changes list
	CreatedBy string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Root and Targets are the unsigned metadata documents (go-tuf JSON
	// with an empty signature list); nil when the draft does not change
	// that role.
	Root    []byte
	Targets []byte
	// Signatures collected so far.
	Signatures []DraftSignature
}

// Draft kinds.
const (
	DraftKindInit    = "init"    // root v1 and an empty targets v1
	DraftKindRotate  = "rotate"  // a new root (and targets, when its keys change)
	DraftKindRelease = "release" // targets with a target added or replaced
	DraftKindYank    = "yank"    // targets with a target removed
)

// DraftSignature is one key's signature over one part of a draft.
type DraftSignature struct {
	Part  string // PartRoot or PartTargets
	KeyID string
	Sig   []byte
}

// ErrDraftPending is returned when a draft is created while another one is
// still pending.
var ErrDraftPending = errors.New("another draft is pending")

// ErrDraftNotPending is returned when signatures arrive for, or a state
// change is asked of, a draft that is no longer pending.
var ErrDraftNotPending = errors.New("draft is not pending")

// DraftStore keeps drafts and their signatures. sqlstore implements it on
// SQLite and PostgreSQL.
type DraftStore interface {
	// CreateDraft stores d as pending; ErrDraftPending if one is pending.
	CreateDraft(ctx context.Context, d *Draft) error
	// Draft returns one draft with its signatures; ErrNotExist if unknown.
	Draft(ctx context.Context, id string) (*Draft, error)
	// PendingDraft returns the pending draft, or ErrNotExist.
	PendingDraft(ctx context.Context) (*Draft, error)
	// ListDrafts returns the newest drafts first, at most limit.
	ListDrafts(ctx context.Context, limit int) ([]*Draft, error)
	// AddSignatures stores sigs on a pending draft (replacing an earlier
	// signature by the same key over the same part), all or none;
	// ErrDraftNotPending if the draft is no longer pending.
	AddSignatures(ctx context.Context, id string, sigs []DraftSignature) error
	// SetDraftState moves a pending draft to state; ErrDraftNotPending if
	// it is not pending.
	SetDraftState(ctx context.Context, id, state string) error
}

// Locker serialises repository writes (publishing, re-signing) across
// every otad replica that shares the storage. unlock must be called.
type Locker interface {
	Lock(ctx context.Context) (unlock func(), err error)
}
