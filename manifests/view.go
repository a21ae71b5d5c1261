package manifests

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// DraftView is a draft as release engineers see it before signing: the
// exact bytes to sign, what it changes in plain words, and how far each
// threshold is.
type DraftView struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Kind      string    `json:"kind"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	// Digest is what a signature upload names (see Draft.Digest).
	Digest string `json:"digest"`
	// Root and Targets are the unsigned metadata documents to sign.
	Root    []byte `json:"root,omitempty"`
	Targets []byte `json:"targets,omitempty"`
	// Changes says what publishing the draft does, one line each.
	Changes []string `json:"changes"`
	// Thresholds lists each threshold and the keys that have signed so far.
	Thresholds []PartStatus `json:"thresholds"`
}

// DraftView returns draft id as release engineers see it.
func (r *Repository) DraftView(ctx context.Context, id string) (*DraftView, error) {
	d, err := r.drafts.Draft(ctx, id)
	if err != nil {
		return nil, err
	}
	return r.view(ctx, d)
}

// PendingDraftView returns the pending draft, or ErrNotExist.
func (r *Repository) PendingDraftView(ctx context.Context) (*DraftView, error) {
	d, err := r.drafts.PendingDraft(ctx)
	if err != nil {
		return nil, err
	}
	return r.view(ctx, d)
}

// ListDrafts returns the newest drafts first, without their documents.
func (r *Repository) ListDrafts(ctx context.Context, limit int) ([]*DraftView, error) {
	ds, err := r.drafts.ListDrafts(ctx, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*DraftView, 0, len(ds))
	for _, d := range ds {
		v, err := r.view(ctx, d)
		if err != nil {
			return nil, err
		}
		v.Root, v.Targets = nil, nil
		out = append(out, v)
	}
	return out, nil
}

func (r *Repository) view(ctx context.Context, d *Draft) (*DraftView, error) {
	pd, err := parseDraft(d)
	if err != nil {
		return nil, err
	}
	st := r.state.Load()
	if d.State == DraftPending {
		if st, err = r.stateFor(ctx, pd); err != nil {
			return nil, err
		}
	}
	v := &DraftView{ID: d.ID, State: d.State, Kind: d.Kind, CreatedBy: d.CreatedBy, CreatedAt: d.CreatedAt,
		Digest: d.Digest(), Root: d.Root, Targets: d.Targets, Thresholds: []PartStatus{}}
	if d.State == DraftPending {
		if reqs, err := requirements(st, pd); err == nil {
			v.Thresholds = tally(reqs, pd)
		}
	}
	v.Changes = describeChanges(st, pd)
	return v, nil
}

// describeChanges compares a draft with the published state, in plain words.
func describeChanges(st *state, d *parsedDraft) []string {
	var out []string
	if d.root != nil {
		out = append(out, describeRoot(st.root, d.root)...)
	}
	if d.targets != nil {
		var old map[string]*metadata.TargetFiles
		if st.targets != nil {
			old = st.targets.Signed.Targets
		}
		out = append(out, fmt.Sprintf("publishes targets v%d, valid until %s",
			d.targets.Signed.Version, d.targets.Signed.Expires.Format(time.DateOnly)))
		newT := d.targets.Signed.Targets
		for _, p := range slices.Sorted(maps.Keys(newT)) {
			t, before := newT[p], old[p]
			switch {
			case before == nil:
				out = append(out, "adds target "+describeTarget(p, t))
			case !before.Equal(*t) || string(rawCustom(before)) != string(rawCustom(t)):
				out = append(out, "replaces target "+describeTarget(p, t))
			}
		}
		for _, p := range slices.Sorted(maps.Keys(old)) {
			if newT[p] == nil {
				out = append(out, fmt.Sprintf("removes target %s: handsets are no longer offered it", p))
			}
		}
		if st.targets != nil && len(newT) == len(old) && d.root != nil {
			out = append(out, "re-signs the current targets with the new targets keys")
		}
	}
	return out
}

func rawCustom(t *metadata.TargetFiles) []byte {
	if t.Custom == nil {
		return nil
	}
	return *t.Custom
}

func describeTarget(p string, t *metadata.TargetFiles) string {
	s := fmt.Sprintf("%s (%d bytes, sha256 %s)", p, t.Length, hex.EncodeToString(t.Hashes["sha256"]))
	if t.Custom != nil {
		var c TargetCustom
		if json.Unmarshal(*t.Custom, &c) == nil && c.PatchID != "" {
			s += ": " + c.Describe()
		}
	}
	return s
}

func describeRoot(old, next *metadata.Metadata[metadata.RootType]) []string {
	out := []string{fmt.Sprintf("publishes root v%d, valid until %s", next.Signed.Version, next.Signed.Expires.Format(time.DateOnly))}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		nr := next.Signed.Roles[role]
		line := fmt.Sprintf("%s role: %d of %d keys (%s)", role, nr.Threshold, len(nr.KeyIDs), shortIDs(nr.KeyIDs))
		if old != nil {
			or := old.Signed.Roles[role]
			added, removed := diffIDs(or.KeyIDs, nr.KeyIDs)
			switch {
			case len(added) == 0 && len(removed) == 0 && or.Threshold == nr.Threshold:
				line += ", unchanged"
			default:
				if len(added) > 0 {
					line += ", adds " + shortIDs(added)
				}
				if len(removed) > 0 {
					line += ", removes " + shortIDs(removed)
				}
				if or.Threshold != nr.Threshold {
					line += fmt.Sprintf(", threshold was %d", or.Threshold)
				}
			}
		}
		out = append(out, line)
	}
	return out
}

func diffIDs(old, next []string) (added, removed []string) {
	for _, id := range next {
		if !slices.Contains(old, id) {
			added = append(added, id)
		}
	}
	for _, id := range old {
		if !slices.Contains(next, id) {
			removed = append(removed, id)
		}
	}
	return added, removed
}

func shortIDs(ids []string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = short(id)
	}
	slices.Sort(s)
	return strings.Join(s, ", ")
}

// RoleStatus is one role's published version and expiry.
type RoleStatus struct {
	Role      string    `json:"role"`
	Version   int64     `json:"version"`
	Expires   time.Time `json:"expires"`
	ExpiresIn int64     `json:"expires_in_seconds"`
	// Warning is set when an offline role is close to expiry.
	Warning string `json:"warning,omitempty"`
}

// Status is the repository at a glance.
type Status struct {
	Initialized bool         `json:"initialized"`
	OnlineKeyID string       `json:"online_keyid"`
	Roles       []RoleStatus `json:"roles"`
	Targets     []TargetInfo `json:"targets"`
	Pending     *DraftView   `json:"pending_draft,omitempty"`
}

// TargetInfo is one published target.
type TargetInfo struct {
	Path   string          `json:"path"`
	Length int64           `json:"length"`
	SHA256 string          `json:"sha256"`
	Custom json.RawMessage `json:"custom,omitempty"`
}

// TargetsVersion is the published targets version (0 before the first).
func (r *Repository) TargetsVersion() int64 { return r.state.Load().targetsVersion() }

// PublishedTargets returns the published targets version and its targets.
// It reads memory only: check-ins call it.
func (r *Repository) PublishedTargets() (int64, []TargetInfo) {
	st := r.state.Load()
	if st.targets == nil {
		return 0, nil
	}
	out := make([]TargetInfo, 0, len(st.targets.Signed.Targets))
	for _, p := range slices.Sorted(maps.Keys(st.targets.Signed.Targets)) {
		t := st.targets.Signed.Targets[p]
		out = append(out, TargetInfo{Path: p, Length: t.Length, SHA256: hex.EncodeToString(t.Hashes["sha256"]), Custom: rawCustom(t)})
	}
	return st.targets.Signed.Version, out
}

// Status reports published versions, expiries (with warnings for offline
// roles within ExpiryWarning), targets and the pending draft.
func (r *Repository) Status(ctx context.Context) (*Status, error) {
	st := r.state.Load()
	s := &Status{Initialized: st.timestamp != nil, OnlineKeyID: r.online.KeyID(), Roles: r.roleStatus(st), Targets: []TargetInfo{}}
	if st.targets != nil {
		for _, p := range slices.Sorted(maps.Keys(st.targets.Signed.Targets)) {
			t := st.targets.Signed.Targets[p]
			s.Targets = append(s.Targets, TargetInfo{Path: p, Length: t.Length, SHA256: hex.EncodeToString(t.Hashes["sha256"]), Custom: rawCustom(t)})
		}
	}
	if v, err := r.PendingDraftView(ctx); err == nil {
		v.Root, v.Targets = nil, nil
		s.Pending = v
	} else if !isNotExist(err) {
		return nil, err
	}
	return s, nil
}

// ExpiryWarnings returns a line for each offline role within ExpiryWarning
// of expiry, for the log.
func (r *Repository) ExpiryWarnings() []string {
	var out []string
	for _, rs := range r.roleStatus(r.state.Load()) {
		if rs.Warning != "" {
			out = append(out, rs.Warning)
		}
	}
	return out
}

// RoleExpiries returns seconds to expiry per published role, for metrics.
func (r *Repository) RoleExpiries() map[string]float64 {
	out := map[string]float64{}
	for _, rs := range r.roleStatus(r.state.Load()) {
		out[rs.Role] = float64(rs.ExpiresIn)
	}
	return out
}

func (r *Repository) roleStatus(st *state) []RoleStatus {
	now := r.now()
	out := []RoleStatus{} // [] before the first publish, not null
	add := func(role string, version int64, exp time.Time) {
		rs := RoleStatus{Role: role, Version: version, Expires: exp, ExpiresIn: int64(exp.Sub(now).Seconds())}
		if (role == metadata.ROOT || role == metadata.TARGETS) && exp.Sub(now) < ExpiryWarning {
			rs.Warning = fmt.Sprintf("%s v%d expires %s: release engineers must sign a new %s before then",
				role, version, exp.Format(time.RFC3339), role)
		}
		out = append(out, rs)
	}
	if st.root != nil {
		add(metadata.ROOT, st.rootVersion(), st.root.Signed.Expires)
	}
	if st.targets != nil {
		add(metadata.TARGETS, st.targets.Signed.Version, st.targets.Signed.Expires)
	}
	if st.snapshot != nil {
		add(metadata.SNAPSHOT, st.snapshot.Signed.Version, st.snapshot.Signed.Expires)
	}
	if st.timestamp != nil {
		add(metadata.TIMESTAMP, st.timestamp.Signed.Version, st.timestamp.Signed.Expires)
	}
	return out
}

func isNotExist(err error) bool { return errors.Is(err, ErrNotExist) }
