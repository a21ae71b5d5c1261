package web

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// fakeIdentity keeps users, sessions and tokens in memory.
type fakeIdentity struct {
	mu       sync.Mutex
	users    map[string]*identity.User // by id
	hashes   map[string]string         // password hash by id
	sessions map[string]*identity.Session
	tokens   map[string]*identity.Token // by hash
}

var (
	_ identity.UserStore    = (*fakeIdentity)(nil)
	_ identity.SessionStore = (*fakeIdentity)(nil)
	_ identity.TokenStore   = (*fakeIdentity)(nil)
	_ audit.AuditStore      = (*fakeAudit)(nil)
	_ audit.AuditAnchor     = (*fakeAnchor)(nil)
	_ Backend               = (*fakeBackend)(nil)
)

func newFakeIdentity() *fakeIdentity {
	return &fakeIdentity{users: map[string]*identity.User{}, hashes: map[string]string{},
		sessions: map[string]*identity.Session{}, tokens: map[string]*identity.Token{}}
}

func (f *fakeIdentity) CreateUser(_ context.Context, u *identity.User, hash string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range f.users {
		if o.Name == u.Name {
			return fmt.Errorf("user %s: %w", u.Name, errs.ErrConflict)
		}
	}
	c := *u
	f.users[u.ID], f.hashes[u.ID] = &c, hash
	return nil
}

func (f *fakeIdentity) UserByName(_ context.Context, name string) (*identity.User, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.users {
		if u.Name == name {
			c := *u
			return &c, f.hashes[u.ID], nil
		}
	}
	return nil, "", fmt.Errorf("user %s: %w", name, errs.ErrNotFound)
}

func (f *fakeIdentity) UserByID(_ context.Context, id string) (*identity.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.users[id]
	if u == nil {
		return nil, errs.ErrNotFound
	}
	c := *u
	return &c, nil
}

func (f *fakeIdentity) ListUsers(context.Context) ([]*identity.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*identity.User
	for _, u := range f.users {
		c := *u
		out = append(out, &c)
	}
	slices.SortFunc(out, func(a, b *identity.User) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (f *fakeIdentity) SetUserRole(_ context.Context, id, role string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.users[id] == nil {
		return errs.ErrNotFound
	}
	f.users[id].Role = role
	return nil
}

func (f *fakeIdentity) SetUserDisabled(_ context.Context, id string, disabled bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.users[id] == nil {
		return errs.ErrNotFound
	}
	f.users[id].Disabled = disabled
	if disabled {
		now := time.Now().UTC()
		for h, s := range f.sessions {
			if s.UserID == id {
				delete(f.sessions, h)
			}
		}
		for _, t := range f.tokens {
			if t.UserID == id && t.RevokedAt == nil {
				t.RevokedAt = &now
			}
		}
	}
	return nil
}

func (f *fakeIdentity) SetPassword(_ context.Context, id, hash, keep string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hashes[id] = hash
	for h, s := range f.sessions {
		if s.UserID == id && h != keep {
			delete(f.sessions, h)
		}
	}
	return nil
}

func (f *fakeIdentity) CreateSession(_ context.Context, s *identity.Session, hash string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := *s
	f.sessions[hash] = &c
	return nil
}

func (f *fakeIdentity) SessionByHash(_ context.Context, hash string) (*identity.Session, *identity.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[hash]
	if s == nil {
		return nil, nil, errs.ErrNotFound
	}
	c, u := *s, *f.users[s.UserID]
	return &c, &u, nil
}

func (f *fakeIdentity) TouchSession(_ context.Context, hash string, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[hash]; s != nil {
		s.LastSeen = at
	}
	return nil
}

func (f *fakeIdentity) DeleteSession(_ context.Context, hash string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sessions[hash] == nil {
		return errs.ErrNotFound
	}
	delete(f.sessions, hash)
	return nil
}

func (f *fakeIdentity) DeleteSessionsBefore(context.Context, time.Time, time.Time) (int64, error) {
	return 0, nil
}

func (f *fakeIdentity) CreateToken(_ context.Context, t *identity.Token, hash string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := *t
	f.tokens[hash] = &c
	return nil
}

func (f *fakeIdentity) TokenByHash(_ context.Context, hash string) (*identity.Token, *identity.User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tokens[hash]
	if t == nil {
		return nil, nil, errs.ErrNotFound
	}
	c, u := *t, *f.users[t.UserID]
	return &c, &u, nil
}

func (f *fakeIdentity) ListTokens(_ context.Context, userID string) ([]*identity.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*identity.Token
	for _, t := range f.tokens {
		if userID == "" || t.UserID == userID {
			c := *t
			out = append(out, &c)
		}
	}
	slices.SortFunc(out, func(a, b *identity.Token) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (f *fakeIdentity) RevokeToken(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tokens {
		if t.ID == id {
			now := time.Now().UTC()
			t.RevokedAt = &now
			return nil
		}
	}
	return errs.ErrNotFound
}

// fakeAudit is an in-memory audit log.
type fakeAudit struct {
	mu      sync.Mutex
	entries []audit.AuditEntry
	fail    error // when set, AppendAudit appends nothing and returns it
}

func (a *fakeAudit) AppendAudit(_ context.Context, es ...audit.AuditEntry) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	for _, e := range es {
		var prev *audit.AuditEntry
		if n := len(a.entries); n > 0 {
			prev = &a.entries[n-1]
		}
		e.Chain(prev)
		a.entries = append(a.entries, e)
	}
	return nil
}

func (a *fakeAudit) ListAudit(_ context.Context, q audit.AuditQuery) ([]audit.AuditEntry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []audit.AuditEntry
	for i := len(a.entries) - 1; i >= 0; i-- {
		e := a.entries[i]
		if (q.Actor == "" || e.Actor == q.Actor) && (q.Action == "" || e.Action == q.Action ||
			(strings.HasSuffix(q.Action, ".") && strings.HasPrefix(e.Action, q.Action))) &&
			(q.Since.IsZero() || !e.At.Before(q.Since)) && (q.Until.IsZero() || e.At.Before(q.Until)) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (a *fakeAudit) WalkAudit(_ context.Context, fn func(audit.AuditEntry) error) (int64, string, error) {
	a.mu.Lock()
	es := slices.Clone(a.entries)
	a.mu.Unlock()
	for _, e := range es {
		if err := fn(e); err != nil {
			return 0, "", err
		}
	}
	if len(es) == 0 {
		return 0, "", nil
	}
	return es[len(es)-1].Seq, es[len(es)-1].Hash, nil
}

// fakeAnchor holds the checkpoints of a fakeAudit, trusted as they are.
type fakeAnchor struct {
	mu  sync.Mutex
	cps []audit.AuditCheckpoint
}

func (a *fakeAnchor) Checkpoints(context.Context) ([]audit.AuditCheckpoint, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cps) == 0 {
		return nil, fmt.Errorf("%w: no checkpoints yet", audit.ErrAuditUnanchored)
	}
	return slices.Clone(a.cps), nil
}

// checkpoint anchors every entry of log in one checkpoint.
func (a *fakeAnchor) checkpoint(log *fakeAudit, at time.Time) {
	log.mu.Lock()
	cp := audit.AuditCheckpoint{From: 1, Seq: int64(len(log.entries)), At: at, KeyID: "0123456789abcdef"}
	for _, e := range log.entries {
		cp.Hashes = append(cp.Hashes, e.Hash)
	}
	log.mu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cps = append(a.cps, cp)
}

// fakeBackend answers with fixed reports and records the changes.
type fakeBackend struct {
	mu       sync.Mutex
	exposure *server.ExposureReport
	rollouts []*rollout.Rollout
	reports  map[string]*server.RolloutReport
	events   []rollout.Event
	status   *manifests.Status
	drafts   []*manifests.DraftView
	devices  map[string]*DeviceView
	// listed are the ListDevices calls' queries.
	listed []handsets.DeviceQuery
	// approvals are decided in place.
	approvals []*rollout.Approval
	// changes are the ChangeRollout calls, with the actor of their ctx.
	changes []recordedChange
	// created are the CreateRollout calls' specs, with the actor.
	created []recordedCreate
	// repoErr, when set, is RepoStatus's answer.
	repoErr error
}

type recordedCreate struct {
	Actor string
	Spec  rollout.RolloutSpec
}

type recordedChange struct {
	ID, Actor string
	Change    RolloutChange
}

func (b *fakeBackend) ExposureReport(context.Context, server.ExposureOptions) (*server.ExposureReport, error) {
	return b.exposure, nil
}

func (b *fakeBackend) RolloutReport(_ context.Context, id string) (*server.RolloutReport, error) {
	if r := b.reports[id]; r != nil {
		return r, nil
	}
	return nil, fmt.Errorf("rollout %s: %w", id, errs.ErrNotFound)
}

func (b *fakeBackend) Rollouts(context.Context) ([]*rollout.Rollout, error) {
	return slices.Clone(b.rollouts), nil
}

func (b *fakeBackend) Rollout(_ context.Context, id string) (*rollout.Rollout, error) {
	for _, r := range b.rollouts {
		if r.ID == id {
			return r.Clone(), nil
		}
	}
	return nil, fmt.Errorf("rollout %s: %w", id, errs.ErrNotFound)
}

func (b *fakeBackend) RolloutEvents(_ context.Context, id string, _ int) ([]rollout.Event, error) {
	var out []rollout.Event
	for _, e := range b.events {
		if e.RolloutID == id {
			out = append(out, e)
		}
	}
	return out, nil
}

func (b *fakeBackend) ChangeRollout(ctx context.Context, id string, c RolloutChange) (*rollout.Rollout, *rollout.Approval, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changes = append(b.changes, recordedChange{ID: id, Actor: identity.PrincipalFromContext(ctx).Actor(), Change: c})
	if c.Action == rollout.ActionAdvance && rollout.NeedsApproval(c.Action, c.Percent) {
		a := &rollout.Approval{ID: "ap-9", RolloutID: id, Action: c.Action, ToPercent: c.Percent,
			RequestedBy: identity.PrincipalFromContext(ctx).Actor(), RequestedAt: time.Now(), Reason: c.Reason, State: rollout.ApprovalPending}
		b.approvals = append(b.approvals, a)
		r, err := b.Rollout(ctx, id)
		return r, a, err
	}
	r, err := b.Rollout(ctx, id)
	return r, nil, err
}

// CreateRollout creates rollout "ro-new" as RolloutService would in
// outline: an unknown release is refused, a start past 50% waits for an
// approval with the rollout a draft.
func (b *fakeBackend) CreateRollout(ctx context.Context, spec rollout.RolloutSpec) (*rollout.Rollout, *rollout.Approval, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	actor := identity.PrincipalFromContext(ctx).Actor()
	b.created = append(b.created, recordedCreate{Actor: actor, Spec: spec})
	if !slices.ContainsFunc(b.status.Targets, func(t manifests.TargetInfo) bool { return t.Path == spec.Release }) {
		return nil, nil, fmt.Errorf("%w: release %s: not a published target", errs.ErrInvalid, spec.Release)
	}
	r := &rollout.Rollout{ID: "ro-new", State: rollout.RolloutRunning, Stages: spec.Stages, Selector: spec.Selector,
		Policy: spec.Policy, Release: rollout.RolloutRelease{Target: spec.Release}, CreatedBy: actor, CreatedAt: time.Now()}
	b.reports[r.ID] = &server.RolloutReport{RolloutID: r.ID}
	if !spec.Draft && rollout.NeedsApproval(rollout.ActionStart, r.Percent()) {
		r.State = rollout.RolloutDraft
		b.rollouts = append(b.rollouts, r)
		a := &rollout.Approval{ID: "ap-10", RolloutID: r.ID, Action: rollout.ActionStart, ToPercent: r.Percent(),
			RequestedBy: actor, RequestedAt: time.Now(), Reason: spec.Reason, State: rollout.ApprovalPending}
		b.approvals = append(b.approvals, a)
		return r.Clone(), a, nil
	}
	if spec.Draft {
		r.State = rollout.RolloutDraft
	}
	b.rollouts = append(b.rollouts, r)
	return r.Clone(), nil, nil
}

func (b *fakeBackend) Approvals(_ context.Context, id string) ([]*rollout.Approval, error) {
	var out []*rollout.Approval
	for _, a := range b.approvals {
		if a.RolloutID == id {
			out = append(out, a)
		}
	}
	return out, nil
}

func (b *fakeBackend) DecideApproval(ctx context.Context, id, aid string, approve bool, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range b.approvals {
		if a.ID == aid && a.RolloutID == id {
			actor := identity.PrincipalFromContext(ctx).Actor()
			if a.RequestedBy == actor {
				return rollout.ErrSelfApproval
			}
			a.State, a.DecidedBy, a.DecisionReason = rollout.ApprovalRejected, actor, reason
			if approve {
				a.State = rollout.ApprovalApproved
			}
			return nil
		}
	}
	return errs.ErrNotFound
}

func (b *fakeBackend) RepoStatus(context.Context) (*manifests.Status, error) {
	if b.repoErr != nil {
		return nil, b.repoErr
	}
	return b.status, nil
}

func (b *fakeBackend) Drafts(context.Context, int) ([]*manifests.DraftView, error) {
	return b.drafts, nil
}

func (b *fakeBackend) Device(_ context.Context, id string) (*DeviceView, error) {
	if d := b.devices[id]; d != nil {
		return d, nil
	}
	return nil, fmt.Errorf("device %s: %w", id, errs.ErrNotFound)
}

// ListDevices filters b.devices as the store does, in id order, with
// the same cursor and page rules.
func (b *fakeBackend) ListDevices(_ context.Context, q handsets.DeviceQuery) (*handsets.DevicePage, error) {
	if err := q.Validate(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.listed = append(b.listed, q)
	b.mu.Unlock()
	page := &handsets.DevicePage{}
	for _, id := range slices.Sorted(maps.Keys(b.devices)) {
		v := b.devices[id]
		d := v.Device
		var st *handsets.PatchState
		for i := range v.Patches {
			if v.Patches[i].PatchID == q.PatchID {
				st = &v.Patches[i]
			}
		}
		if !strings.HasPrefix(id, q.IDPrefix) || id <= q.After && q.After != "" ||
			q.Model != "" && d.Model != q.Model || q.Build != "" && d.Build != q.Build ||
			q.Region != "" && d.Region != q.Region || q.State != "" && (st == nil || st.State != q.State) {
			continue
		}
		if len(page.Devices) == q.Limit {
			page.Next = page.Devices[q.Limit-1].Device.ID
			break
		}
		page.Devices = append(page.Devices, handsets.DeviceRow{Device: d, Patch: st})
	}
	return page, nil
}
