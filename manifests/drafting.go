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
	// Incrementals are payloads of the same patch, each for handsets on
	// one starting build, uploaded like the full image. Each becomes a
	// target of its own, signed with the release, whose custom metadata
	// is the release's with Incremental set; the full image's lists them
	// (TargetCustom.Incrementals).
	Incrementals []IncrementalPayload
}

// IncrementalPayload is one incremental payload of a Release.
type IncrementalPayload struct {
	FromBuild string
	Path      string
	Length    int64
	SHA256    string
	Format    string // FormatPackage or FormatZstdPatch
}

// artifact is an uploaded file a draft names.
type artifact struct {
	what, path, sha256 string
	length             int64
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
	if rel.Custom.Incrementals != nil || rel.Custom.Incremental != nil {
		return nil, fmt.Errorf("%w: custom: incrementals and incremental are set by the server from the release's incrementals", ErrInvalid)
	}
	if len(rel.Incrementals) > MaxIncrementals {
		return nil, fmt.Errorf("%w: incrementals: at most %d", ErrInvalid, MaxIncrementals)
	}
	files := []artifact{{what: "path", path: rel.Path, sha256: rel.SHA256, length: rel.Length}}
	paths := map[string]bool{rel.Path: true}
	for i, inc := range rel.Incrementals {
		what := fmt.Sprintf("incrementals[%d]", i)
		if err := ValidateTargetPath(inc.Path); err != nil {
			return nil, fmt.Errorf("%w: %s.path: %w", ErrInvalid, what, err)
		}
		if paths[inc.Path] {
			return nil, fmt.Errorf("%w: %s.path %q: every payload needs a path of its own", ErrInvalid, what, inc.Path)
		}
		paths[inc.Path] = true
		if err := ValidateFormat(inc.Format); err != nil {
			return nil, fmt.Errorf("%w: %s.format: %w", ErrInvalid, what, err)
		}
		if !buildPattern.MatchString(inc.FromBuild) {
			return nil, fmt.Errorf("%w: %s.from_build %q: want 1-64 letters, digits, '.', '_', '+' or '-'", ErrInvalid, what, inc.FromBuild)
		}
		if rel.Custom.Incrementals == nil {
			rel.Custom.Incrementals = map[string]string{}
		}
		if _, dup := rel.Custom.Incrementals[inc.FromBuild]; dup {
			return nil, fmt.Errorf("%w: %s.from_build %q: one incremental per starting build", ErrInvalid, what, inc.FromBuild)
		}
		if inc.FromBuild == rel.Custom.InstallsBuild {
			return nil, fmt.Errorf("%w: %s.from_build %q is the build the release installs", ErrInvalid, what, inc.FromBuild)
		}
		rel.Custom.Incrementals[inc.FromBuild] = inc.Path
		files = append(files, artifact{what: what, path: inc.Path, sha256: inc.SHA256, length: inc.Length})
	}
	if err := rel.Custom.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	rel.Custom.Released = r.now().UTC().Truncate(time.Second)
	sums := make([][]byte, len(files))
	for i, f := range files {
		sum, err := r.checkArtifact(ctx, f)
		if err != nil {
			return nil, err
		}
		sums[i] = sum
	}
	customs := make([]json.RawMessage, len(files))
	for i := range files {
		c := rel.Custom
		if i > 0 {
			inc := rel.Incrementals[i-1]
			c.Incrementals = nil
			c.Incremental = &Incremental{Of: rel.Path, FromBuild: inc.FromBuild, Format: inc.Format}
		}
		b, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		customs[i] = b
	}
	if err := r.Load(ctx); err != nil {
		return nil, err
	}
	st := r.state.Load()
	d := &Draft{Kind: DraftKindRelease}
	var err error
	d.Targets, err = r.nextTargets(st, r.now(), func(t map[string]*metadata.TargetFiles) error {
		// A release replaced drops the incrementals it had.
		dropIncrementals(t, rel.Path)
		for i, f := range files {
			if old, ok := t[f.path]; ok && i > 0 && incrementalOf(old) == "" {
				return fmt.Errorf("%w: %s.path %q is a published release of its own", ErrInvalid, f.what, f.path)
			}
			t[f.path] = &metadata.TargetFiles{Length: f.length, Hashes: metadata.Hashes{"sha256": sums[i]}, Custom: &customs[i]}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.createDraft(ctx, d, by)
}

// checkArtifact checks that f is uploaded with its length, and returns
// its decoded sha256.
func (r *Repository) checkArtifact(ctx context.Context, f artifact) ([]byte, error) {
	sum, err := hex.DecodeString(f.sha256)
	if err != nil || len(sum) != sha256.Size || hex.EncodeToString(sum) != f.sha256 {
		return nil, fmt.Errorf("%w: %s: sha256 %q: want 64 lowercase hex digits", ErrInvalid, f.what, f.sha256)
	}
	info, err := r.blobs.Stat(ctx, TargetKey(f.path, f.sha256))
	if errors.Is(err, ErrNotExist) {
		return nil, fmt.Errorf("%w: artifact %s with sha256 %s is not uploaded", ErrInvalid, f.path, f.sha256)
	}
	if err != nil {
		return nil, err
	}
	if info.Size != f.length {
		return nil, fmt.Errorf("%w: artifact %s is %d bytes, not %d", ErrInvalid, f.path, info.Size, f.length)
	}
	return sum, nil
}

// incrementalOf is the full image a target is an incremental payload
// of, or "".
func incrementalOf(t *metadata.TargetFiles) string {
	var c struct {
		Incremental *Incremental `json:"incremental"`
	}
	if t.Custom == nil || json.Unmarshal(*t.Custom, &c) != nil || c.Incremental == nil {
		return ""
	}
	return c.Incremental.Of
}

// dropIncrementals removes the incremental payloads of the release at
// path from t.
func dropIncrementals(t map[string]*metadata.TargetFiles, path string) {
	for p, tf := range t {
		if incrementalOf(tf) == path {
			delete(t, p)
		}
	}
}

// CreateYankDraft drafts the next targets version without targetPath, and
// without its incremental payloads, so that no handset is offered it
// again.
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
		// Its incrementals go with it: nothing offers them alone.
		dropIncrementals(t, targetPath)
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
