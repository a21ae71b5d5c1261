package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestRollupsConsistency drives thousands of concurrent state changes,
// offers, reports, erasures and re-enrollments from many goroutines
// while the rollups are folded as the running server folds them, and
// checks every rollup against a count of the rows it counts (or, for
// the result rollups, which outlive erasures, against the results the
// test saw acknowledged): in the middle of folds, at the end with the
// unfolded tail, and after the last fold.
func TestRollupsConsistency(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"ConcurrentChangesFoldsAndErasures", testRollupsConsistent},
	})
}

// The shape of the concurrent run: writers goroutines of opsPerWriter
// operations each over a fleet of fleetSize handsets.
const (
	concWriters      = 16
	concOpsPerWriter = 200 // 3,200 operations in all
	concFleetSize    = 300
	// concPauses is how many folds writer 0 waits to see paused in
	// their middle (and checked there) before it finishes.
	concPauses = 7
	// concFoldEvery is how many operations of a writer make a tick of
	// the folder: some 100 folds in the run, besides the erasures'.
	concFoldEvery = 32
)

var (
	concModels   = []string{"px-7", "px-8", "px-9", "tab-2"}
	concBuilds   = []string{"7.1.0", "7.2.0", "7.3.0", "7.4.0"}
	concRegions  = []string{"DE", "FR", "US", "BR", "JP"}
	concMessages = []string{handsets.MessagingAutoEnabled, handsets.MessagingOptedOut, handsets.MessagingOptedIn}
	concPatches  = [][]string{{}, {"CM-2026-001"}, {"SEC-2026-02"}, {"CM-2026-001", "SEC-2026-02"}}
	concCodes    = []string{"E_DISK_FULL", "E_VERIFY", "E_BOOT"}
)

// uniqueModel is the model of one handset alone, erased during the run:
// no fleet_counts row may name it after its erasure.
const uniqueModel = "px-unique"

// resultKey names a row of the result rollups as the test tracks them.
type resultKey struct {
	rollout string
	hour    int64  // rollout_hourly: the hour's Unix time
	bucket  int    // rollout_install_times
	code    string // rollout_failures
}

// resultTally is what the test expects of the result rollups: the
// record moves it saw acknowledged. They are not recounted from rows:
// an erasure takes a handset's reports and records away, and its past
// results stay counted, by design.
type resultTally struct {
	mu        sync.Mutex
	installed map[resultKey]int64 // by rollout and hour
	failed    map[resultKey]int64 // by rollout and hour
	times     map[resultKey]int64 // by rollout and bucket
	failures  map[resultKey]int64 // by rollout and error code
}

// count adds the move of a record from old by a report of state with
// errorCode received at receivedAt, as the store must count it: only a
// change of state into a result.
func (rt *resultTally) count(old *handsets.DeviceRollout, state, errorCode string, receivedAt time.Time) {
	if old.State == state {
		return
	}
	hour := resultKey{rollout: old.RolloutID, hour: receivedAt.UTC().Truncate(time.Hour).Unix()}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch state {
	case handsets.StateInstalled:
		rt.installed[hour]++
		rt.times[resultKey{rollout: old.RolloutID, bucket: server.InstallTimeBucket(receivedAt.Sub(old.OfferedAt))}]++
	case handsets.StateFailed:
		rt.failed[hour]++
		if errorCode != "" {
			rt.failures[resultKey{rollout: old.RolloutID, code: errorCode}]++
		}
	case handsets.StateRolledBack:
		rt.failed[hour]++
	}
}

// concRun is the shared state of one concurrent run.
type concRun struct {
	t        *testing.T
	db       *DB
	s        *DeviceStore
	rs       *RolloutStore
	ids      []string // the fleet but the unique handset
	keyed    map[string]bool
	locks    map[string]*sync.Mutex // a handset's offers and reports, one at a time
	tally    resultTally
	clock    atomic.Int64 // operations so far: the run's time
	signed   atomic.Int64 // key enrollments so far: their signed timestamps
	sent     sync.Map     // device id -> []handsets.Report acknowledged, under the device's lock
	ops      sync.Map     // operation kind -> *atomic.Int64, for the log and to check none is vacuous
	rollouts [2]*rollout.Rollout
	// pause has the next fold paused after its table k (mod the tables
	// but the last) and returns once the hook checked the rollups there
	// (the k-th pause of the run).
	pause func(k int)
}

// now is the time of a new operation: 30 s of the run per operation, so
// that the run spans some 27 hours (new days for check-ins, many hours
// for results).
func (c *concRun) now() time.Time {
	return t0.Add(time.Duration(c.clock.Add(1)) * 30 * time.Second)
}

func (c *concRun) did(kind string) {
	v, _ := c.ops.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (c *concRun) done(kind string) int64 {
	v, ok := c.ops.Load(kind)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func tokenOf(id string) string { return "hash-" + id }

// erased reports whether err is what a handset's operation gets when the
// handset was erased meanwhile.
func erased(err error) bool {
	return errors.Is(err, errs.ErrDeviceToken) || isTokenErr(err) || errors.Is(err, errs.ErrNotFound)
}

func testRollupsConsistent(t *testing.T, b backend) {
	ctx := t.Context()
	// A pool larger than the writers: a fold paused in the test's hook
	// holds its connection (and, on PostgreSQL, its advisory lock, which
	// erasures' folds queue on holding theirs) while the checks read on
	// others.
	db, err := Open(ctx, b.newDSN(t), Options{Logger: testLogger(t), MaxOpenConns: 2*concWriters + 8})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	c := &concRun{t: t, db: db, s: db.Devices(), rs: db.Rollouts(), keyed: map[string]bool{}, locks: map[string]*sync.Mutex{},
		tally: resultTally{installed: map[resultKey]int64{}, failed: map[resultKey]int64{}, times: map[resultKey]int64{},
			failures: map[resultKey]int64{}}}
	c.rollouts = [2]*rollout.Rollout{startedRollout(t, c.rs, "ro-a"), startedRollout(t, c.rs, "ro-b")}

	setup := rand.New(rand.NewPCG(14, 0))
	for i := range concFleetSize {
		d := newDevice(fmt.Sprintf("dev_%03d", i), concModels[setup.IntN(len(concModels))])
		d.Build, d.Region = concBuilds[setup.IntN(len(concBuilds))], concRegions[setup.IntN(len(concRegions))]
		if i%2 == 0 {
			d.KeyFingerprint, d.KeySignedAt = "fp-"+d.ID, t0
			c.keyed[d.ID] = true
		}
		mustEnroll(t, c.s, d, tokenOf(d.ID))
		c.ids = append(c.ids, d.ID)
		c.locks[d.ID] = new(sync.Mutex)
	}
	mustEnroll(t, c.s, newDevice("dev_unique", uniqueModel), tokenOf("dev_unique"))
	c.locks["dev_unique"] = new(sync.Mutex)

	// The folder, as otad runs it (app.Config.FoldInterval), but paced by
	// the writers (a tick every few operations) rather than by a clock.
	// Writer 0 asks now and then for the next fold to be paused after one
	// of its tables, a different one each time and never the last; the
	// hook then checks the rollups while the fold is half done. Erasures
	// fold too: the hook pauses whichever fold comes first.
	var (
		pauseAfter = atomic.Int32{} // index into counterTables, -1 for none
		paused     atomic.Int32
		pausedAt   [concPauses]chan struct{}
	)
	pauseAfter.Store(-1)
	for i := range pausedAt {
		pausedAt[i] = make(chan struct{})
	}
	db.foldHook = func(table string) {
		i := slices.IndexFunc(counterTables, func(ct *counterTable) bool { return ct.name == table })
		if i < 0 || !pauseAfter.CompareAndSwap(int32(i), -1) {
			return
		}
		c.checkMidFold(ctx, table)
		if n := paused.Add(1); int(n) <= concPauses {
			close(pausedAt[n-1])
		}
	}
	ticks := make(chan struct{}, 1)
	writersDone := make(chan struct{})
	var folder sync.WaitGroup
	folder.Go(func() {
		for {
			select {
			case <-ticks:
			case <-writersDone:
				return
			}
			if _, err := db.FoldRollups(ctx); err != nil {
				t.Errorf("fold: %v", err)
			}
		}
	})
	tick := func() {
		select {
		case ticks <- struct{}{}:
		default:
		}
	}
	c.pause = func(k int) {
		pauseAfter.Store(int32(k % (len(counterTables) - 1)))
		for {
			select {
			case <-pausedAt[k]:
				return
			case ticks <- struct{}{}:
				if t.Failed() {
					return
				}
			}
		}
	}

	var writers sync.WaitGroup
	for g := range concWriters {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 14))
			for i := range concOpsPerWriter {
				if g == 0 {
					c.writerZero(ctx, i)
				}
				c.randomOp(ctx, rng)
				if i%concFoldEvery == concFoldEvery-1 {
					tick()
				}
				if t.Failed() {
					return
				}
			}
		})
	}
	writers.Wait()
	close(writersDone)
	folder.Wait()
	db.foldHook = nil
	if t.Failed() {
		return
	}
	var kinds []string
	c.ops.Range(func(k, v any) bool {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(kinds)
	t.Logf("operations: %v; folds paused and checked: %d", kinds, paused.Load())
	// None of the kinds of change may be missing, or the run proves
	// nothing about it.
	for _, k := range []string{"check-in", "first offer", "retry", "report moved a record", "result", "duplicate",
		"erasure", "re-enrollment"} {
		if c.done(k) == 0 {
			t.Errorf("no %q in the run", k)
		}
	}

	// The end: exact with the tail, and after the last fold.
	c.mustVerify(ctx, "after the writers, before the last fold")
	mustFold(t, db)
	c.mustVerify(ctx, "after the last fold")
	for _, ct := range counterTables {
		if !ct.dropEmpty {
			continue
		}
		if n := countRows(t, db, ct.name, "n <= 0"); n != 0 {
			t.Errorf("%s keeps %d rows at zero or below after the last fold", ct.name, n)
		}
	}
	if n := countRows(t, db, "fleet_counts", "model = ?", uniqueModel); n != 0 {
		t.Errorf("fleet_counts keeps %d rows of the erased handset's model %s", n, uniqueModel)
	}
	c.checkResults(ctx)
}

// writerZero is writer 0's part besides its random operations: it
// erases the handset with the unique model early on, and at evenly
// spaced points has the next fold paused and checked (c.pause), so that
// concPauses folds are checked in their middle while the other writers
// run.
func (c *concRun) writerZero(ctx context.Context, i int) {
	t := c.t
	if i == 10 {
		if err := c.s.DeleteDevice(ctx, "dev_unique"); err != nil {
			t.Errorf("erase dev_unique: %v", err)
			return
		}
		c.did("erasure")
		// DeleteDevice folds at once: the model's rows are gone.
		if n := countRows(t, c.db, "fleet_counts", "model = ?", uniqueModel); n != 0 {
			t.Errorf("fleet_counts keeps %d rows of %s after its only handset was erased", n, uniqueModel)
		}
	}
	step := concOpsPerWriter / (concPauses + 1)
	if i > 0 && i%step == 0 && i/step <= concPauses {
		c.pause(i/step - 1)
	}
}

// mustVerify fails the test on any disagreement VerifyRollups finds.
func (c *concRun) mustVerify(ctx context.Context, when string) {
	c.t.Helper()
	bad, err := c.db.VerifyRollups(ctx)
	if err != nil {
		c.t.Errorf("verify rollups %s: %v", when, err)
		return
	}
	for _, line := range bad {
		c.t.Errorf("verify rollups %s: %s", when, line)
	}
}

// reportsSince is earlier than any hour of the run (erasures take the
// hour of the wall clock): the reports read every hour.
var reportsSince = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// checkMidFold runs in the fold's transaction, paused after table:
// VerifyRollups, a read-only transaction on another connection, finds
// the committed rows and rollups in agreement, and the reports read one
// snapshot whose parts agree with each other.
func (c *concRun) checkMidFold(ctx context.Context, table string) {
	t := c.t
	c.mustVerify(ctx, "with a fold paused after "+table)
	for _, r := range c.rollouts {
		rr, err := c.db.Reports().RolloutRollups(ctx, r.ID, reportsSince, server.FleetFilter{})
		if err != nil {
			t.Errorf("rollout rollups of %s with a fold paused after %s: %v", r.ID, table, err)
			continue
		}
		// The states over time add up to the states now.
		now, over := map[string]int64{}, map[string]int64{}
		for _, rc := range rr.Records {
			now[rc.State] += rc.N
		}
		for _, d := range rr.StateHours {
			if d.N != 0 {
				over[d.State] += d.N
			}
		}
		for st, n := range over {
			if n == 0 {
				delete(over, st)
			}
		}
		if !mapsEqual(now, over) {
			t.Errorf("rollout %s with a fold paused after %s: records by state %v, states over time add up to %v", r.ID, table, now, over)
		}
		// Every install is in an hour and in a time bucket; every failure
		// with a code in an hour.
		var installed, failed, timed, coded int64
		for _, h := range rr.Hourly {
			installed += h.Installed
			failed += h.Failed
		}
		for _, bc := range rr.InstallTimes {
			timed += bc.N
		}
		for _, f := range rr.Failures {
			coded += f.Count
		}
		if installed != timed || coded > failed {
			t.Errorf("rollout %s with a fold paused after %s: %d installed by hour, %d by install time; %d failures by code, %d failed by hour",
				r.ID, table, installed, timed, coded, failed)
		}
	}
	er, err := c.db.Reports().ExposureRollups(ctx, "", 30)
	if err != nil {
		t.Errorf("exposure rollups with a fold paused after %s: %v", table, err)
		return
	}
	var segments, daily int64
	for _, s := range er.Segments {
		segments += s.N
	}
	for _, d := range er.Daily {
		if d.Day == er.Day {
			daily += d.N
		}
	}
	if segments != daily {
		t.Errorf("exposure of %s with a fold paused after %s: %d handsets by segment, %d in the daily totals", er.Day, table, segments, daily)
	}
}

func mapsEqual[K comparable](a, b map[K]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkResults compares the result rollups, folded, with the results
// the test saw acknowledged.
func (c *concRun) checkResults(ctx context.Context) {
	t := c.t
	got := resultTally{installed: map[resultKey]int64{}, failed: map[resultKey]int64{}, times: map[resultKey]int64{},
		failures: map[resultKey]int64{}}
	for _, r := range c.rollouts {
		rr, err := c.db.Reports().RolloutRollups(ctx, r.ID, reportsSince, server.FleetFilter{})
		if err != nil {
			t.Fatalf("rollout rollups of %s: %v", r.ID, err)
		}
		var installed, timed int64
		for _, h := range rr.Hourly {
			k := resultKey{rollout: r.ID, hour: h.Hour.Unix()}
			if h.Installed != 0 {
				got.installed[k] = h.Installed
			}
			if h.Failed != 0 {
				got.failed[k] = h.Failed
			}
			installed += h.Installed
		}
		for _, bc := range rr.InstallTimes {
			got.times[resultKey{rollout: r.ID, bucket: bc.Bucket}] = bc.N
			timed += bc.N
		}
		for _, f := range rr.Failures {
			got.failures[resultKey{rollout: r.ID, code: f.ErrorCode}] = f.Count
		}
		if installed != timed {
			t.Errorf("rollout %s: rollout_hourly counts %d installs, rollout_install_times %d", r.ID, installed, timed)
		}
	}
	want := &c.tally
	for _, cmp := range []struct {
		what      string
		got, want map[resultKey]int64
	}{
		{"rollout_hourly installed", got.installed, want.installed},
		{"rollout_hourly failed", got.failed, want.failed},
		{"rollout_install_times", got.times, want.times},
		{"rollout_failures", got.failures, want.failures},
	} {
		if !mapsEqual(cmp.got, cmp.want) {
			t.Errorf("%s disagree with the results acknowledged:\n got %v\nwant %v", cmp.what, cmp.got, cmp.want)
		}
	}
	// The results of an hour were read from the table itself too: the
	// report reads above add a tail, empty after the last fold.
	if n := countRows(t, c.db, "rollout_hourly", "1 = 1"); n != int64(len(mapUnion(got.installed, got.failed))) {
		t.Errorf("rollout_hourly has %d rows for %d hours with results", n, len(mapUnion(got.installed, got.failed)))
	}
}

func mapUnion(a, b map[resultKey]int64) map[resultKey]bool {
	out := map[resultKey]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// randomOp runs one operation drawn with rng.
func (c *concRun) randomOp(ctx context.Context, rng *rand.Rand) {
	id := c.ids[rng.IntN(len(c.ids))]
	switch p := rng.IntN(100); {
	case p < 34:
		c.checkIn(ctx, rng, id)
	case p < 55:
		c.offer(ctx, rng, id, false)
	case p < 92:
		c.report(ctx, rng, id, false)
	case p < 93:
		// The handset's erasure at the same moment as its own retry or
		// report.
		c.offer(ctx, rng, id, true)
		c.report(ctx, rng, id, true)
	case p < 95:
		c.erase(ctx, id)
	default:
		c.reEnroll(ctx, rng, id)
	}
}

// erase erases the handset, unless it is erased already. Some erasures
// race the handset's own report, which once deadlocked on PostgreSQL
// (the report took the device row last); no error is tolerated there.
func (c *concRun) erase(ctx context.Context, id string) {
	err := c.s.DeleteDevice(ctx, id)
	switch {
	case err == nil:
		c.did("erasure")
	case erased(err):
	default:
		c.t.Errorf("erase %s: %v", id, err)
	}
}

// checkIn is a handset's check-in that changes its stored state, as
// Fleet saves it: read, change, save over the revision read, again on a
// conflict.
func (c *concRun) checkIn(ctx context.Context, rng *rand.Rand, id string) {
	now := c.now()
	channel := "stable"
	if rng.IntN(8) == 0 {
		channel = "beta"
	}
	build := concBuilds[rng.IntN(len(concBuilds))]
	patches := concPatches[rng.IntN(len(concPatches))]
	messaging := concMessages[rng.IntN(len(concMessages))]
	encryption := rng.IntN(2) == 0
	for {
		d, _, err := c.s.CheckInState(ctx, tokenOf(id))
		if erased(err) {
			return
		}
		if err != nil {
			c.t.Errorf("check-in of %s: read: %v", id, err)
			return
		}
		next := d.AfterCheckIn(handsets.CheckIn{Build: build, Model: d.Model, Channel: channel, InstalledPatches: patches,
			CloudMessaging: messaging, NumberEncryption: encryption}, now)
		err = c.s.SaveCheckIn(ctx, d, next, nil)
		switch {
		case errors.Is(err, errs.ErrConflict):
			c.did("check-in conflict")
			continue
		case erased(err):
			return
		case err != nil:
			c.t.Errorf("check-in of %s: save: %v", id, err)
			return
		}
		c.did("check-in")
		return
	}
}

// offer makes a first offer of a rollout the handset has no record of,
// or a retry of one whose last attempt failed, as Fleet records them.
// It holds the handset's lock: the test must know the record a report
// moves (see report); erasures do not take it.
func (c *concRun) offer(ctx context.Context, rng *rand.Rand, id string, eraseMeanwhile bool) {
	c.locks[id].Lock()
	defer c.locks[id].Unlock()
	now := c.now()
	d, recs, err := c.s.CheckInState(ctx, tokenOf(id))
	if erased(err) {
		return
	}
	if err != nil {
		c.t.Errorf("offer to %s: read: %v", id, err)
		return
	}
	r := c.rollouts[rng.IntN(len(c.rollouts))]
	var prev *handsets.DeviceRollout
	for _, rec := range recs {
		if rec.RolloutID == r.ID {
			prev = rec
		}
	}
	dec := rollout.Decision{RolloutID: r.ID, Kind: rollout.OfferFirst, Release: r.Release}
	kind := "first offer"
	switch {
	case prev == nil:
	case prev.State == handsets.StateFailed || prev.State == handsets.StateRolledBack:
		dec.Kind, kind = rollout.OfferRetry, "retry"
	default:
		return // a repeat: nothing to record
	}
	var (
		ok bool
		wg sync.WaitGroup
	)
	wg.Go(func() { ok, err = c.rs.RecordOffer(ctx, dec, prev, dec.Record(prev, d, now), 0, now) })
	if eraseMeanwhile {
		wg.Go(func() { c.erase(ctx, id) })
	}
	wg.Wait()
	switch {
	case erased(err):
	case err != nil || !ok:
		c.t.Errorf("%s of %s to %s: %v, %v", kind, r.ID, id, ok, err)
	default:
		c.did(kind)
	}
}

// report sends a report of a random state about a random record of the
// handset (or none, or another rollout), sometimes twice at once,
// sometimes again later (a retry with the same report id), under the
// handset's lock: the records read before it are what it moves, unless
// the handset is erased meanwhile (then it moves none). Every move it
// acknowledges goes into the tally.
func (c *concRun) report(ctx context.Context, rng *rand.Rand, id string, eraseMeanwhile bool) {
	c.locks[id].Lock()
	defer c.locks[id].Unlock()
	now := c.now()
	recs, err := c.rs.DeviceRollouts(ctx, id)
	if err != nil {
		c.t.Errorf("report of %s: read records: %v", id, err)
		return
	}
	before := map[string]*handsets.DeviceRollout{}
	for _, rec := range recs {
		before[rec.RolloutID] = rec
	}
	var sent []handsets.Report
	if v, ok := c.sent.Load(id); ok {
		sent = v.([]handsets.Report)
	}
	var r handsets.Report
	copies := 1
	switch p := rng.IntN(100); {
	case p < 12 && len(sent) > 0:
		// A retry of a report acknowledged before: the same id and
		// content, received again now.
		r = sent[rng.IntN(len(sent))]
		r.ReceivedAt = now
	default:
		if p < 22 {
			copies = 2 // sent twice at once
		}
		states := []string{handsets.StateDownloading, handsets.StateDownloading, handsets.StateDownloaded, handsets.StateVerified,
			handsets.StateInstalling, handsets.StateInstalling, handsets.StateInstalled, handsets.StateInstalled, handsets.StateInstalled,
			handsets.StateFailed, handsets.StateFailed, handsets.StateFailed, handsets.StateRolledBack}
		r = handsets.Report{ID: fmt.Sprintf("r-%d", c.clock.Load()), DeviceID: id, PatchID: "CM-2026-001",
			State: states[rng.IntN(len(states))], At: now.Add(-time.Duration(rng.IntN(60)) * time.Second), ReceivedAt: now}
		if r.State == handsets.StateFailed || (r.State == handsets.StateRolledBack && rng.IntN(2) == 0) {
			r.ErrorCode = concCodes[rng.IntN(len(concCodes))]
		}
		switch q := rng.IntN(10); {
		case q < 5 && len(recs) > 0:
			r.RolloutID = recs[rng.IntN(len(recs))].RolloutID
		case q < 8:
			// None named: the latest offer of the patch.
		default:
			r.RolloutID = c.rollouts[rng.IntN(len(c.rollouts))].ID
		}
	}
	outs := make([]handsets.ReportOutcome, copies)
	errs := make([]error, copies)
	var wg sync.WaitGroup
	for i := range copies {
		wg.Go(func() { outs[i], errs[i] = c.s.AddReport(ctx, r) })
	}
	if eraseMeanwhile {
		wg.Go(func() { c.erase(ctx, id) })
	}
	wg.Wait()
	acked := false
	for i := range copies {
		out, err := outs[i], errs[i]
		switch {
		case erased(err):
			continue
		case err != nil:
			c.t.Errorf("report %s of %s (%s): %v", r.ID, id, r.State, err)
			continue
		}
		acked = true
		if out.Duplicate {
			c.did("duplicate")
			if out.RolloutID != "" {
				c.t.Errorf("duplicate report %s of %s moved %s", r.ID, id, out.RolloutID)
			}
			continue
		}
		if out.RolloutID == "" {
			continue
		}
		old := before[out.RolloutID]
		if old == nil {
			c.t.Errorf("report %s of %s moved the record of %s, which it did not have", r.ID, id, out.RolloutID)
			continue
		}
		want := *old
		want.Observe(r.State, r.ReceivedAt)
		if out.RolloutState != want.State {
			c.t.Errorf("report %s (%s) of %s moved %s from %s to %s, want %s", r.ID, r.State, id, out.RolloutID, old.State,
				out.RolloutState, want.State)
		}
		c.did("report moved a record")
		if old.State != want.State && (want.State == handsets.StateInstalled || want.State == handsets.StateFailed ||
			want.State == handsets.StateRolledBack) {
			c.did("result")
		}
		c.tally.count(old, want.State, r.ErrorCode, r.ReceivedAt)
		next := want
		before[out.RolloutID] = &next
	}
	if acked && !slices.ContainsFunc(sent, func(s handsets.Report) bool { return s.ID == r.ID }) {
		c.sent.Store(id, append(sent, r))
	}
}

// reEnroll enrolls the handset again: with its key, a newer signed
// enrollment that may move it to another build and region (ErrConflict
// when a newer one won the race); without, only if it was erased
// (ErrConflict while it exists). A handset erased meanwhile is enrolled
// anew.
func (c *concRun) reEnroll(ctx context.Context, rng *rand.Rand, id string) {
	now := c.now()
	d := newDevice(id, concModels[rng.IntN(len(concModels))])
	d.Build, d.Region = concBuilds[rng.IntN(len(concBuilds))], concRegions[rng.IntN(len(concRegions))]
	d.EnrolledAt, d.LastSeen = now, now
	if c.keyed[id] {
		d.KeyFingerprint = "fp-" + id
		d.KeySignedAt = t0.Add(time.Duration(c.signed.Add(1)) * time.Second)
	}
	_, _, err := c.s.Enroll(ctx, d, tokenOf(id))
	switch {
	case errors.Is(err, errs.ErrConflict):
	case err != nil:
		c.t.Errorf("re-enroll %s: %v", id, err)
	default:
		c.did("re-enrollment")
	}
}
