package manifests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/signing"
)

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
