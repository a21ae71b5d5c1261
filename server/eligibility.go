package server

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"

	"github.com/patchfleet/ota/manifests"
)

// TargetSource is where published targets come from: the TUF repository.
type TargetSource interface {
	// TargetsVersion is cheap; PublishedTargets is called only when it
	// changes.
	TargetsVersion() int64
	PublishedTargets() (version int64, targets []manifests.TargetInfo)
}

// NewestRelease is the default eligibility: a device is offered the newest
// published target whose custom metadata matches its model and build
// range and whose patch it does not run yet. The staged-rollout issue
// replaces it.
type NewestRelease struct {
	Source TargetSource
	cache  atomic.Pointer[releaseList]
}

var _ Eligibility = (*NewestRelease)(nil)

// release is a published target with its custom metadata decoded.
type release struct {
	target manifests.TargetInfo
	custom manifests.TargetCustom
}

type releaseList struct {
	version  int64
	releases []release // newest first
}

// RolloutNewest is the rollout id of offers made by NewestRelease.
const RolloutNewest = "newest"

// Offer implements Eligibility. It decodes the published targets once per
// targets version, so a check-in costs a scan of a few structs.
func (n *NewestRelease) Offer(_ context.Context, d *Device) (*Offer, error) {
	for _, r := range n.releases() {
		c := r.custom
		if d.Patched(c.PatchID) {
			continue
		}
		if len(c.Models) > 0 && !slices.Contains(c.Models, d.Model) {
			continue
		}
		if c.BuildMin != "" && CompareBuilds(d.Build, c.BuildMin) < 0 {
			continue
		}
		if c.BuildMax != "" && CompareBuilds(d.Build, c.BuildMax) > 0 {
			continue
		}
		return &Offer{Target: r.target.Path, Length: r.target.Length, SHA256: r.target.SHA256,
			PatchID: c.PatchID, RolloutID: RolloutNewest, Custom: c}, nil
	}
	return nil, nil
}

func (n *NewestRelease) releases() []release {
	if l := n.cache.Load(); l != nil && l.version == n.Source.TargetsVersion() {
		return l.releases
	}
	version, targets := n.Source.PublishedTargets()
	l := &releaseList{version: version, releases: decodeReleases(targets)}
	slices.SortStableFunc(l.releases, func(a, b release) int { return b.custom.Released.Compare(a.custom.Released) })
	n.cache.Store(l)
	return l.releases
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
// targets metadata (the same Source NewestRelease offers from): a patch
// is known while a published target carries its id, and unknown again
// once every target of it is yanked.
type PublishedPatches struct {
	Source TargetSource
	cache  atomic.Pointer[patchIndex]
}

var _ Catalog = (*PublishedPatches)(nil)

type patchIndex struct {
	version int64
	paths   map[string][]string // patch id -> target paths, sorted
}

// PatchTargets implements Catalog. Like NewestRelease, it decodes the
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
