package manifests

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
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

// parsedDraft is a draft with its parts decoded.
type parsedDraft struct {
	*Draft
	root    *metadata.Metadata[metadata.RootType]
	targets *metadata.Metadata[metadata.TargetsType]
	payload map[string][]byte // part -> canonical bytes that are signed
}

func parseDraft(d *Draft) (*parsedDraft, error) {
	p := &parsedDraft{Draft: d, payload: map[string][]byte{}}
	var err error
	if d.Root != nil {
		if p.root, err = (&metadata.Metadata[metadata.RootType]{}).FromBytes(d.Root); err != nil {
			return nil, fmt.Errorf("draft %s root: %w", d.ID, err)
		}
		if p.payload[PartRoot], err = signing.CanonicalSigned(p.root.Signed); err != nil {
			return nil, err
		}
	}
	if d.Targets != nil {
		if p.targets, err = (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(d.Targets); err != nil {
			return nil, fmt.Errorf("draft %s targets: %w", d.ID, err)
		}
		if p.payload[PartTargets], err = signing.CanonicalSigned(p.targets.Signed); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Digest identifies a draft's exact content; a signature upload names the
// digest it was made for, so a signature over an older draft is refused.
func (d *Draft) Digest() string {
	h := sha256.New()
	for _, part := range [][]byte{d.Root, d.Targets} {
		sum := sha256.Sum256(part)
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// requirement is one threshold a part of a draft must meet.
type requirement struct {
	part string
	what string // for people: "current root's root keys"
	keys map[string]*metadata.Key
	role *metadata.Role
}

// requirements lists the thresholds of d against the published state:
// a new root needs the current root's root threshold (if any) and its own;
// targets need the threshold of the root that will be in force.
func requirements(st *state, d *parsedDraft) ([]requirement, error) {
	var reqs []requirement
	governing := st.root
	if d.root != nil {
		if st.root != nil {
			reqs = append(reqs, requirement{PartRoot, fmt.Sprintf("root v%d's root keys", st.rootVersion()),
				st.root.Signed.Keys, st.root.Signed.Roles[metadata.ROOT]})
		}
		reqs = append(reqs, requirement{PartRoot, fmt.Sprintf("new root v%d's root keys", d.root.Signed.Version),
			d.root.Signed.Keys, d.root.Signed.Roles[metadata.ROOT]})
		governing = d.root
	}
	if d.targets != nil {
		if governing == nil {
			return nil, fmt.Errorf("%w: no root to check targets signatures against", ErrNotInitialized)
		}
		reqs = append(reqs, requirement{PartTargets, fmt.Sprintf("root v%d's targets keys", governing.Signed.Version),
			governing.Signed.Keys, governing.Signed.Roles[metadata.TARGETS]})
	}
	return reqs, nil
}

// checkVersions returns ErrStaleDraft when d no longer follows the
// published state (another draft published first).
func checkVersions(st *state, d *parsedDraft) error {
	if d.root != nil && d.root.Signed.Version != st.rootVersion()+1 {
		return fmt.Errorf("%w: draft root v%d, but root v%d is published", ErrStaleDraft, d.root.Signed.Version, st.rootVersion())
	}
	if d.targets != nil && d.targets.Signed.Version != st.targetsVersion()+1 {
		return fmt.Errorf("%w: draft targets v%d, but targets v%d is published", ErrStaleDraft, d.targets.Signed.Version, st.targetsVersion())
	}
	return nil
}

// PartStatus tells how far one threshold of a draft is.
type PartStatus struct {
	Part      string   `json:"part"`
	What      string   `json:"what"`
	Threshold int      `json:"threshold"`
	KeyIDs    []string `json:"keyids"`
	Signed    []string `json:"signed"`
}

// Met reports whether the threshold is reached.
func (p PartStatus) Met() bool { return len(p.Signed) >= p.Threshold }

func tally(reqs []requirement, d *parsedDraft) []PartStatus {
	out := make([]PartStatus, 0, len(reqs))
	for _, q := range reqs {
		var sigs []metadata.Signature
		for _, s := range d.Signatures {
			if s.Part == q.part {
				sigs = append(sigs, metadata.Signature{KeyID: s.KeyID, Signature: s.Sig})
			}
		}
		valid := signing.CountValid(q.keys, signing.Threshold{KeyIDs: q.role.KeyIDs, Threshold: q.role.Threshold},
			d.payload[q.part], sigs)
		slices.Sort(valid)
		out = append(out, PartStatus{Part: q.part, What: q.what, Threshold: q.role.Threshold,
			KeyIDs: slices.Sorted(slices.Values(q.role.KeyIDs)), Signed: valid})
	}
	return out
}

// AddSignatures verifies sigs against draft id and stores them, all or
// none; once every threshold is met the draft is published. digest must be
// the Digest of the draft the signatures were made over.
func (r *Repository) AddSignatures(ctx context.Context, id, digest string, sigs []DraftSignature) (*DraftView, error) {
	d, err := r.drafts.Draft(ctx, id)
	if err != nil {
		return nil, err
	}
	if d.State != DraftPending {
		return nil, fmt.Errorf("%w: draft %s is %s", ErrStaleDraft, id, d.State)
	}
	if digest != d.Digest() {
		return nil, fmt.Errorf("%w: signatures were made over another version of draft %s (digest %s, the draft is %s); fetch it again",
			ErrStaleDraft, id, short(digest), short(d.Digest()))
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: no signatures", ErrInvalid)
	}
	pd, err := parseDraft(d)
	if err != nil {
		return nil, err
	}
	st, err := r.stateFor(ctx, pd)
	if err != nil {
		return nil, err
	}
	if err := checkVersions(st, pd); err != nil {
		return nil, err
	}
	reqs, err := requirements(st, pd)
	if err != nil {
		return nil, err
	}
	for _, s := range sigs {
		if err := checkSignature(reqs, pd, s); err != nil {
			return nil, err
		}
	}
	if err := r.drafts.AddSignatures(ctx, id, sigs); err != nil {
		return nil, err
	}
	r.log.InfoContext(ctx, "draft signed", slog.String("draft", id), slog.Int("signatures", len(sigs)))
	if _, err := r.tryPublish(ctx, id); err != nil {
		return nil, err
	}
	return r.DraftView(ctx, id)
}

// stateFor returns the published state a draft builds on. The cache may
// lag behind what another replica published (it refreshes every few
// seconds); when the draft does not follow the cached state, reload once.
func (r *Repository) stateFor(ctx context.Context, pd *parsedDraft) (*state, error) {
	st := r.state.Load()
	if checkVersions(st, pd) == nil {
		return st, nil
	}
	if err := r.Load(ctx); err != nil {
		return nil, err
	}
	return r.state.Load(), nil
}

// checkSignature verifies one uploaded signature, telling apart a key the
// repository does not know, a known key without authority over that part,
// and a signature that does not verify.
func checkSignature(reqs []requirement, d *parsedDraft, s DraftSignature) error {
	if d.payload[s.Part] == nil {
		return fmt.Errorf("%w: draft %s has no %q part", ErrInvalid, d.ID, s.Part)
	}
	var key *metadata.Key
	known := false
	for _, q := range reqs {
		if q.part != s.Part {
			continue
		}
		if _, ok := q.keys[s.KeyID]; ok {
			known = true
		}
		if slices.Contains(q.role.KeyIDs, s.KeyID) {
			key = q.keys[s.KeyID]
		}
	}
	switch {
	case key != nil:
	case known:
		return fmt.Errorf("%w: key %s may not sign %s", ErrKeyNotAuthorized, short(s.KeyID), s.Part)
	default:
		return fmt.Errorf("%w: key %s is not in the root that governs %s", ErrUnknownKey, short(s.KeyID), s.Part)
	}
	if err := signing.VerifySignature(key, d.payload[s.Part], s.Sig); err != nil {
		return fmt.Errorf("%w: %s signature by key %s: %w", ErrBadSignature, s.Part, short(s.KeyID), err)
	}
	return nil
}

// tryPublish publishes draft id if every threshold is met. It holds the
// repository lock and works from the blob store's state, not the cache, so
// replicas cannot publish over each other. It is idempotent: a publish that
// crashed half-way is finished by the next call.
func (r *Repository) tryPublish(ctx context.Context, id string) (bool, error) {
	unlock, err := r.lock.Lock(ctx)
	if err != nil {
		return false, fmt.Errorf("repository lock: %w", err)
	}
	defer unlock()

	d, err := r.drafts.Draft(ctx, id)
	if err != nil || d.State != DraftPending {
		return false, err
	}
	pd, err := parseDraft(d)
	if err != nil {
		return false, err
	}
	st, err := r.read(ctx, r.state.Load())
	if err != nil {
		return false, err
	}
	r.setState(st)
	// A crash after writing the root (published roots are found by
	// probing) leaves it one version ahead of what the draft expects:
	// resume rather than call the draft stale.
	rootAhead := false
	if pd.root != nil && pd.root.Signed.Version == st.rootVersion() {
		rootAhead = true
		base := *st // st is what is served; work on a copy
		st = &base
		if !sameSigned(st.roots[len(st.roots)-1], pd.payload[PartRoot]) {
			return false, r.markStale(ctx, id, fmt.Errorf("%w: root v%d was published by another draft", ErrStaleDraft, st.rootVersion()))
		}
		st.roots, st.root = st.roots[:len(st.roots)-1], nil
		if len(st.roots) > 0 {
			if st.root, err = (&metadata.Metadata[metadata.RootType]{}).FromBytes(st.roots[len(st.roots)-1]); err != nil {
				return false, err
			}
		}
	}
	// A crash after timestamp.json but before the draft was marked
	// published leaves the draft's targets already served: only the mark
	// is missing. Publishing again would find the draft stale.
	if pd.targets != nil && (pd.root == nil || rootAhead) && pd.targets.Signed.Version == st.targetsVersion() &&
		sameSigned(st.targetsBytes, pd.payload[PartTargets]) {
		if err := r.drafts.SetDraftState(ctx, id, DraftPublished); err != nil && !errors.Is(err, ErrDraftNotPending) {
			return false, err
		}
		r.log.InfoContext(ctx, "draft published", slog.String("draft", id), slog.String("kind", d.Kind),
			slog.Bool("resumed_after_timestamp", true), slog.Int64("targets", pd.targets.Signed.Version))
		return true, nil
	}
	if err := checkVersions(st, pd); err != nil {
		return false, r.markStale(ctx, id, err)
	}
	reqs, err := requirements(st, pd)
	if err != nil {
		return false, err
	}
	parts := tally(reqs, pd)
	for _, p := range parts {
		if !p.Met() {
			return false, nil
		}
	}

	// Publishing order: root, targets, snapshot, then timestamp.json last.
	// Until timestamp.json is replaced, clients see the previous state,
	// whole and valid; every file before it is new and immutable.
	next := &state{roots: st.roots, root: st.root, targets: st.targets, targetsBytes: st.targetsBytes,
		snapshot: st.snapshot, snapBytes: st.snapBytes, timestamp: st.timestamp, tsBytes: st.tsBytes}
	next.prevSnap, next.prevTargets = st.current()
	if pd.root != nil {
		b, err := withSignatures(pd.root, pd.Signatures, PartRoot, parts)
		if err != nil {
			return false, err
		}
		if err := r.putImmutable(ctx, metadataPrefix+strconv.FormatInt(pd.root.Signed.Version, 10)+".root.json", b, pd.payload[PartRoot]); err != nil {
			return false, err
		}
		next.roots = append(slices.Clone(st.roots), b)
		next.root = pd.root
	}
	if pd.targets != nil {
		b, err := withSignatures(pd.targets, pd.Signatures, PartTargets, parts)
		if err != nil {
			return false, err
		}
		if err := r.putImmutable(ctx, metadataPrefix+strconv.FormatInt(pd.targets.Signed.Version, 10)+".targets.json", b, pd.payload[PartTargets]); err != nil {
			return false, err
		}
		next.targetsBytes, next.targets = b, pd.targets
	}
	if next.targets != nil {
		if err := r.writeSnapshotAndTimestamp(ctx, next, true); err != nil {
			return false, err
		}
	}
	if err := r.drafts.SetDraftState(ctx, id, DraftPublished); err != nil && !errors.Is(err, ErrDraftNotPending) {
		return false, err
	}
	r.setState(next)
	r.log.InfoContext(ctx, "draft published", slog.String("draft", id), slog.String("kind", d.Kind),
		slog.Int64("root", next.rootVersion()), slog.Int64("targets", next.targetsVersion()),
		slog.Int64("snapshot", next.snapshotVersion()))
	return true, nil
}

func (r *Repository) markStale(ctx context.Context, id string, cause error) error {
	if err := r.drafts.SetDraftState(ctx, id, DraftDiscarded); err != nil && !errors.Is(err, ErrDraftNotPending) {
		return err
	}
	r.log.WarnContext(ctx, "draft discarded as stale", slog.String("draft", id), slog.Any("reason", cause))
	return cause
}

// withSignatures returns md's bytes carrying the valid signatures for part,
// in key id order so the file does not depend on upload order.
func withSignatures[T metadata.Roles](md *metadata.Metadata[T], sigs []DraftSignature, part string, parts []PartStatus) ([]byte, error) {
	valid := map[string]bool{}
	for _, p := range parts {
		if p.Part == part {
			for _, id := range p.Signed {
				valid[id] = true
			}
		}
	}
	md.ClearSignatures()
	for _, s := range sigs {
		if s.Part == part && valid[s.KeyID] {
			md.Signatures = append(md.Signatures, metadata.Signature{KeyID: s.KeyID, Signature: s.Sig})
		}
	}
	slices.SortFunc(md.Signatures, func(a, b metadata.Signature) int { return cmpString(a.KeyID, b.KeyID) })
	return md.ToBytes(false)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sameSigned reports whether the published file data signs payload.
func sameSigned(data, payload []byte) bool {
	var env struct {
		Signed json.RawMessage `json:"signed"`
	}
	if json.Unmarshal(data, &env) != nil {
		return false
	}
	var v any
	if json.Unmarshal(env.Signed, &v) != nil {
		return false
	}
	c, err := signing.CanonicalSigned(v)
	return err == nil && bytes.Equal(c, payload)
}

// putImmutable writes a versioned file that must never change once
// written. If it exists (a crashed publish wrote it) with the same signed
// content, it is kept; different content is an error, never overwritten.
func (r *Repository) putImmutable(ctx context.Context, key string, data, payload []byte) error {
	existing, err := r.readBlob(ctx, key)
	switch {
	case err == nil:
		if sameSigned(existing, payload) {
			return nil
		}
		return fmt.Errorf("%s exists with other content; refusing to overwrite an immutable file", key)
	case !errors.Is(err, ErrNotExist):
		return err
	}
	if _, err := r.blobs.Put(ctx, key, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("publish %s: %w", key, err)
	}
	return nil
}

// writeSnapshotAndTimestamp signs a new snapshot (when newSnapshot, or when
// there is none) for st's targets and a new timestamp for it, writes them
// in that order and updates st. The snapshot takes the next version not
// yet in the store: a crashed publish may have left one behind, and
// immutable files are never overwritten.
func (r *Repository) writeSnapshotAndTimestamp(ctx context.Context, st *state, newSnapshot bool) error {
	now := r.now()
	if newSnapshot || st.snapshot == nil {
		snap := metadata.Snapshot(expires(now, r.expiry.Snapshot))
		snap.Signed.Meta["targets.json"] = metaFile(st.targets.Signed.Version, st.targetsBytes)
		v := st.snapshotVersion() + 1
		for {
			_, err := r.blobs.Stat(ctx, metadataPrefix+strconv.FormatInt(v, 10)+".snapshot.json")
			if errors.Is(err, ErrNotExist) {
				break
			}
			if err != nil {
				return err
			}
			v++
		}
		snap.Signed.Version = v
		if _, err := snap.Sign(r.online); err != nil {
			return fmt.Errorf("sign snapshot: %w", err)
		}
		b, err := snap.ToBytes(false)
		if err != nil {
			return err
		}
		if _, err := r.blobs.Put(ctx, metadataPrefix+strconv.FormatInt(v, 10)+".snapshot.json", bytes.NewReader(b)); err != nil {
			return fmt.Errorf("publish snapshot: %w", err)
		}
		st.snapshot, st.snapBytes = snap, b
	}
	ts := metadata.Timestamp(expires(now, r.expiry.Timestamp))
	ts.Signed.Version = 1
	if st.timestamp != nil {
		ts.Signed.Version = st.timestamp.Signed.Version + 1
	}
	ts.Signed.Meta["snapshot.json"] = metaFile(st.snapshot.Signed.Version, st.snapBytes)
	if _, err := ts.Sign(r.online); err != nil {
		return fmt.Errorf("sign timestamp: %w", err)
	}
	b, err := ts.ToBytes(false)
	if err != nil {
		return err
	}
	if _, err := r.blobs.Put(ctx, metadataPrefix+"timestamp.json", bytes.NewReader(b)); err != nil {
		return fmt.Errorf("publish timestamp: %w", err)
	}
	st.timestamp, st.tsBytes = ts, b
	return nil
}

// metaFile describes a metadata file by version, length and sha256 only:
// with several hashes the client would pick one at random.
func metaFile(version int64, data []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(data)
	return &metadata.MetaFiles{Version: version, Length: int64(len(data)), Hashes: metadata.Hashes{"sha256": sum[:]}}
}

// Resign renews timestamp (and snapshot) ahead of expiry, bumping
// versions, so clients keep working while nobody publishes. It renews a
// role once less than half its lifetime is left. It reports whether it
// wrote anything.
func (r *Repository) Resign(ctx context.Context) (bool, error) {
	unlock, err := r.lock.Lock(ctx)
	if err != nil {
		return false, fmt.Errorf("repository lock: %w", err)
	}
	defer unlock()
	st, err := r.read(ctx, r.state.Load())
	if err != nil {
		return false, err
	}
	r.setState(st)
	if st.timestamp == nil {
		return false, nil
	}
	now := r.now()
	newSnap := st.snapshot.Signed.Expires.Before(now.Add(r.expiry.Snapshot / 2))
	newTs := newSnap || st.timestamp.Signed.Expires.Before(now.Add(r.expiry.Timestamp/2))
	// A root rotation may have replaced the online key: re-sign with the
	// key root now names, or say why not.
	if !slices.Contains(st.root.Signed.Roles[metadata.TIMESTAMP].KeyIDs, r.online.KeyID()) {
		return false, fmt.Errorf("the online key %s is not root v%d's timestamp key; configure the key root names",
			short(r.online.KeyID()), st.rootVersion())
	}
	if !newTs {
		return false, nil
	}
	next := *st
	next.prevSnap, next.prevTargets = st.current()
	if err := r.writeSnapshotAndTimestamp(ctx, &next, newSnap); err != nil {
		return false, err
	}
	r.setState(&next)
	r.log.InfoContext(ctx, "re-signed online metadata", slog.Bool("snapshot", newSnap),
		slog.Int64("snapshot_version", next.snapshotVersion()), slog.Int64("timestamp_version", next.timestamp.Signed.Version))
	return true, nil
}

// ResumePending finishes a pending draft whose thresholds are met (a
// publish interrupted by a crash). Call it at start and periodically.
func (r *Repository) ResumePending(ctx context.Context) error {
	d, err := r.drafts.PendingDraft(ctx)
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = r.tryPublish(ctx, d.ID)
	return err
}
