package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// Eligibility decides what a checked-in handset is offered.
type Eligibility interface {
	// Decide answers handset d, whose records of rollouts are records,
	// at in.Now: an Answer with an Offer, or with a refusal.
	Decide(ctx context.Context, d *handsets.Device, records []*handsets.DeviceRollout, in rollout.DecisionInput) (Answer, error)
}

// Answer is an Eligibility's answer to a check-in: the decision, and the
// Offer to send when it is one.
type Answer struct {
	Decision rollout.Decision
	Offer    *Offer
}

// DefaultRolloutRefresh is how long a replica answers check-ins from its
// copy of the rollouts before it reads them again: what another
// replica's pause takes to reach this one's handsets. A change made
// through this replica reaches them at once (Invalidate).
const DefaultRolloutRefresh = 2 * time.Second

// RolloutEligibility is the Eligibility of staged rollouts: publishing a
// release offers it to no one, a running rollout does. It keeps a copy
// of the rollouts per replica, read again every Refresh, so a check-in
// costs no query for them: ChooseRollout decides on the copy and the
// handset's records (read with the device), and only a new offer or a
// retry writes (RecordOffer).
type RolloutEligibility struct {
	Store   rollout.RolloutStore
	Source  rollout.TargetSource
	Refresh time.Duration // default DefaultRolloutRefresh
	// Logger hears of a failed refresh (the last copy goes on serving).
	Logger *slog.Logger

	cache     atomic.Pointer[rolloutCache]
	refreshMu sync.Mutex
	// exhausted maps a rollout id to the minute (Unix minutes) whose
	// offer budget this replica found full: until the minute ends, its
	// handsets are refused without a claim.
	exhausted sync.Map
	targets   atomic.Pointer[targetIndex]
}

var (
	_ Eligibility   = (*RolloutEligibility)(nil)
	_ ReleaseLookup = (*RolloutEligibility)(nil)
)

type rolloutCache struct {
	read     time.Time
	rollouts []*rollout.Rollout
}

type targetIndex struct {
	version int64
	byPath  map[string]release
}

// release is a published target with its custom metadata decoded: a
// release's full image, or one of its incremental payloads.
type release struct {
	target manifests.TargetInfo
	custom manifests.TargetCustom
}

// payload is the target as an offer's payload: the full image (the
// caller sets FromBuild and FullBytes of an incremental one).
func (r release) payload() rollout.Payload {
	return rollout.Payload{Target: r.target.Path, Bytes: r.target.Length, FullBytes: r.target.Length}
}

// keepAborted is how long an aborted rollout stays in the copy: handsets
// that were installing when it was aborted get their offer answered
// again until they finish.
const keepAborted = 7 * 24 * time.Hour

// Invalidate makes the next check-in read the rollouts again: the admin
// API calls it after every change it makes.
func (e *RolloutEligibility) Invalidate() { e.cache.Store(nil) }

// Rollouts returns the replica's copy of the rollouts that can make or
// answer offers (all but drafts and long-aborted ones), reading them when
// the copy is older than Refresh. The copy is shared: never change it.
func (e *RolloutEligibility) Rollouts(ctx context.Context, now time.Time) ([]*rollout.Rollout, error) {
	refresh := e.Refresh
	if refresh <= 0 {
		refresh = DefaultRolloutRefresh
	}
	c := e.cache.Load()
	if c != nil && now.Sub(c.read) < refresh && !now.Before(c.read) {
		return c.rollouts, nil
	}
	if c != nil && !e.refreshMu.TryLock() {
		// Another check-in is reading them: answer from the last copy.
		return c.rollouts, nil
	}
	if c == nil {
		e.refreshMu.Lock()
	}
	defer e.refreshMu.Unlock()
	if c2 := e.cache.Load(); c2 != nil && c2 != c && now.Sub(c2.read) < refresh {
		return c2.rollouts, nil
	}
	all, err := e.Store.Rollouts(ctx, rollout.RolloutRunning, rollout.RolloutPaused, rollout.RolloutCompleted, rollout.RolloutAborted)
	if err != nil {
		if c != nil {
			if e.Logger != nil {
				e.Logger.WarnContext(ctx, "reading rollouts failed; answering check-ins from the last copy", slog.Any("error", err))
			}
			return c.rollouts, nil
		}
		return nil, fmt.Errorf("read rollouts: %w", err)
	}
	live := all[:0]
	for _, r := range all {
		if r.State != rollout.RolloutAborted || now.Sub(r.EndedAt) < keepAborted {
			live = append(live, r)
		}
	}
	e.cache.Store(&rolloutCache{read: now, rollouts: live})
	return live, nil
}

// RolloutRelease implements ReleaseLookup from the replica's copy of
// the rollouts (Rollouts): no query but the copy's refresh, which the
// check-in's decision would make anyway.
func (e *RolloutEligibility) RolloutRelease(ctx context.Context, id string, now time.Time) (rollout.RolloutRelease, bool) {
	all, err := e.Rollouts(ctx, now)
	if err != nil {
		return rollout.RolloutRelease{}, false
	}
	for _, r := range all {
		if r.ID == id {
			return r.Release, true
		}
	}
	return rollout.RolloutRelease{}, false
}

// Decide implements Eligibility: ChooseRollout over the rollouts whose
// release is still published, then, for a first offer or a retry, the
// record of it (and the offer budget's claim) in the store.
func (e *RolloutEligibility) Decide(ctx context.Context, d *handsets.Device, records []*handsets.DeviceRollout, in rollout.DecisionInput) (Answer, error) {
	all, err := e.Rollouts(ctx, in.Now)
	if err != nil {
		return Answer{}, err
	}
	targets := e.publishedTargets()
	rollouts := make([]*rollout.Rollout, 0, len(all))
	var yanked *rollout.Rollout
	for _, r := range all {
		if _, ok := targets[r.Release.Target]; ok {
			rollouts = append(rollouts, r)
		} else if yanked == nil && r.State.Offering() && r.Selector.Matches(d) && r.Pending(d) {
			yanked = r
		}
	}
	minute := in.Now.Unix() / 60
	dec := rollout.ChooseRollout(rollouts, d, records, in, func(id string) bool {
		m, ok := e.exhausted.Load(id)
		return !ok || m.(int64) != minute
	})
	if !dec.Offered() {
		if errors.Is(dec.Reason, rollout.ErrNotSelected) && yanked != nil {
			dec = rollout.Refuse(yanked, rollout.ErrReleaseNotPublished, 0)
		}
		return Answer{Decision: dec}, nil
	}
	r := findRollout(rollouts, dec.RolloutID)
	var prev *handsets.DeviceRollout
	for _, dr := range records {
		if dr.RolloutID == dec.RolloutID {
			prev = dr
		}
	}
	rel := targets[r.Release.Target]
	dec.Payload = rollout.ChoosePayload(rel.payload(), d.Build, prev, func(build string) (rollout.Payload, bool) {
		inc, ok := targets[rel.custom.Incrementals[build]]
		if !ok || inc.custom.Incremental == nil || inc.custom.Incremental.Of != rel.target.Path {
			return rollout.Payload{}, false
		}
		return inc.payload(), true
	})
	if dec.TakesBudget() {
		ok, err := e.Store.RecordOffer(ctx, dec, prev, dec.Record(prev, d, in.Now), r.Policy.MaxOffersPerMinute, in.Now)
		if err != nil {
			return Answer{}, err
		}
		if !ok {
			e.exhausted.Store(dec.RolloutID, minute)
			return Answer{Decision: dec.CapReached()}, nil
		}
	}
	offered := targets[dec.Payload.Target]
	return Answer{Decision: dec, Offer: &Offer{Target: offered.target.Path, Length: offered.target.Length,
		SHA256: offered.target.SHA256, PatchID: rel.custom.PatchID, RolloutID: r.ID, Custom: offered.custom,
		Incremental: dec.Payload.Incremental(), FullLength: rel.target.Length, Urgent: dec.Urgent}}, nil
}

func findRollout(rollouts []*rollout.Rollout, id string) *rollout.Rollout {
	for _, r := range rollouts {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// publishedTargets decodes the published targets once per targets
// version: a check-in costs a map lookup.
func (e *RolloutEligibility) publishedTargets() map[string]release {
	if idx := e.targets.Load(); idx != nil && idx.version == e.Source.TargetsVersion() {
		return idx.byPath
	}
	version, targets := e.Source.PublishedTargets()
	idx := &targetIndex{version: version, byPath: map[string]release{}}
	for _, r := range decodeReleases(targets) {
		idx.byPath[r.target.Path] = r
	}
	e.targets.Store(idx)
	return idx.byPath
}

// decodeReleases keeps the targets that are patches: those with custom
// metadata naming a patch id. Others (not drafted by this server) are
// never offered and never reported on.
func decodeReleases(targets []manifests.TargetInfo) []release {
	var out []release
	for _, t := range targets {
		var c manifests.TargetCustom
		if len(t.Custom) == 0 || json.Unmarshal(t.Custom, &c) != nil || c.PatchID == "" {
			continue
		}
		out = append(out, release{target: t, custom: c})
	}
	return out
}

// Catalog is what the fleet knows of the published patches: a report
// must name one of them, and the target it names must be one of its
// targets, so neither field can carry text of the handset's choosing.
type Catalog interface {
	// PatchTargets returns the paths of the published targets of
	// patchID; ok is false when no published target is that patch.
	PatchTargets(patchID string) (paths []string, ok bool)
}

// PublishedPatches is the Catalog of the patches in the published TUF
// targets metadata (the same Source RolloutEligibility offers from): a patch
// is known while a published target carries its id, and unknown again
// once every target of it is yanked.
type PublishedPatches struct {
	Source rollout.TargetSource
	cache  atomic.Pointer[patchIndex]
}

var _ Catalog = (*PublishedPatches)(nil)

type patchIndex struct {
	version int64
	paths   map[string][]string // patch id -> target paths, sorted
}

// PatchTargets implements Catalog. Like RolloutEligibility, it decodes the
// published targets once per targets version: a report costs a map
// lookup.
func (p *PublishedPatches) PatchTargets(patchID string) ([]string, bool) {
	idx := p.cache.Load()
	if idx == nil || idx.version != p.Source.TargetsVersion() {
		version, targets := p.Source.PublishedTargets()
		idx = &patchIndex{version: version, paths: map[string][]string{}}
		for _, r := range decodeReleases(targets) {
			idx.paths[r.custom.PatchID] = append(idx.paths[r.custom.PatchID], r.target.Path)
		}
		p.cache.Store(idx)
	}
	paths, ok := idx.paths[patchID]
	return paths, ok
}
