package rollout_test

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/patchfleet/ota/server/rollout"
)

// TestCohortPinned pins the cohort function: sqlstore, reports and any
// other implementation must place handsets exactly so, or a handset could
// change stage membership across a release of the server.
func TestCohortPinned(t *testing.T) {
	for _, tc := range []struct {
		salt, id string
		want     int
	}{
		// sha256("ro_1\x00dev_1")[:8] as big-endian uint64 mod 10000,
		// computed with Python's hashlib.
		{"ro_1", "dev_1", 1634},
		{"", "", 3192},
		{"ro_x", "dev_42", cohortOf(t, "ro_x", "dev_42")},
	} {
		if got := rollout.Cohort(tc.salt, tc.id); got != tc.want {
			t.Errorf("Cohort(%q, %q) = %d, want %d", tc.salt, tc.id, got, tc.want)
		}
	}
	// The separator keeps the pair apart: ("ab", "c") is not ("a", "bc").
	if rollout.Cohort("ab", "c") == rollout.Cohort("a", "bc") && rollout.Cohort("ab", "cd") == rollout.Cohort("a", "bcd") {
		t.Error("salt and id are concatenated without a separator")
	}
}

// TestCohortWidening: over 100,000 handsets, every handset in a stage is
// in every wider stage (widening drops nobody), and the share in each
// stage is its percent within 1 point (at 10%: 9% to 11%). Asking twice,
// or in another order, gives the same answer.
func TestCohortWidening(t *testing.T) {
	const n = 100_000
	stages := []float64{0.5, 1, 10, 50, 100}
	salt := "ro_widen"
	in := make([][]bool, len(stages))
	for s, p := range stages {
		in[s] = make([]bool, n)
		count := 0
		for i := range n {
			in[s][i] = rollout.InStage(salt, fmt.Sprintf("dev_%d", i), p)
			if in[s][i] {
				count++
			}
		}
		share := 100 * float64(count) / n
		if share < p-1 || share > p+1 {
			t.Errorf("stage %g%%: %.2f%% of %d handsets in, want within 1 point", p, share, n)
		}
		if p == 100 && count != n {
			t.Errorf("stage 100%%: %d of %d handsets in, want all", count, n)
		}
	}
	for s := 1; s < len(stages); s++ {
		for i := range n {
			if in[s-1][i] && !in[s][i] {
				t.Fatalf("dev_%d is in the %g%% stage but not in the wider %g%% one", i, stages[s-1], stages[s])
			}
		}
	}
	// Backwards, and again: membership does not depend on call order.
	for i := n - 1; i >= 0; i-- {
		if got := rollout.InStage(salt, fmt.Sprintf("dev_%d", i), 10); got != in[2][i] {
			t.Fatalf("dev_%d: InStage at 10%% changed from %v to %v when asked again", i, in[2][i], got)
		}
	}
}

// TestCohortSaltMatters: two rollouts' 10% cohorts are not the same
// handsets, so the same early handsets are not every rollout's guinea pigs.
func TestCohortSaltMatters(t *testing.T) {
	const n = 20_000
	both, a := 0, 0
	for i := range n {
		id := fmt.Sprintf("dev_%d", i)
		inA, inB := rollout.InStage("ro_a", id, 10), rollout.InStage("ro_b", id, 10)
		if inA {
			a++
			if inB {
				both++
			}
		}
	}
	// Independent cohorts share about 10% of their members.
	if share := float64(both) / float64(a); share > 0.2 {
		t.Errorf("%.0f%% of rollout a's 10%% cohort is in rollout b's too, want about 10%%", 100*share)
	}
}

// cohortOf computes the documented formula independently of Cohort.
func cohortOf(tb testing.TB, salt, id string) int {
	tb.Helper()
	sum := sha256.Sum256(append(append([]byte(salt), 0), id...))
	return int(binary.BigEndian.Uint64(sum[:8]) % 10000)
}
