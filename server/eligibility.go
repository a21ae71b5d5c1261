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
	l := &releaseList{version: version}
	for _, t := range targets {
		var c manifests.TargetCustom
		if len(t.Custom) == 0 || json.Unmarshal(t.Custom, &c) != nil || c.PatchID == "" {
			continue // not a patch this server drafted: never offered
		}
		l.releases = append(l.releases, release{target: t, custom: c})
	}
	slices.SortStableFunc(l.releases, func(a, b release) int { return b.custom.Released.Compare(a.custom.Released) })
	n.cache.Store(l)
	return l.releases
}
