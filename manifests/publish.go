package manifests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/signing"
)

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
