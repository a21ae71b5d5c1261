package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, for the lock sampler

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// BenchmarkWave measures the rollout wave (issue 14): every handset of a
// fleet goes through a rollout at 100% at once, each state change a write
// that the fleet's and the rollout's counters see. It starts otad as a
// child process (so the load generator, this process, does not share the
// server's Go runtime), enrolls OTA_BENCH_WAVE_HANDSETS handsets (default
// 20,000) that each check in once before the rollout starts, and then
// times the wave: OTA_BENCH_WAVE_CONCURRENCY workers (default 64) each
// take the next handset and run its whole path, five requests in a row:
//
//  1. check-in on the old build: offered the patch (the offer record, the
//     budget, the rollups),
//  2. to 4. reports downloading, installing, installed, each carrying the
//     offer's rollout_id,
//  5. check-in on the new build with the patch installed, cloud messaging
//     opted in and number encryption on: no offer.
//
// It reports the state changes a second (steps/s), each step's p50 and
// p99, the wave's time, then, in the same run, the quiet fleet: 2N
// check-ins of the patched handsets that change nothing. On PostgreSQL it
// samples pg_stat_activity every 250 ms during the wave and reports the
// share of active backends waiting on a lock (lock-wait-%).
// postgres-2-replicas runs the wave through two otad processes on one
// database, alternating handsets between them.
//
// Every answer is checked (the offer on the first check-in, 2xx on each
// report, no offer on the last check-in), and the rollout's report must
// count every handset installed; any error fails the benchmark. One wave
// per run: use -benchtime 1x (and -count for more runs).
//
//	scripts/bench-wave.sh    (a throwaway PostgreSQL for the postgres variants)
//	go test ./cmd/otad -run '^$' -bench Wave -benchtime 1x -timeout 60m
func BenchmarkWave(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchWave(b, "", 1, false) })
	b.Run("postgres", func(b *testing.B) { benchWave(b, apitest.PostgresDSN(b), 1, false) })
	b.Run("postgres-incrementals-silence", func(b *testing.B) { benchWave(b, apitest.PostgresDSN(b), 1, true) })
	b.Run("postgres-2-replicas", func(b *testing.B) { benchWave(b, apitest.PostgresDSN(b), 2, false) })
}

// The steps of one handset's path through the wave, in order.
var waveSteps = []string{"offer", "downloading", "installing", "installed", "patched"}

// benchWave runs the wave on dsn through replicas otad processes. With
// payloads, the release carries incremental payloads (one from the
// fleet's build, so every offer is one) and the rollout counts silence
// (silence_after 1h: the evaluator's silence query runs, nothing is
// silent): what issue 17 adds to a check-in, against the same wave
// without it.
func benchWave(b *testing.B, dsn string, replicas int, payloads bool) {
	if b.N != 1 {
		b.Fatalf("one wave per run, b.N is %d: run with -benchtime 1x (and -count N for N runs)", b.N)
	}
	n := envInt(b, "OTA_BENCH_WAVE_HANDSETS", 20000)
	conc := envInt(b, "OTA_BENCH_WAVE_CONCURRENCY", 64)
	// The per-device and enrollment limits are for real handsets, which
	// check in hourly; here each makes five requests in a row.
	b.Setenv("OTAD_CHECKIN_RATE", "0")
	b.Setenv("OTAD_REPORT_RATE", "0")
	b.Setenv("OTAD_ENROLL_RATE", "0")
	b.Setenv("OTAD_DATABASE", dsn) // "" is SQLite in the data dir
	bin := buildOtad(b)
	dir := b.TempDir()
	procs := []*otadProcess{startOtad(b, bin, dir)}
	bases := []string{"http://" + procs[0].addr}
	env := &apitest.Env{URL: bases[0], Token: engineerToken(b, bin, dir)}
	if payloads {
		es := apitest.NewEngineers(b, 2)
		env.Ceremony(b, es, 2)
		env.PublishWithIncrementals(b, "cloudmsg/CM-2026-001/update.zip", bytes.Repeat([]byte("patch"), 1000), es, "7.1.0", "7.2.0", "7.3.0")
	} else {
		publishPatch(b, bin, dir, bases[0])
	}

	c := &waveClient{hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		MaxIdleConns: 4 * conc, MaxIdleConnsPerHost: 2 * conc, IdleConnTimeout: time.Minute}}}
	first := c.server(b, bases[0])
	f := false
	before, _ := json.Marshal(wire.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: &f})
	t := true
	after, _ := json.Marshal(wire.CheckInBody{Build: "7.5.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{"CM-2026-001"},
		CloudMessaging: handsets.MessagingOptedIn, NumberEncryption: &t})

	// The fleet before the rollout: enrolled, and each handset has checked
	// in once (a fleet's handsets have when a rollout starts), so that the
	// wave's first check-in changes the rollout's state, not the device's.
	enrollBody, _ := json.Marshal(wire.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"})
	tokens := make([]string, n)
	setupStart := time.Now()
	c.parallel(b, "enroll and check in", conc, n, func(i int) error {
		var e wire.EnrollAnswer
		if err := wavePost(first, wire.APIPrefix+"/devices", enrollBody, http.StatusCreated, &e); err != nil {
			return err
		}
		tokens[i] = e.Token
		var ans wire.CheckInAnswer
		if err := wavePost(first.WithToken(e.Token), wire.APIPrefix+"/checkin", before, http.StatusOK, &ans); err != nil {
			return err
		}
		if ans.Offer != nil {
			return fmt.Errorf("check-in before the rollout: offered %s", ans.Offer.Target)
		}
		return nil
	})
	var pg *sql.DB
	if dsn != "" {
		var err error
		if pg, err = sql.Open("pgx", dsn); err != nil {
			b.Fatal(err)
		}
		defer pg.Close()
		// As autovacuum would have by the time a rollout starts on a
		// real fleet: without statistics PostgreSQL plans reads of the
		// fresh tables as sequential scans.
		if _, err := pg.Exec("ANALYZE"); err != nil {
			b.Fatal(err)
		}
	}
	// A start at 100% waits for a second person's approval.
	req := wire.RolloutRequest{Release: "cloudmsg/CM-2026-001/update.zip", Stages: []float64{100}, Reason: "wave benchmark"}
	if payloads {
		silence, rate := "1h", 0.5
		req.SilenceAfter, req.MaxSilenceRate = &silence, &rate
	}
	r := createRollout(b, env, engineerToken(b, bin, dir), req)
	if r.State != "running" {
		b.Fatalf("rollout %s is %s, want running", r.ID, r.State)
	}
	// A replica started now loads the published release and the running
	// rollout as it starts: no waiting for its refresh.
	for range replicas - 1 {
		p := startOtad(b, bin, dir)
		procs = append(procs, p)
		bases = append(bases, "http://"+p.addr)
	}
	servers := make([]*client.Client, len(bases))
	for i, base := range bases {
		servers[i] = c.server(b, base)
	}
	setup := time.Since(setupStart)

	// The wave.
	lat := make([][]time.Duration, len(waveSteps))
	for s := range lat {
		lat[s] = make([]time.Duration, n)
	}
	var sampler *lockSampler
	if pg != nil {
		sampler = startLockSampler(b, pg)
	}
	var pg0 map[int]time.Duration
	if pg != nil {
		pg0 = postgresCPU(b, pg)
	}
	cpu0, self0, host0 := otadCPU(procs), selfCPU(), hostCPU()
	b.ResetTimer()
	start := time.Now()
	c.parallel(b, "wave", conc, n, func(i int) error {
		h := servers[i%len(servers)].WithToken(tokens[i])
		t0 := time.Now()
		var ans wire.CheckInAnswer
		if err := wavePost(h, wire.APIPrefix+"/checkin", before, http.StatusOK, &ans); err != nil {
			return fmt.Errorf("check-in on the old build: %w", err)
		}
		lat[0][i] = time.Since(t0)
		o := ans.Offer
		if o == nil || o.RolloutID != r.ID {
			return fmt.Errorf("check-in on the old build: no offer of rollout %s (no_offer %q)", r.ID, ans.NoOffer)
		}
		if want := map[bool]string{false: wire.PayloadFull, true: wire.PayloadIncremental}[payloads]; o.Payload != want {
			return fmt.Errorf("check-in on the old build: offered the %s payload, want %s", o.Payload, want)
		}
		last := time.Time{}
		for s, state := range []string{handsets.StateDownloading, handsets.StateInstalling, handsets.StateInstalled} {
			at := time.Now().UTC()
			if !at.After(last) {
				at = last.Add(time.Microsecond) // a handset's reports are strictly ordered
			}
			last = at
			var id [16]byte
			crand.Read(id[:])
			body, _ := json.Marshal(wire.ReportBody{ReportID: handsetsim.ReportID(id), PatchID: o.PatchID, RolloutID: o.RolloutID,
				Target: o.Target, State: state, At: &at})
			t0 := time.Now()
			if err := wavePost(h, wire.APIPrefix+"/reports", body, http.StatusCreated, nil); err != nil {
				return fmt.Errorf("report %s: %w", state, err)
			}
			lat[1+s][i] = time.Since(t0)
		}
		t0 = time.Now()
		ans = wire.CheckInAnswer{}
		if err := wavePost(h, wire.APIPrefix+"/checkin", after, http.StatusOK, &ans); err != nil {
			return fmt.Errorf("check-in on the new build: %w", err)
		}
		lat[4][i] = time.Since(t0)
		if ans.Offer != nil {
			return fmt.Errorf("check-in on the new build: offered %s again", ans.Offer.Target)
		}
		return nil
	})
	wave := time.Since(start)
	b.StopTimer()
	cpu, self, host := otadCPU(procs)-cpu0, selfCPU()-self0, hostCPU().since(host0)
	// What else ran on the machine: a shared machine's other work, seen
	// here, makes the figures lower than the server's own.
	pgCPU, other := "in otad", host.busyShare()-host.share(cpu)-host.share(self)
	if pg != nil {
		d := host.share(postgresCPUSince(postgresCPU(b, pg), pg0))
		pgCPU, other = fmt.Sprintf("%.0f%%", 100*d), other-d
	}
	var lockShare float64
	var waits string
	if sampler != nil {
		lockShare, waits = sampler.stop(b)
	}

	// The quiet fleet, in the same run: the patched handsets check in
	// again with nothing changed, 2N check-ins.
	quietN := 2 * n
	quiet := make([]time.Duration, quietN)
	qstart := time.Now()
	c.parallel(b, "quiet", conc, quietN, func(j int) error {
		i := j % n
		h := servers[i%len(servers)].WithToken(tokens[i])
		t0 := time.Now()
		var ans wire.CheckInAnswer
		if err := wavePost(h, wire.APIPrefix+"/checkin", after, http.StatusOK, &ans); err != nil {
			return fmt.Errorf("quiet check-in: %w", err)
		}
		quiet[j] = time.Since(t0)
		if ans.Offer != nil {
			return fmt.Errorf("quiet check-in: offered %s", ans.Offer.Target)
		}
		return nil
	})
	quietTime := time.Since(qstart)

	// The rollout's report must have counted every handset's install.
	var rep server.RolloutReport
	if err := env.Do("GET", "/rollouts/"+r.ID+"/report", nil, &rep); err != nil {
		b.Fatalf("rollout report: %v", err)
	}
	if rep.Offered != int64(n) || rep.Installed != int64(n) {
		b.Fatalf("rollout report: %d offered, %d installed; want %d and %d", rep.Offered, rep.Installed, n, n)
	}

	steps := len(waveSteps) * n
	b.ReportMetric(float64(steps)/wave.Seconds(), "steps/s")
	b.ReportMetric(wave.Seconds(), "wave-s")
	table := []string{fmt.Sprintf("%-12s %9s %9s %9s", "step", "p50 ms", "p99 ms", "max ms")}
	for s, name := range waveSteps {
		p50, p99, top := percentiles(lat[s])
		b.ReportMetric(p50, name+"-p50-ms")
		b.ReportMetric(p99, name+"-p99-ms")
		table = append(table, fmt.Sprintf("%-12s %9.1f %9.1f %9.1f", name, p50, p99, top))
	}
	qp50, qp99, qmax := percentiles(quiet)
	table = append(table, fmt.Sprintf("%-12s %9.1f %9.1f %9.1f", "quiet", qp50, qp99, qmax))
	b.ReportMetric(float64(quietN)/quietTime.Seconds(), "quiet-checkins/s")
	b.ReportMetric(qp99, "quiet-p99-ms")
	if sampler != nil {
		b.ReportMetric(100*lockShare, "lock-wait-%")
	}
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(steps), "otad-cpu-us/step")
	}
	load, _ := os.ReadFile("/proc/loadavg")
	// To stdout: the testing package keeps only 10 lines of a
	// benchmark's log.
	fmt.Printf("%s: %d handsets through %d otad (%s), %d concurrent (setup %v)\n"+
		"  wave: %d steps in %v = %.0f steps/s; quiet: %d check-ins in %v = %.0f/s\n"+
		"  during the wave: machine CPU busy %.0f%%: otad %.0f%% (%.0f us a step), PostgreSQL %s, load generator %.0f%%, other %.0f%%%s\n"+
		"  load average after the run (its own load included): %s\n  %s\n",
		b.Name(), n, replicas, map[bool]string{true: "PostgreSQL", false: "SQLite"}[dsn != ""], conc, setup.Round(time.Second),
		steps, wave.Round(time.Millisecond), float64(steps)/wave.Seconds(), quietN, quietTime.Round(time.Millisecond), float64(quietN)/quietTime.Seconds(),
		100*host.busyShare(), 100*host.share(cpu), float64(cpu.Microseconds())/float64(steps), pgCPU, 100*host.share(self), 100*other, lockLine(sampler, lockShare, waits),
		strings.Join(strings.Fields(string(load))[:3], " "), strings.Join(table, "\n  "))
}

// waveClient is the load generator's HTTP client: one keep-alive pool for
// all the workers, which call otad through package client.
type waveClient struct {
	hc *http.Client
}

// server is a client of the otad at base that sends no token, over c's
// pool; a handset's is its WithToken copy.
func (c *waveClient) server(tb testing.TB, base string) *client.Client {
	tb.Helper()
	cl, err := client.New(base, client.WithHTTPClient(c.hc))
	if err != nil {
		tb.Fatal(err)
	}
	return cl
}

// wavePost posts body to path as cl and decodes the answer into out
// (when not nil); an answer with another status than want is an error
// naming the status and the server's error.
func wavePost(cl *client.Client, path string, body []byte, want int, out any) error {
	status, err := waveSend(cl, path, body, out)
	if err != nil {
		return fmt.Errorf("want %d: %w", want, err)
	}
	if status != want {
		return fmt.Errorf("POST %s: %d, want %d", path, status, want)
	}
	return nil
}

// waveSend posts body, JSON encoded once before the clock starts (so
// that the load generator does not time its own encoding), to path as cl
// and decodes a 2xx answer into out (when not nil). It returns the
// answer's status; any other answer than a 2xx is a *client.Error.
func waveSend(cl *client.Client, path string, body []byte, out any) (int, error) {
	req, err := cl.NewRequest(context.Background(), http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	return cl.Send(req, out)
}

// parallel runs do(0) to do(n-1) on conc workers, each taking the next
// index, and fails tb after all have run if any returned an error,
// naming how many and the first few.
func (c *waveClient) parallel(tb testing.TB, what string, conc, n int, do func(i int) error) {
	tb.Helper()
	var (
		next   atomic.Int64
		failed atomic.Int64
		mu     sync.Mutex
		first  []string
		wg     sync.WaitGroup
	)
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := do(i); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(first) < 5 {
						first = append(first, err.Error())
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if k := failed.Load(); k > 0 {
		tb.Fatalf("%s: %d of %d failed, first:\n%s", what, k, n, strings.Join(first, "\n"))
	}
}

// percentiles returns the p50, p99 and largest of d in milliseconds
// (sorting d).
func percentiles(d []time.Duration) (p50, p99, top float64) {
	slices.Sort(d)
	at := func(p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
	}
	return at(0.50), at(0.99), float64(d[len(d)-1].Microseconds()) / 1000
}

// envInt reads a positive integer setting of the benchmark from the
// environment, def when unset.
func envInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// lockSampler counts, every 250 ms, the active PostgreSQL backends of the
// benchmark's database and those waiting on a lock (heavyweight locks:
// rows, transactions, tuples), and what the active ones wait on.
type lockSampler struct {
	done    chan struct{}
	stopped chan struct{}
	err     error

	samples, active, locked int64
	inTx                    int64            // backends idle in a transaction
	events                  map[string]int64 // wait_event_type/wait_event, or "running" for none
}

func startLockSampler(tb testing.TB, db *sql.DB) *lockSampler {
	s := &lockSampler{done: make(chan struct{}), stopped: make(chan struct{}), events: map[string]int64{}}
	go func() {
		defer close(s.stopped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-tick.C:
			}
			if s.err = s.sample(db); s.err != nil {
				return
			}
		}
	}()
	return s
}

func (s *lockSampler) sample(db *sql.DB) error {
	// The lock share counts active backends only (running a statement);
	// a backend idle in a transaction waits for otad's next statement,
	// and is counted apart.
	rows, err := db.Query(`SELECT state = 'active', coalesce(wait_event_type, ''), coalesce(wait_event, ''), count(*)
		FROM pg_stat_activity
		WHERE state IN ('active', 'idle in transaction') AND datname = current_database() AND pid <> pg_backend_pid()
		GROUP BY 1, 2, 3`)
	if err != nil {
		return fmt.Errorf("sample pg_stat_activity: %w", err)
	}
	defer rows.Close()
	s.samples++
	for rows.Next() {
		var active bool
		var typ, event string
		var k int64
		if err := rows.Scan(&active, &typ, &event, &k); err != nil {
			return err
		}
		if !active {
			s.inTx += k
			continue
		}
		s.active += k
		if typ == "Lock" {
			s.locked += k
		}
		key := "running"
		if typ != "" {
			key = typ + "/" + event
		}
		s.events[key] += k
	}
	return rows.Err()
}

// stop ends the sampling and returns the share of active backends that
// waited on a lock over all samples, and the commonest waits as text.
func (s *lockSampler) stop(tb testing.TB) (float64, string) {
	tb.Helper()
	close(s.done)
	<-s.stopped
	if s.err != nil {
		tb.Fatal(s.err)
	}
	if s.active == 0 {
		return 0, fmt.Sprintf("%d samples, no active backend", s.samples)
	}
	keys := make([]string, 0, len(s.events))
	for k := range s.events {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return int(s.events[b] - s.events[a]) })
	var parts []string
	for _, k := range keys[:min(6, len(keys))] {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", k, 100*float64(s.events[k])/float64(s.active)))
	}
	return float64(s.locked) / float64(s.active), fmt.Sprintf("%d samples, on average %.1f backends active and %.1f idle in a transaction;\n  the active wait on: %s",
		s.samples, float64(s.active)/float64(s.samples), float64(s.inTx)/float64(s.samples), strings.Join(parts, ", "))
}

func lockLine(s *lockSampler, share float64, waits string) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf("\n  PostgreSQL: %.0f%% of active backends waiting on locks; %s", 100*share, waits)
}

// otadCPU is the CPU time (user and system) the otad processes have used.
func otadCPU(procs []*otadProcess) time.Duration {
	var total time.Duration
	for _, p := range procs {
		total += procCPU(p.cmd.Process.Pid)
	}
	return total
}

// procCPU is the CPU time (user and system) process pid has used, from
// /proc (0 where it cannot be read).
func procCPU(pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesized command name; utime and stime are
	// the 14th and 15th fields, in clock ticks (100 a second).
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(fields[11], 10, 64)
	k, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

// postgresCPU is the CPU time used by each process PostgreSQL lists in
// pg_stat_activity (its backends and background processes), by pid: the
// benchmark's server runs on this machine. Processes that exit between
// two readings are missed, so the difference is a lower bound.
func postgresCPU(tb testing.TB, db *sql.DB) map[int]time.Duration {
	tb.Helper()
	rows, err := db.Query("SELECT pid FROM pg_stat_activity")
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	out := map[int]time.Duration{}
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			tb.Fatal(err)
		}
		out[pid] = procCPU(pid)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// postgresCPUSince is PostgreSQL's CPU time between two postgresCPU
// readings.
func postgresCPUSince(now, then map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range now {
		d += t - then[pid]
	}
	return d
}

// selfCPU is the CPU time (user and system) of this process, the load
// generator.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTimes is the machine's CPU time from /proc/stat: busy and total, in
// clock ticks over all cores.
type cpuTimes struct{ busy, total int64 }

func hostCPU() cpuTimes {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	var t cpuTimes
	fields := strings.Fields(line)
	// user nice system idle iowait irq softirq steal; guest time is
	// already in user and nice.
	for i, f := range fields[1:min(9, len(fields))] {
		v, _ := strconv.ParseInt(f, 10, 64)
		t.total += v
		if i != 3 && i != 4 { // idle and iowait
			t.busy += v
		}
	}
	return t
}

func (t cpuTimes) since(t0 cpuTimes) cpuTimes { return cpuTimes{t.busy - t0.busy, t.total - t0.total} }

// busyShare is the share of the machine's CPU time that was busy.
func (t cpuTimes) busyShare() float64 {
	if t.total == 0 {
		return 0
	}
	return float64(t.busy) / float64(t.total)
}

// share is the share of the machine's CPU time that d was.
func (t cpuTimes) share(d time.Duration) float64 {
	if t.total == 0 {
		return 0
	}
	return float64(d/(10*time.Millisecond)) / float64(t.total)
}
