package sqlstore

import (
	"testing"

	"github.com/patchfleet/ota/server/rollout"
)

// Exported for the external benchmarks (package sqlstore_test), which
// import packages that import this one (internal/app): they reuse the
// million-handset fleet the report benchmarks seed, once per run.

// BenchBackends names the backends BenchFleet seeds.
var BenchBackends = []string{"sqlite", "postgres"}

// BenchNow is the seeded fleet's present; BenchRolloutID its rollout.
var BenchNow = seedNow

// BenchRolloutID is the seeded rollout's id.
const BenchRolloutID = seedRolloutID

// BenchFleet returns the database of backend name ("sqlite",
// "postgres") seeded with a million handsets, seeding it on the first
// call of the run; it skips without OTA_BENCH_1M (and, for PostgreSQL,
// OTA_TEST_POSTGRES_DSN).
func BenchFleet(b *testing.B, name string) (*DB, *rollout.Rollout) {
	b.Helper()
	for _, be := range backends {
		if be.name == name {
			benchReports(b, be)
			f := benchFleets[name]
			return f.db, f.rollout
		}
	}
	b.Fatalf("no backend %q", name)
	return nil, nil
}

// The write gate's insides, for the group commit tests and benchmark.

// gateCommits returns how many real COMMITs db's write gate has made
// and how many logical commits they acknowledged.
func gateCommits(db *DB) (real, logical int64) {
	g := db.sqliteGate()
	return g.realCommits.Load(), g.logicalCommits.Load()
}

// withGateTurn runs fn holding db's write turn, outside any logical
// transaction: what the turn's holder owns (the caps, the commit hook,
// the open batch) may be read and set there.
func withGateTurn(t testing.TB, db *DB, fn func(g *writeGate)) {
	t.Helper()
	g := db.sqliteGate()
	if err := g.enter(t.Context()); err != nil {
		t.Fatalf("take the write turn: %v", err)
	}
	defer g.release()
	fn(g)
}

// queuedWriters returns how many writers wait for db's write turn.
func queuedWriters(db *DB) int {
	g := db.sqliteGate()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writers
}
