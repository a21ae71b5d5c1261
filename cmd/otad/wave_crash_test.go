package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/sqlstore"
)

// TestWaveCrash SIGKILLs otad during the rollout wave, several times, and
// restarts it on the same data: no acknowledged state change is lost, and
// after each restart the rollups agree with a count of their rows.
//
// 300 handsets go through a rollout at 100% from 16 workers, each on its
// path: the check-in on the old build that gets the offer, the reports
// downloading and installing, then installed and the check-in on the new
// build with the patch, or (every fifth handset) failed with an error
// code. otad folds the rollups' delta logs every 200 ms, so that the kills
// land before, during and after folds. At a random moment (seeded,
// logged: OTA_TEST_WAVE_CRASH_SEED repeats a run's moments) otad is
// SIGKILLed; with otad down (on PostgreSQL, once its backends have ended
// too: see waitBackendsGone) the test reads the database and checks:
//
//   - every acknowledged report is in device_reports, every acknowledged
//     offer has its rollout record, at least as far as the acknowledged
//     reports took it, and every acknowledged patched check-in left the
//     device on the new build;
//   - VerifyRollups finds no disagreement, before and after a fold.
//
// Then otad restarts, the rollout's report (through the API) must count
// exactly the records in the database (a state change that committed but
// whose answer the kill lost is counted: at least the acknowledged ones),
// and the handsets carry on where their last acknowledged step left them,
// sending again the step that had no answer: it must be accepted, as new
// or as a duplicate. After five kills a last run finishes the wave and the
// report must count every handset: offered, installed or failed as its
// path says.
func TestWaveCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the otad binary")
	}
	t.Run("sqlite", func(t *testing.T) { testWaveCrash(t, "") })
	t.Run("postgres", func(t *testing.T) { testWaveCrash(t, apitest.PostgresDSN(t)) })
}

// The steps of a handset's path through the crash test's wave. A failing
// handset's path ends at its failed report.
const (
	stepOffer = iota
	stepDownloading
	stepInstalling
	stepResult // installed, or failed
	stepPatched
)

// crashHandset is one handset of the crash test, driven by one worker at
// a time.
type crashHandset struct {
	id, token string
	n         int // its index, which its report ids carry (a device id has too many digits for one)
	fails     bool
	// next is the step to send; the steps before it were acknowledged.
	next int
	// unanswered says the step next was sent and got no answer: it may
	// have committed, so a duplicate is a fine answer to its retry.
	unanswered bool
	offer      *wire.OfferAnswer
	// reports are the report bodies by step, made at the first send and
	// sent again unchanged (same id, same time).
	reports map[int][]byte
	ids     map[int]string
	last    time.Time // the time of its latest report
	err     error     // an answer no handset should get
}

func (h *crashHandset) done() bool {
	return h.err != nil || (h.fails && h.next > stepResult) || h.next > stepPatched
}

func (h *crashHandset) resultState() string {
	if h.fails {
		return handsets.StateFailed
	}
	return handsets.StateInstalled
}

func testWaveCrash(t *testing.T, dsn string) {
	const (
		nHandsets = 300
		workers   = 16
		kills     = 5
		failEach  = 5 // every fifth handset's install fails
	)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("OTA_TEST_WAVE_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("OTA_TEST_WAVE_CRASH_SEED=%q: %v", v, err)
		}
	}
	t.Logf("kill moments from seed %d (OTA_TEST_WAVE_CRASH_SEED=%d repeats them)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	// The handsets here change state far faster than real ones.
	t.Setenv("OTAD_CHECKIN_RATE", "0")
	t.Setenv("OTAD_REPORT_RATE", "0")
	t.Setenv("OTAD_ENROLL_RATE", "0")
	t.Setenv("OTAD_ROLLUP_FOLD_INTERVAL", "200ms")
	t.Setenv("OTAD_DATABASE", dsn) // "" is SQLite in the data dir
	bin := buildOtad(t)
	dir := t.TempDir()
	if dsn == "" {
		dsn = "sqlite:" + filepath.Join(dir, "otad.db")
	}

	p := startOtad(t, bin, dir)
	base := "http://" + p.addr
	publishPatch(t, bin, dir, base)
	c := &waveClient{hc: &http.Client{Timeout: time.Minute}}
	f, tr := false, true
	before, _ := json.Marshal(wire.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: &f})
	after, _ := json.Marshal(wire.CheckInBody{Build: "7.5.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{"CM-2026-001"},
		CloudMessaging: handsets.MessagingOptedIn, NumberEncryption: &tr})

	// The fleet, enrolled and checked in once before the rollout starts.
	hs := make([]*crashHandset, nHandsets)
	enrollBody, _ := json.Marshal(wire.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"})
	srv := c.server(t, base)
	c.parallel(t, "enroll and check in", workers, nHandsets, func(i int) error {
		var e wire.EnrollAnswer
		if err := wavePost(srv, wire.APIPrefix+"/devices", enrollBody, http.StatusCreated, &e); err != nil {
			return err
		}
		hs[i] = &crashHandset{id: e.DeviceID, token: e.Token, n: i, fails: i%failEach == 0, reports: map[int][]byte{}, ids: map[int]string{}}
		return wavePost(srv.WithToken(e.Token), wire.APIPrefix+"/checkin", before, http.StatusOK, nil)
	})
	// No automatic halt (a fifth of the installs fail) and no retry: what
	// each handset ends as is its path's doing alone.
	rate, retries := 1.0, 0
	r := createRollout(t, &apitest.Env{URL: base, Token: engineerToken(t, bin, dir)}, engineerToken(t, bin, dir),
		wire.RolloutRequest{Release: "cloudmsg/CM-2026-001/update.zip", Stages: []float64{100}, MaxFailureRate: &rate,
			Retries: &retries, Reason: "wave crash test"})
	if r.State != "running" {
		t.Fatalf("rollout %s is %s, want running", r.ID, r.State)
	}
	token := engineerToken(t, bin, dir)

	w := &crashWave{rolloutID: r.ID, before: before, after: after}
	for round := 0; ; round++ {
		last := round == kills
		var todo []*crashHandset
		for _, h := range hs {
			if !h.done() {
				todo = append(todo, h)
			}
		}
		killAfter := time.Duration(rng.IntN(500)) * time.Millisecond
		steps := w.run(c.server(t, base), todo, workers, last, killAfter, p)
		for _, h := range hs {
			if h.err != nil {
				t.Fatalf("round %d: handset %s: %v", round, h.id, h.err)
			}
		}
		if !last {
			t.Logf("round %d: SIGKILL %v after the round's first acknowledgement; %d steps acknowledged in the round, %d handsets through",
				round, killAfter, steps, countDone(hs))
		}
		p.kill()
		waitBackendsGone(t, dsn)
		records := checkAfterCrash(t, dsn, round, r.ID, hs)
		p = startOtad(t, bin, dir)
		base = "http://" + p.addr
		rep := rolloutReport(t, base, token, r.ID)
		got := [3]int64{rep.Offered, rep.Installed, rep.Failed}
		if got != records {
			t.Fatalf("round %d: the rollout report counts %d offered, %d installed, %d failed; the records say %v", round, got[0], got[1], got[2], records)
		}
		acked := ackedCounts(hs)
		for i, what := range []string{"offered", "installed", "failed"} {
			if got[i] < acked[i] {
				t.Fatalf("round %d: the rollout report counts %d %s, fewer than the %d acknowledged", round, got[i], what, acked[i])
			}
		}
		if last {
			break
		}
	}
	// The wave is over: every handset went its whole path.
	if n := countDone(hs); n != nHandsets {
		t.Fatalf("after the last run %d of %d handsets are through: otad stopped answering", n, nHandsets)
	}
	rep := rolloutReport(t, base, token, r.ID)
	nFail := int64((nHandsets + failEach - 1) / failEach)
	if rep.Offered != nHandsets || rep.Installed != nHandsets-nFail || rep.Failed != nFail || rep.Pending != 0 || rep.Downloading != 0 {
		t.Fatalf("rollout report after the wave: %+v; want %d offered, %d installed, %d failed, none pending or downloading",
			rep.CohortCounts, nHandsets, nHandsets-nFail, nFail)
	}
	t.Logf("%d SIGKILLs during the wave; %d steps sent again after a kill (%d reports of them stored before it); "+
		"every acknowledged step found afterwards, the rollups agreed each time", kills, w.retried.Load(), w.duplicates.Load())
}

// crashWave runs the handsets' paths against one otad after another.
type crashWave struct {
	rolloutID     string
	before, after []byte
	// retried counts the steps sent again after a kill left them without
	// an answer; duplicates those of them a report answered as stored
	// before the kill (committed, the answer lost).
	retried, duplicates atomic.Int64
}

// run drives the handsets in todo on workers workers, through srv (a
// client of p), until each is done or otad is gone; unless last it
// SIGKILLs p killAfter after the first acknowledged step (or when all
// are done, if sooner). It returns how many steps were acknowledged.
func (w *crashWave) run(srv *client.Client, todo []*crashHandset, workers int, last bool, killAfter time.Duration, p *otadProcess) int {
	queue := make(chan *crashHandset, len(todo))
	for _, h := range todo {
		queue <- h
	}
	close(queue)
	var (
		mu       sync.Mutex
		acked    int
		firstAck = make(chan struct{})
		once     sync.Once
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for h := range queue {
				for !h.done() {
					ok, gone := w.step(srv.WithToken(h.token), h)
					if gone {
						return
					}
					if ok {
						mu.Lock()
						acked++
						mu.Unlock()
						once.Do(func() { close(firstAck) })
					}
				}
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	if !last {
		select {
		case <-firstAck:
		case <-finished:
		}
		select {
		case <-time.After(killAfter):
		case <-finished:
		}
		p.kill()
	}
	<-finished
	return acked
}

// step sends h's next step as cl (h's client) and moves h on when it is
// acknowledged. gone says the request got no answer: otad is gone (the
// step may have committed). An answer no handset should get sets h.err.
func (w *crashWave) step(cl *client.Client, h *crashHandset) (acked, gone bool) {
	retry := h.unanswered
	if retry {
		w.retried.Add(1)
	}
	var path string
	var body []byte
	switch h.next {
	case stepOffer:
		path, body = wire.APIPrefix+"/checkin", w.before
	case stepPatched:
		path, body = wire.APIPrefix+"/checkin", w.after
	default:
		path = wire.APIPrefix + "/reports"
		if body = h.reports[h.next]; body == nil {
			state := map[int]string{stepDownloading: handsets.StateDownloading, stepInstalling: handsets.StateInstalling,
				stepResult: h.resultState()}[h.next]
			at := time.Now().UTC()
			if !at.After(h.last) {
				at = h.last.Add(time.Microsecond) // a handset's reports are strictly ordered
			}
			h.last = at
			rb := wire.ReportBody{ReportID: fmt.Sprintf("wave-h%d-%s", h.n, state), PatchID: h.offer.PatchID,
				RolloutID: h.offer.RolloutID, Target: h.offer.Target, State: state, At: &at}
			if state == handsets.StateFailed {
				rb.ErrorCode = "E_DISK_FULL"
			}
			body, _ = json.Marshal(rb)
			h.reports[h.next], h.ids[h.next] = body, rb.ReportID
		}
	}
	var ans wire.CheckInAnswer
	var report wire.ReportAnswer
	var out any = &report
	if h.next == stepOffer || h.next == stepPatched {
		out = &ans
	}
	status, err := waveSend(cl, path, body, out)
	var badAnswer *client.BadAnswerError
	if err != nil && client.AsError(err) == nil && !errors.As(err, &badAnswer) {
		// No answer, or one cut off: otad is gone.
		h.unanswered = true
		return false, true
	}
	if e := client.AsError(err); e != nil {
		status = e.Status
	}
	bad := func(format string, args ...any) (bool, bool) {
		h.err = fmt.Errorf("step %d (retry %v): POST %s: %d (%v): %s", h.next, retry, path, status, err, fmt.Sprintf(format, args...))
		return false, false
	}
	if badAnswer != nil {
		return bad("want the API's JSON answer")
	}
	switch h.next {
	case stepOffer, stepPatched:
		if status != http.StatusOK {
			return bad("want 200")
		}
		if h.next == stepOffer {
			if ans.Offer == nil || ans.Offer.RolloutID != w.rolloutID {
				return bad("want the offer of rollout %s", w.rolloutID)
			}
			h.offer = ans.Offer
		} else if ans.Offer != nil {
			return bad("want no offer on the new build")
		}
	default:
		switch {
		case status == http.StatusCreated:
		case status == http.StatusOK && retry:
			if !report.Duplicate {
				return bad("want 201, or 200 with duplicate")
			}
			w.duplicates.Add(1)
		default:
			return bad("want 201 (or, on a retry, 200 with duplicate)")
		}
	}
	h.next++
	h.unanswered = false
	return true, false
}

// waitBackendsGone waits, on PostgreSQL, until the killed otad's
// backends have ended. A statement otad sent before the SIGKILL runs on
// in its backend and may still commit after the process is gone (an
// unacknowledged state change, counted once it commits); reading before
// then would see a state that changes under the checks.
func waitBackendsGone(t *testing.T, dsn string) {
	t.Helper()
	if !strings.HasPrefix(dsn, "postgres") {
		return // SQLite: nothing of otad runs on after the kill
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(time.Minute) // only bounds a hang
	for {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backends of the killed otad still run after a minute", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stateRank orders a rollout record's states along the crash test's
// paths: offered, downloading, installing, then the result.
func stateRank(state string) int {
	switch state {
	case handsets.DeviceOffered:
		return stepOffer
	case handsets.StateDownloading:
		return stepDownloading
	case handsets.StateInstalling:
		return stepInstalling
	case handsets.StateInstalled, handsets.StateFailed:
		return stepResult
	}
	return -1
}

// checkAfterCrash reads the database of the stopped otad: every
// acknowledged step is there, and the rollups agree with their rows
// before and after a fold. It returns the rollout's records counted as
// the report counts them: offered (all), installed, failed.
func checkAfterCrash(t *testing.T, dsn string, round int, rolloutID string, hs []*crashHandset) [3]int64 {
	t.Helper()
	ctx := context.Background()
	db, err := sqlstore.Open(ctx, dsn, sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var records [3]int64
	for _, h := range hs {
		drs, err := db.Rollouts().DeviceRollouts(ctx, h.id)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(drs, func(dr *handsets.DeviceRollout) bool { return dr.RolloutID == rolloutID })
		if i < 0 {
			if h.next > stepOffer {
				t.Fatalf("round %d: handset %s: its offer was acknowledged but it has no rollout record", round, h.id)
			}
			continue
		}
		dr := drs[i]
		records[0]++
		switch dr.State {
		case handsets.StateInstalled:
			records[1]++
		case handsets.StateFailed:
			records[2]++
		}
		acked := min(h.next, stepPatched) - 1 // the furthest acknowledged step on the record
		if rk := stateRank(dr.State); rk < acked || (rk == stepResult && dr.State != h.resultState()) {
			t.Fatalf("round %d: handset %s: its record is %s, but step %d (%s path) was acknowledged", round, h.id, dr.State, acked, h.resultState())
		}
		reports, err := db.Devices().Reports(ctx, h.id)
		if err != nil {
			t.Fatal(err)
		}
		for s := stepDownloading; s < h.next && s <= stepResult; s++ {
			if !slices.ContainsFunc(reports, func(r handsets.Report) bool { return r.ID == h.ids[s] }) {
				t.Fatalf("round %d: handset %s: report %s was acknowledged but is not in the database after SIGKILL", round, h.id, h.ids[s])
			}
		}
		if h.next > stepPatched {
			d, err := db.Devices().DeviceByID(ctx, h.id)
			if err != nil {
				t.Fatal(err)
			}
			if d.Build != "7.5.0" || !slices.Contains(d.InstalledPatches, "CM-2026-001") {
				t.Fatalf("round %d: handset %s: its check-in on 7.5.0 with the patch was acknowledged, but it is on %s with %v", round, h.id, d.Build, d.InstalledPatches)
			}
		}
	}
	for _, when := range []string{"before a fold", "after a fold"} {
		if when == "after a fold" {
			if _, err := db.FoldRollups(ctx); err != nil {
				t.Fatal(err)
			}
		}
		diffs, err := db.VerifyRollups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(diffs) > 0 {
			t.Fatalf("round %d: %s, the rollups disagree with their rows:\n%s", round, when, strings.Join(diffs, "\n"))
		}
	}
	return records
}

// ackedCounts is what the handsets saw acknowledged: offers, installed
// and failed reports.
func ackedCounts(hs []*crashHandset) [3]int64 {
	var n [3]int64
	for _, h := range hs {
		if h.next > stepOffer {
			n[0]++
		}
		if h.next > stepResult {
			n[map[bool]int{false: 1, true: 2}[h.fails]]++
		}
	}
	return n
}

func countDone(hs []*crashHandset) int {
	n := 0
	for _, h := range hs {
		if h.done() {
			n++
		}
	}
	return n
}

// rolloutReport reads the rollout's report through the admin API.
func rolloutReport(t *testing.T, base, token, id string) server.RolloutReport {
	t.Helper()
	var rep server.RolloutReport
	if err := (&apitest.Env{URL: base, Token: token}).Do("GET", "/rollouts/"+id+"/report", nil, &rep); err != nil {
		t.Fatalf("rollout report: %v", err)
	}
	return rep
}
