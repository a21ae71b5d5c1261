package sqlstore

import (
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestOfferBudget runs the offer budget's cases against SQLite and,
// when OTA_TEST_POSTGRES_DSN is set, PostgreSQL.
func TestOfferBudget(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"TwoReplicasKeepTheCap", testOfferBudgetTwoReplicas},
		{"ClaimsInChunks", testOfferBudgetClaimsInChunks},
		{"RacedOfferGivenBack", testOfferBudgetRacedOfferGivenBack},
		{"PastMinutesDropped", testOfferBudgetPastMinutesDropped},
	})
}

// countBudgetClaims counts the statements that write (or try to write)
// the shared budget through db, from now on.
func countBudgetClaims(t testing.TB, db *DB) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	name := fmt.Sprintf("test:count_budget_claims_%p", &n)
	if err := db.gorm.Callback().Raw().After("gorm:raw").Register(name, func(tx *gorm.DB) {
		if strings.HasPrefix(tx.Statement.SQL.String(), "INSERT INTO rollout_offer_budget") {
			n.Add(1)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return &n
}

// budgetClaimed is n of the shared budget of rollout id in the minute
// that holds at: the offers claimed by all replicas.
func budgetClaimed(t testing.TB, db *DB, id string, at time.Time) int64 {
	t.Helper()
	var n []int64
	if err := db.gorm.Raw(`SELECT n FROM rollout_offer_budget WHERE rollout_id = ? AND minute = ?`,
		id, dbTime(at).Truncate(time.Minute)).Scan(&n).Error; err != nil {
		t.Fatal(err)
	}
	if len(n) == 0 {
		return 0
	}
	return n[0]
}

// firstOffer records the first offer of rollout r to d at now under a
// cap of limit and returns the store's answer.
func firstOffer(t testing.TB, rs *RolloutStore, r *rollout.Rollout, d *handsets.Device, limit int, now time.Time) bool {
	t.Helper()
	dec := rollout.Decision{RolloutID: r.ID, Kind: rollout.OfferFirst, Release: r.Release}
	ok, err := rs.RecordOffer(t.Context(), dec, nil, dec.Record(nil, d, now), limit, now)
	if err != nil {
		t.Errorf("offer of %s to %s: %v", r.ID, d.ID, err)
	}
	return ok
}

// testOfferBudgetTwoReplicas: two DBs on one database (two otad
// replicas) offer a capped rollout to 120 handsets from 12 goroutines
// in one minute, three times the cap: the offers made are the cap,
// exactly (each replica is refused only once its allowance is spent
// and the shared budget full), and each was recorded.
func testOfferBudgetTwoReplicas(t *testing.T, b backend) {
	dsn := b.newDSN(t)
	db := mustOpen(t, dsn)
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	replicas := []*RolloutStore{db.Rollouts(), mustOpen(t, dsn).Rollouts()}
	r := startedRollout(t, replicas[0], "ro-a")
	const nHandsets, limit, workers = 120, 40, 6 // per replica
	devs := make([]*handsets.Device, nHandsets)
	for i := range devs {
		devs[i] = newDevice(fmt.Sprintf("dev_%03d", i), "px-7")
		mustEnroll(t, db.Devices(), devs[i], "hash-"+devs[i].ID)
	}
	now := t0.Add(time.Minute)
	var made [2]atomic.Int32
	var wg sync.WaitGroup
	for i := range 2 * workers {
		wg.Go(func() {
			rep := i % 2
			for j := i; j < nHandsets; j += 2 * workers {
				// Anywhere in the minute: one budget.
				at := now.Add(time.Duration(j) * 400 * time.Millisecond)
				if firstOffer(t, replicas[rep], r, devs[j], limit, at) {
					made[rep].Add(1)
				}
			}
		})
	}
	wg.Wait()
	total := made[0].Load() + made[1].Load()
	t.Logf("offers: %d by one replica, %d by the other", made[0].Load(), made[1].Load())
	if total != limit {
		t.Errorf("%d offers in the minute, want the cap of %d exactly", total, limit)
	}
	if n := countRows(t, db, "device_rollouts", "rollout_id = ?", r.ID); n != int64(total) {
		t.Errorf("%d offers recorded, %d made", n, total)
	}
	if n := budgetClaimed(t, db, r.ID, now); n != limit {
		t.Errorf("the shared budget has %d claimed, want %d", n, limit)
	}
}

// testOfferBudgetClaimsInChunks: a replica claims from the shared
// budget a chunk at a time, an eighth of the cap: one offer under a cap
// of 80 claims 10, and the next 9 claim none. Alone, from 8 goroutines,
// it reaches the cap exactly, also when the cap is not a multiple of
// the chunk, with about limit/chunk claims instead of one per offer.
func testOfferBudgetClaimsInChunks(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	claims := countBudgetClaims(t, db)
	r := startedRollout(t, rs, "ro-a")
	now := t0.Add(time.Minute)
	for i := range 10 {
		d := newDevice(fmt.Sprintf("dev_%d", i), "px-7")
		mustEnroll(t, s, d, "hash-"+d.ID)
		if !firstOffer(t, rs, r, d, 80, now) {
			t.Fatalf("offer %d refused under a cap of 80", i)
		}
		if n := budgetClaimed(t, db, r.ID, now); i == 0 && n != 10 {
			t.Errorf("after one offer the shared budget has %d claimed, want a chunk of 10", n)
		}
	}
	if got := claims.Load(); got != 1 {
		t.Errorf("10 offers under a cap of 80 claimed %d times, want once (a chunk of 10)", got)
	}

	for _, limit := range []int{80, 100} { // chunks of 10, and 12 with 4 left over
		claims.Store(0)
		id := fmt.Sprintf("ro-%d", limit)
		var granted atomic.Int32
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 2 * limit / 8 {
					ok, err := rs.ClaimOffer(ctx, id, now, limit)
					if err != nil {
						t.Error(err)
						return
					}
					if ok {
						granted.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if got := granted.Load(); got != int32(limit) {
			t.Errorf("cap %d: one replica made %d offers, want the cap", limit, got)
		}
		if n := budgetClaimed(t, db, id, now); n != int64(limit) {
			t.Errorf("cap %d: the shared budget has %d claimed", limit, n)
		}
		// The full chunks, then at most two tries of each smaller size
		// at the end of the minute (one that fits, one that does not).
		chunk := offerChunk(limit)
		if got, most := claims.Load(), int64(limit/chunk+2*bits.Len(uint(chunk))); got > most {
			t.Errorf("cap %d: %d offers claimed %d times, want at most %d (chunks of %d)", limit, limit, got, most, chunk)
		}
		// Spent: refused without another statement.
		claims.Store(0)
		if ok, err := rs.ClaimOffer(ctx, id, now.Add(30*time.Second), limit); err != nil || ok {
			t.Errorf("cap %d: a claim past the cap: %v, %v, want false", limit, ok, err)
		}
		if got := claims.Load(); got != 0 {
			t.Errorf("cap %d: a claim once the budget is full wrote it %d times, want none", limit, got)
		}
	}
}

// testOfferBudgetRacedOfferGivenBack: an offer that another check-in of
// the handset made first (nothing recorded) gives what it took back to
// the replica's allowance, and the next offer takes it without a claim.
// A cap of 5 claims one at a time (chunk 1).
func testOfferBudgetRacedOfferGivenBack(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	claims := countBudgetClaims(t, db)
	r := startedRollout(t, rs, "ro-a")
	now := t0.Add(time.Minute)
	var devs []*handsets.Device
	for i := range 3 {
		d := newDevice(fmt.Sprintf("dev_%d", i), "px-7")
		mustEnroll(t, s, d, "hash-"+d.ID)
		devs = append(devs, d)
	}
	const limit = 5
	if !firstOffer(t, rs, r, devs[0], limit, now) {
		t.Fatal("the first offer was refused")
	}
	// The same first offer again, as a concurrent check-in of dev_0
	// that read no record: it finds one and writes nothing.
	if !firstOffer(t, rs, r, devs[0], limit, now) {
		t.Fatal("the raced offer was refused")
	}
	if left := allowanceLeft(db, r.ID); left != 1 {
		t.Errorf("after a raced offer the allowance holds %d, want the 1 given back", left)
	}
	before := claims.Load()
	if !firstOffer(t, rs, r, devs[1], limit, now) {
		t.Fatal("the offer after the race was refused")
	}
	if got := claims.Load() - before; got != 0 {
		t.Errorf("the offer after the race claimed %d times, want none (it takes what the raced one gave back)", got)
	}
	if !firstOffer(t, rs, r, devs[2], limit, now) {
		t.Fatal("the third offer was refused")
	}
	if got := claims.Load() - before; got != 1 {
		t.Errorf("the next offer claimed %d times, want once: the allowance was spent", got)
	}
	if n := countRows(t, db, "device_rollouts", "rollout_id = ?", r.ID); n != 3 {
		t.Errorf("%d offers recorded, want 3", n)
	}
}

// testOfferBudgetPastMinutesDropped: once a later minute is asked for,
// the allowances of the earlier one are dropped (memory holds the
// current minute's only) and that minute is never claimed again.
func testOfferBudgetPastMinutesDropped(t *testing.T, b backend) {
	db, _, rs := mustRollouts(t, b)
	ctx := t.Context()
	claims := countBudgetClaims(t, db)
	minute := t0.Truncate(time.Minute)
	const limit = 80 // chunks of 10
	claim := func(id string, at time.Time) bool {
		t.Helper()
		ok, err := rs.ClaimOffer(ctx, id, at, limit)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, id := range []string{"ro-a", "ro-b", "ro-c"} {
		if !claim(id, minute.Add(10*time.Second)) {
			t.Fatalf("%s: the first claim was refused", id)
		}
	}
	if n := allowances(db); n != 3 {
		t.Errorf("%d allowances kept, want 3", n)
	}
	if !claim("ro-a", minute.Add(time.Minute)) {
		t.Fatal("the claim of the next minute was refused")
	}
	if n := allowances(db); n != 1 {
		t.Errorf("%d allowances kept after a claim of the next minute, want 1: the past minute's are dropped", n)
	}
	// ro-b kept 9 of minute in its allowance, now dropped, and the minute
	// has passed: refused, with no claim.
	before := claims.Load()
	if claim("ro-b", minute.Add(50*time.Second)) {
		t.Error("a claim of a past minute was granted")
	}
	if got := claims.Load() - before; got != 0 {
		t.Errorf("a claim of a past minute wrote the budget %d times, want none", got)
	}
	if n := budgetClaimed(t, db, "ro-b", minute); n != 10 {
		t.Errorf("ro-b's past minute has %d claimed, want the 10 of its one chunk", n)
	}
	// The current minute goes on from the allowance.
	if !claim("ro-a", minute.Add(time.Minute+30*time.Second)) {
		t.Error("a claim of the current minute was refused")
	}
	if got := claims.Load() - before; got != 0 {
		t.Errorf("a claim of the current minute wrote the budget %d times, want none (its allowance has 9)", got)
	}
}

// allowanceLeft is what this replica's allowance of rollout id holds.
func allowanceLeft(db *DB, id string) int {
	db.offers.mu.Lock()
	defer db.offers.mu.Unlock()
	if a := db.offers.by[id]; a != nil {
		return a.left
	}
	return 0
}

// allowances is how many allowances this replica keeps.
func allowances(db *DB) int {
	db.offers.mu.Lock()
	defer db.offers.mu.Unlock()
	return len(db.offers.by)
}
