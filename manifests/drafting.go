package manifests

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/signing"
)

// Errors of the signing workflow; the admin API gives each its own code.
var (
	ErrInvalid          = errors.New("invalid")
	ErrUnknownKey       = errors.New("unknown key")
	ErrKeyNotAuthorized = errors.New("key not authorized for this role")
	ErrBadSignature     = errors.New("signature does not verify")
	ErrStaleDraft       = errors.New("stale draft")
	ErrNotInitialized   = errors.New("repository not initialized")
)

// RootParams describe a root to draft: the offline keys and thresholds.
// The server's online key becomes the snapshot and timestamp key.
type RootParams struct {
	RootKeys         []*metadata.Key
	RootThreshold    int
	TargetsKeys      []*metadata.Key
	TargetsThreshold int
}

// Release is a target to add (or replace) in a new targets version. The
// artifact must already be uploaded under TargetKey(Path, SHA256).
type Release struct {
	Path   string
	Length int64
	SHA256 string
	Custom TargetCustom
}

// CreateRootDraft drafts root v1 with an empty targets v1 (the ceremony)
// or, once a root is published, the next root (a rotation). A rotation that
// changes the targets keys or threshold also re-drafts the current targets,
// since the new targets keys must sign it before clients accept it.
func (r *Repository) CreateRootDraft(ctx context.Context, p RootParams, by string) (*Draft, error) {
	online := r.online.Key()
	onlineID := r.online.KeyID()
	if err := checkRoleKeys("root", p.RootKeys, p.RootThreshold, onlineID); err != nil {
		return nil, err
	}
	if err := checkRoleKeys("targets", p.TargetsKeys, p.TargetsThreshold, onlineID); err != nil {
		return nil, err
	}
	// Drafts are rare: build on what the store holds, not on a cache that
	// may lag behind another replica.
	if err := r.Load(ctx); err != nil {
		return nil, err
	}
	st := r.state.Load()
	now := r.now()
	root := metadata.Root(expires(now, r.expiry.Root))
	root.Signed.Version = st.rootVersion() + 1
	for _, k := range p.RootKeys {
		if err := root.Signed.AddKey(k, metadata.ROOT); err != nil {
			return nil, fmt.Errorf("%w: root key: %w", ErrInvalid, err)
		}
	}
	for _, k := range p.TargetsKeys {
		if err := root.Signed.AddKey(k, metadata.TARGETS); err != nil {
			return nil, fmt.Errorf("%w: targets key: %w", ErrInvalid, err)
		}
	}
	for _, role := range []string{metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(online, role); err != nil {
			return nil, fmt.Errorf("online key: %w", err)
		}
	}
	root.Signed.Roles[metadata.ROOT].Threshold = p.RootThreshold
	root.Signed.Roles[metadata.TARGETS].Threshold = p.TargetsThreshold

	d := &Draft{Kind: DraftKindRotate}
	var err error
	if d.Root, err = root.ToBytes(false); err != nil {
		return nil, err
	}
	switch {
	case st.root == nil:
		d.Kind = DraftKindInit
		targets := metadata.Targets(expires(now, r.expiry.Targets))
		if d.Targets, err = targets.ToBytes(false); err != nil {
			return nil, err
		}
	case st.targets != nil && !sameRole(st.root.Signed.Roles[metadata.TARGETS], root.Signed.Roles[metadata.TARGETS]):
		if d.Targets, err = r.nextTargets(st, now, func(map[string]*metadata.TargetFiles) error { return nil }); err != nil {
			return nil, err
		}
	}
	return r.createDraft(ctx, d, by)
}

// CreateReleaseDraft drafts the next targets version with rel added, or
// replacing the target of the same path.
func (r *Repository) CreateReleaseDraft(ctx context.Context, rel Release, by string) (*Draft, error) {
	if err := ValidateTargetPath(rel.Path); err != nil {
		return nil, fmt.Errorf("%w: path: %w", ErrInvalid, err)
	}
	sum, err := hex.DecodeString(rel.SHA256)
	if err != nil || len(sum) != sha256.Size || hex.EncodeToString(sum) != rel.SHA256 {
		return nil, fmt.Errorf("%w: sha256 %q: want 64 lowercase hex digits", ErrInvalid, rel.SHA256)
	}
	if err := rel.Custom.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	rel.Custom.Released = r.now().UTC().Truncate(time.Second)
	info, err := r.blobs.Stat(ctx, TargetKey(rel.Path, rel.SHA256))
	if errors.Is(err, ErrNotExist) {
		return nil, fmt.Errorf("%w: artifact %s with sha256 %s is not uploaded", ErrInvalid, rel.Path, rel.SHA256)
	}
	if err != nil {
		return nil, err
	}
	if info.Size != rel.Length {
		return nil, fmt.Errorf("%w: artifact %s is %d bytes, not %d", ErrInvalid, rel.Path, info.Size, rel.Length)
	}
	custom, err := json.Marshal(rel.Custom)
	if err != nil {
		return nil, err
	}
	raw := json.RawMessage(custom)
	if err := r.Load(ctx); err != nil {
		return nil, err
	}
	st := r.state.Load()
	d := &Draft{Kind: DraftKindRelease}
	d.Targets, err = r.nextTargets(st, r.now(), func(t map[string]*metadata.TargetFiles) error {
		t[rel.Path] = &metadata.TargetFiles{Length: rel.Length, Hashes: metadata.Hashes{"sha256": sum}, Custom: &raw}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.createDraft(ctx, d, by)
}

// CreateYankDraft drafts the next targets version without targetPath, so
// that no handset is offered it again.
func (r *Repository) CreateYankDraft(ctx context.Context, targetPath, by string) (*Draft, error) {
	if err := r.Load(ctx); err != nil {
		return nil, err
	}
	st := r.state.Load()
	d := &Draft{Kind: DraftKindYank}
	var err error
	d.Targets, err = r.nextTargets(st, r.now(), func(t map[string]*metadata.TargetFiles) error {
		if _, ok := t[targetPath]; !ok {
			return fmt.Errorf("target %q is not published: %w", targetPath, ErrNotExist)
		}
		delete(t, targetPath)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.createDraft(ctx, d, by)
}

// nextTargets builds the unsigned next targets version from the published
// one, changed by edit.
func (r *Repository) nextTargets(st *state, now time.Time, edit func(map[string]*metadata.TargetFiles) error) ([]byte, error) {
	if st.targets == nil {
		return nil, fmt.Errorf("%w: no targets published yet; run the root ceremony (otactl repo init) first", ErrNotInitialized)
	}
	next := metadata.Targets(expires(now, r.expiry.Targets))
	next.Signed.Version = st.targets.Signed.Version + 1
	for p, t := range st.targets.Signed.Targets {
		c := *t
		next.Signed.Targets[p] = &c
	}
	next.Signed.Delegations = st.targets.Signed.Delegations
	if err := edit(next.Signed.Targets); err != nil {
		return nil, err
	}
	return next.ToBytes(false)
}

func (r *Repository) createDraft(ctx context.Context, d *Draft, by string) (*Draft, error) {
	d.ID = newDraftID()
	d.State = DraftPending
	d.CreatedBy = by
	d.CreatedAt = r.now().UTC()
	d.UpdatedAt = d.CreatedAt
	if err := r.drafts.CreateDraft(ctx, d); err != nil {
		return nil, err
	}
	r.log.InfoContext(ctx, "draft created", slog.String("draft", d.ID), slog.String("kind", d.Kind), slog.String("by", by))
	return d, nil
}

// DiscardDraft abandons a pending draft so another can be created.
func (r *Repository) DiscardDraft(ctx context.Context, id string) error {
	return r.drafts.SetDraftState(ctx, id, DraftDiscarded)
}

func newDraftID() string {
	var b [9]byte
	rand.Read(b[:])
	return "d-" + hex.EncodeToString(b[:])
}

func expires(now time.Time, d time.Duration) time.Time {
	return now.Add(d).UTC().Truncate(time.Second)
}

// checkRoleKeys validates one offline role's keys. The online key may not
// be among them: the server must never be able to sign root or targets.
func checkRoleKeys(role string, keys []*metadata.Key, threshold int, onlineID string) error {
	if len(keys) == 0 {
		return fmt.Errorf("%w: %s role needs at least one key", ErrInvalid, role)
	}
	seen := map[string]bool{}
	for i, k := range keys {
		if err := signing.ValidateKey(k); err != nil {
			return fmt.Errorf("%w: %s key %d: %w", ErrInvalid, role, i+1, err)
		}
		id, err := k.ID()
		if err != nil {
			return fmt.Errorf("%w: %s key %d: %w", ErrInvalid, role, i+1, err)
		}
		if id == onlineID {
			return fmt.Errorf("%w: %s key %s is the server's online key; offline roles need offline keys", ErrInvalid, role, short(id))
		}
		if seen[id] {
			return fmt.Errorf("%w: %s key %s listed twice", ErrInvalid, role, short(id))
		}
		seen[id] = true
	}
	if threshold < 1 || threshold > len(keys) {
		return fmt.Errorf("%w: %s threshold %d: want 1 to %d", ErrInvalid, role, threshold, len(keys))
	}
	return nil
}

func sameRole(a, b *metadata.Role) bool {
	x, y := slices.Clone(a.KeyIDs), slices.Clone(b.KeyIDs)
	slices.Sort(x)
	slices.Sort(y)
	return a.Threshold == b.Threshold && slices.Equal(x, y)
}

func short(keyID string) string {
	if len(keyID) > 12 {
		return keyID[:12]
	}
	return keyID
}
