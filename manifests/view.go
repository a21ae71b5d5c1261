package manifests

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// DraftView is a draft as release engineers see it before signing, and as
// the releases page shows it afterwards: the exact bytes to sign, what it
// changes in plain words, and how far each threshold is. A published or
// discarded draft is described against the metadata it was made to
// replace, never against what is published now: otherwise the ceremony
// would read as removing every target released since.
type DraftView struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Kind      string    `json:"kind"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	// ClosedAt is when the draft was published or discarded; nil while
	// it is pending.
	ClosedAt *time.Time `json:"closed_at,omitempty"`
	// Digest is what a signature upload names (see Draft.Digest).
	Digest string `json:"digest"`
	// Root and Targets are the unsigned metadata documents to sign.
	Root    []byte `json:"root,omitempty"`
	Targets []byte `json:"targets,omitempty"`
	// Summary says in one line what the draft does: "ceremony: ...",
	// "adds target P", "yanks P", "rotates root to v2: ...".
	Summary string `json:"summary"`
	// Changes says what publishing the draft does, one line each.
	Changes []string `json:"changes"`
	// Added, Replaced and Removed are the target paths the draft adds,
	// replaces and removes compared with the targets it replaces.
	Added    []string `json:"added,omitempty"`
	Replaced []string `json:"replaced,omitempty"`
	Removed  []string `json:"removed,omitempty"`
	// Thresholds lists each threshold and the keys that have signed so
	// far (for a published draft, the keys whose signatures it was
	// published with).
	Thresholds []PartStatus `json:"thresholds"`
}

// DraftView returns draft id as release engineers see it.
func (r *Repository) DraftView(ctx context.Context, id string) (*DraftView, error) {
	d, err := r.drafts.Draft(ctx, id)
	if err != nil {
		return nil, err
	}
	return r.view(ctx, d, 0)
}

// PendingDraftView returns the pending draft, or ErrNotExist.
func (r *Repository) PendingDraftView(ctx context.Context) (*DraftView, error) {
	d, err := r.drafts.PendingDraft(ctx)
	if err != nil {
		return nil, err
	}
	return r.view(ctx, d, 0)
}

// ListDrafts returns the newest drafts first, without their documents.
// Drafts follow one another (one pending at a time), so the list also
// tells which root governed each targets-only draft: the one published
// by the newest root draft before it, or the current root.
func (r *Repository) ListDrafts(ctx context.Context, limit int) ([]*DraftView, error) {
	ds, err := r.drafts.ListDrafts(ctx, limit)
	if err != nil {
		return nil, err
	}
	governing := r.state.Load().rootVersion()
	out := make([]*DraftView, 0, len(ds))
	for _, d := range ds {
		v, err := r.view(ctx, d, governing)
		if err != nil {
			return nil, err
		}
		if d.State == DraftPublished && d.Root != nil {
			if root, err := parseRoot(d.Root); err == nil {
				governing = root.Signed.Version - 1
			}
		}
		v.Root, v.Targets = nil, nil
		out = append(out, v)
	}
	return out, nil
}

// view describes d. governing is the root version in force when d was
// made, when the caller knows it (ListDrafts), else 0.
func (r *Repository) view(ctx context.Context, d *Draft, governing int64) (*DraftView, error) {
	pd, err := parseDraft(d)
	if err != nil {
		return nil, err
	}
	base, err := r.baseOf(ctx, pd, governing)
	if err != nil {
		return nil, err
	}
	v := &DraftView{ID: d.ID, State: d.State, Kind: d.Kind, CreatedBy: d.CreatedBy, CreatedAt: d.CreatedAt,
		Digest: d.Digest(), Root: d.Root, Targets: d.Targets, Thresholds: []PartStatus{}}
	if d.State != DraftPending && !d.UpdatedAt.IsZero() {
		at := d.UpdatedAt.UTC()
		v.ClosedAt = &at
	}
	if reqs, err := requirements(base, pd); err == nil {
		v.Thresholds = tally(reqs, pd)
	}
	cs := describeChanges(base, pd)
	v.Summary, v.Changes, v.Added, v.Replaced, v.Removed = cs.summary, cs.lines, cs.added, cs.replaced, cs.removed
	return v, nil
}

// baseOf returns the published state draft pd was made against: for a
// pending draft the current one; for a published or discarded draft the
// root before its root and the targets before its targets, read back
// from the published (immutable) metadata. A targets-only draft names
// no root: its governing root is root version governing when the caller
// knows it; else the newest published root under which its signatures
// meet the targets threshold (the one it was published under, or a later
// one with the same targets keys), else the newest under which most of
// them verify.
func (r *Repository) baseOf(ctx context.Context, pd *parsedDraft, governing int64) (*state, error) {
	if pd.State == DraftPending {
		return r.stateFor(ctx, pd)
	}
	var rootV, targetsV int64
	if pd.root != nil {
		rootV = pd.root.Signed.Version - 1
	}
	if pd.targets != nil {
		targetsV = pd.targets.Signed.Version - 1
	}
	cur := r.state.Load()
	if rootV > cur.rootVersion() || targetsV > cur.targetsVersion() {
		// Another replica published it; this cache has not caught up.
		if err := r.Load(ctx); err != nil {
			return nil, err
		}
		cur = r.state.Load()
	}
	if rootV > cur.rootVersion() || targetsV > cur.targetsVersion() {
		return nil, fmt.Errorf("%w: draft %s follows root v%d and targets v%d, but root v%d and targets v%d are published",
			ErrCorrupt, pd.ID, rootV, targetsV, cur.rootVersion(), cur.targetsVersion())
	}
	base := &state{}
	var err error
	switch {
	case pd.root != nil:
		base.roots = cur.roots[:rootV]
		if rootV > 0 {
			if base.root, err = parseRoot(cur.roots[rootV-1]); err != nil {
				return nil, err
			}
		}
	case governing > 0 && governing <= cur.rootVersion():
		base.roots = cur.roots[:governing]
		if base.root, err = parseRoot(cur.roots[governing-1]); err != nil {
			return nil, err
		}
	default:
		if base.roots, base.root, err = governingRoot(cur, pd); err != nil {
			return nil, err
		}
	}
	if targetsV > 0 {
		if base.targets, err = r.targetsAt(ctx, cur, targetsV); err != nil {
			return nil, err
		}
	}
	return base, nil
}

func parseRoot(b []byte) (*metadata.Metadata[metadata.RootType], error) {
	root, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("published root: %w", err)
	}
	return root, nil
}

// governingRoot picks the root a published or discarded targets-only
// draft was signed under (see baseOf); it returns the roots up to it.
func governingRoot(cur *state, pd *parsedDraft) ([][]byte, *metadata.Metadata[metadata.RootType], error) {
	best, bestValid := len(cur.roots), -1
	var bestRoot *metadata.Metadata[metadata.RootType]
	for v := len(cur.roots); v >= 1; v-- {
		root, err := parseRoot(cur.roots[v-1])
		if err != nil {
			return nil, nil, err
		}
		role := root.Signed.Roles[metadata.TARGETS]
		ps := tally([]requirement{{PartTargets, "", root.Signed.Keys, role}}, pd)[0]
		if len(ps.Signed) > 0 && ps.Met() {
			return cur.roots[:v], root, nil
		}
		if len(ps.Signed) > bestValid {
			best, bestValid, bestRoot = v, len(ps.Signed), root
		}
	}
	return cur.roots[:best], bestRoot, nil
}

// targetsAt returns published targets version v: from memory when it is
// the current or previous one, else from the blob store (immutable, so
// kept in a small cache: the releases page describes the same drafts on
// every load).
func (r *Repository) targetsAt(ctx context.Context, cur *state, v int64) (*metadata.Metadata[metadata.TargetsType], error) {
	if v == cur.targetsVersion() {
		return cur.targets, nil
	}
	r.hist.Lock()
	t := r.hist.targets[v]
	r.hist.Unlock()
	if t != nil {
		return t, nil
	}
	var b []byte
	if v == cur.prevTargets.version {
		b = cur.prevTargets.data
	} else {
		var err error
		if b, err = r.readNamed(ctx, "a draft", strconv.FormatInt(v, 10)+".targets.json"); err != nil {
			return nil, err
		}
	}
	t, err := (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("published %d.targets.json: %w", v, err)
	}
	r.hist.Lock()
	defer r.hist.Unlock()
	if r.hist.targets == nil || len(r.hist.targets) >= historyCached {
		r.hist.targets = map[int64]*metadata.Metadata[metadata.TargetsType]{}
	}
	r.hist.targets[v] = t
	return t, nil
}

// historyCached bounds the older targets versions kept parsed for
// describing drafts: the releases page lists the latest few dozen.
const historyCached = 64

// changeSet is what a draft changes, in words and as target paths.
type changeSet struct {
	summary                  string
	lines                    []string
	added, replaced, removed []string
}

// describeChanges compares a draft with the state it was made against
// (baseOf), in plain words.
func describeChanges(st *state, d *parsedDraft) changeSet {
	var cs changeSet
	if d.root != nil {
		cs.lines = append(cs.lines, describeRoot(st.root, d.root)...)
	}
	if d.targets != nil {
		var old map[string]*metadata.TargetFiles
		if st.targets != nil {
			old = st.targets.Signed.Targets
		}
		cs.lines = append(cs.lines, fmt.Sprintf("publishes targets v%d, valid until %s",
			d.targets.Signed.Version, d.targets.Signed.Expires.Format(time.DateOnly)))
		newT := d.targets.Signed.Targets
		for _, p := range slices.Sorted(maps.Keys(newT)) {
			t, before := newT[p], old[p]
			switch {
			case before == nil:
				cs.lines = append(cs.lines, "adds target "+describeTarget(p, t))
				cs.added = append(cs.added, p)
			case !before.Equal(*t) || string(rawCustom(before)) != string(rawCustom(t)):
				cs.lines = append(cs.lines, "replaces target "+describeTarget(p, t))
				cs.replaced = append(cs.replaced, p)
			}
		}
		for _, p := range slices.Sorted(maps.Keys(old)) {
			if newT[p] == nil {
				cs.lines = append(cs.lines, fmt.Sprintf("removes target %s: handsets are no longer offered it", p))
				cs.removed = append(cs.removed, p)
			}
		}
		if st.targets != nil && len(cs.added)+len(cs.replaced)+len(cs.removed) == 0 && d.root != nil {
			cs.lines = append(cs.lines, "re-signs the current targets with the new targets keys")
		}
	}
	cs.summary = summarize(st, d, cs)
	return cs
}

// summarize says in one line what a draft does, by its kind.
func summarize(st *state, d *parsedDraft, cs changeSet) string {
	var parts []string
	switch {
	case d.root != nil && st.root == nil:
		s := fmt.Sprintf("ceremony: root v%d with root keys %s and targets keys %s", d.root.Signed.Version,
			roleSummary(nil, d.root.Signed.Roles[metadata.ROOT]), roleSummary(nil, d.root.Signed.Roles[metadata.TARGETS]))
		if d.targets != nil && len(d.targets.Signed.Targets) == 0 {
			s += fmt.Sprintf("; targets v%d, empty", d.targets.Signed.Version)
		}
		return s
	case d.root != nil:
		return fmt.Sprintf("rotates root to v%d: root keys %s; targets keys %s", d.root.Signed.Version,
			roleSummary(st.root.Signed.Roles[metadata.ROOT], d.root.Signed.Roles[metadata.ROOT]),
			roleSummary(st.root.Signed.Roles[metadata.TARGETS], d.root.Signed.Roles[metadata.TARGETS]))
	}
	for _, p := range cs.added {
		parts = append(parts, "adds target "+p)
	}
	for _, p := range cs.replaced {
		parts = append(parts, "replaces target "+p)
	}
	for _, p := range cs.removed {
		parts = append(parts, "yanks "+p)
	}
	if len(parts) == 0 && len(cs.lines) > 0 {
		return cs.lines[0]
	}
	return strings.Join(parts, "; ")
}

// roleSummary is "2 of 3 (a, b, c)" for a new role, or with what changed
// from old: "2 of 3, adds d, removes c" or "2 of 3, unchanged".
func roleSummary(old, next *metadata.Role) string {
	s := fmt.Sprintf("%d of %d", next.Threshold, len(next.KeyIDs))
	if old == nil {
		return s + " (" + shortIDs(next.KeyIDs) + ")"
	}
	added, removed := diffIDs(old.KeyIDs, next.KeyIDs)
	if len(added) == 0 && len(removed) == 0 && old.Threshold == next.Threshold {
		return s + ", unchanged"
	}
	if len(added) > 0 {
		s += ", adds " + shortIDs(added)
	}
	if len(removed) > 0 {
		s += ", removes " + shortIDs(removed)
	}
	if old.Threshold != next.Threshold {
		s += fmt.Sprintf(", threshold was %d", old.Threshold)
	}
	return s
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
