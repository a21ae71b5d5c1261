package main

import (
	"math"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/rollout"
)

// TestDemoSaltIsAValidSalt: the demo's rollout salt follows the rule of
// a chosen salt (at most 9 digits) for every seed, a random one (up to
// 2^31, 10 digits) or one given with --seed, and differs by seed.
func TestDemoSaltIsAValidSalt(t *testing.T) {
	seen := map[string]uint64{}
	for _, seed := range []uint64{1, 42, 1<<31 + 1, 1234567890, math.MaxUint64} {
		salt := demoSalt(seed)
		_, _, err := rollout.NewRollout(rollout.Rollout{ID: "ro-demo", Stages: []float64{10}, Salt: salt, Policy: rollout.DefaultPolicy(),
			Release: rollout.RolloutRelease{Target: demoTarget, PatchID: demoPatchID, InstallsBuild: "7.5.0"}}, "demo-operator", time.Now())
		if err != nil {
			t.Errorf("seed %d: salt %q refused: %v", seed, salt, err)
		}
		if other, ok := seen[salt]; ok {
			t.Errorf("seeds %d and %d have one salt %q", other, seed, salt)
		}
		seen[salt] = seed
	}
}
