package main

import (
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/due"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// The simulated fleet: models, regions and builds before the patch.
var (
	demoModels  = []string{"PX-6", "PX-7", "PX-8", "PX-9"}
	demoRegions = []string{"DE", "BR", "JP"}
	demoBuilds  = []string{"7.3.0", "7.3.2", "7.4.0", "7.4.1"}
)

// Install failures. Most models fail about 2% of installs; PX-8 fails
// about 40% (a vendor partition the patch does not fit), so that the
// rollout's per-model hold shows while the other models go on. Which
// installs fail is demoInstallFailure's pure function of the seed, the
// handset and the attempt, so that --seed repeats them.
const (
	demoFailRate     = 0.02
	demoPX8FailRate  = 0.40
	demoFailingModel = "PX-8"
)

var (
	demoFailCodes = []string{"E_VERIFY_SPACE", "E_BATTERY_LOW"}
	demoPX8Code   = "E_VENDOR_PARTITION"
)

// fleetConfig is a simulated fleet.
type fleetConfig struct {
	// Client is the handsets' client, without a token: each handset
	// calls through WithToken's copy, over the same connections.
	Client   *client.Client
	Verifier *demoVerifier
	Handsets int
	Workers  int
	Seed     uint64
	// EnrollSpread spreads the first enrollments, so the fleet does not
	// arrive in one burst.
	EnrollSpread time.Duration
	// InstallTime is the base time an install takes: successes 1-2x,
	// failures (found late, after the installer retried) 2-3x; PX-8, a
	// slower model, succeeds in 1.5-2x and fails (its vendor partition is
	// found too small after a long retry) in 6-8x. Two rules make the
	// stage at which PX-8 is held follow from --seed, not from timing:
	//   - PX-8's successes come well before its failures, so that PX-8
	//     has results enough to be held alone before its failures could
	//     count against the other models and halt the whole rollout;
	//   - every result of a stage lands within its soak: by default
	//     offers reach the stage's handsets within about 13 s (a second
	//     of rollout cache, a poll of 10 s +- 10%, a second of jitter)
	//     and the slowest result takes 8 s more, against a soak of 30 s.
	InstallTime time.Duration
	Logger      *slog.Logger
}

// Handset phases: what it does next.
const (
	phEnroll uint8 = iota
	phCheckIn
	phDownload // report downloading, verify with go-tuf
	phFinish   // report installed or failed
)

// demoHandset is one simulated handset. A worker owns it while it runs
// a step, so its fields need no lock.
type demoHandset struct {
	index     int // in the fleet: with the seed, it decides the handset's installs
	attempts  int // installs started
	key       ed25519.PrivateKey
	model     string
	region    string
	build     string
	api       *client.Client // with its token; nil before it enrolls
	rng       *rand.Rand     // its own stream, for waits (jitter, install times)
	phase     uint8
	patches   []string
	messaging string
	numberEnc bool
	offer     *wire.OfferAnswer
	patch     *demoPatch // what the verified offer changes once installed
	fail      string     // error code of the install in progress, "" for success
	lastAt    time.Time  // of the last report: a handset's reports are strictly ordered
	retries   int
	enrolled  bool
	offered   bool
	reported  bool // downloading was reported for the current offer
}

// demoPatch is what a verified patch changes, from its signed metadata.
type demoPatch struct {
	installsBuild    string
	messagingDefault string
	numberEncryption string
}

// fleetStats are the fleet's counters, as the handsets see them.
type fleetStats struct {
	enrolled, offered, installed, failed, checkins atomic.Int64

	mu     sync.Mutex
	errors map[string]int64
	// firstTries are the results of each handset's first install, by
	// handset index: the error code, or "" for installed.
	firstTries map[int]string
}

// firstResults returns a copy of the results of first installs.
func (s *fleetStats) firstResults() map[int]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.firstTries)
}

func (s *fleetStats) addResult(d *demoHandset, code string) {
	if d.attempts != 1 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.firstTries[d.index] = code
}

func (s *fleetStats) addError(op string, err error) (first bool) {
	kind := op + ":network"
	if ce := client.AsError(err); ce != nil {
		kind = op + ":http_" + strconv.Itoa(ce.Status)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors[kind]++
	return s.errors[kind] == 1
}

func (s *fleetStats) errorCount() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, c := range s.errors {
		n += c
	}
	return n
}

// demoFleet runs the handsets on a worker pool over a time-ordered
// schedule: a waiting handset is a heap entry, not a goroutine, and at
// most Workers requests are in flight.
type demoFleet struct {
	cfg   fleetConfig
	devs  []demoHandset
	stats fleetStats
	sched *due.Scheduler
	done  chan struct{}
}

func newDemoFleet(cfg fleetConfig) *demoFleet {
	f := &demoFleet{cfg: cfg, devs: make([]demoHandset, cfg.Handsets), sched: due.New(cfg.Handsets),
		done: make(chan struct{})}
	f.stats.errors, f.stats.firstTries = map[string]int64{}, map[int]string{}
	seeds := rand.New(rand.NewPCG(cfg.Seed, 0x0da7))
	for i := range f.devs {
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))
		// Device keys, hence device ids and with the rollout's salt the
		// cohorts, follow the seed too: a run's database is its own, so
		// keys of two runs may well be the same.
		var seed [ed25519.SeedSize]byte
		for j := range seed {
			seed[j] = byte(rng.Uint32())
		}
		f.devs[i] = demoHandset{
			index:     i,
			key:       ed25519.NewKeyFromSeed(seed[:]),
			model:     demoModels[i%len(demoModels)],
			region:    demoRegions[seeds.IntN(len(demoRegions))],
			build:     demoBuilds[seeds.IntN(len(demoBuilds))],
			rng:       rng,
			messaging: handsets.MessagingAutoEnabled, // the incident: on at first boot
			numberEnc: false,
		}
	}
	return f
}

// run drives the fleet until ctx ends, then lets the steps in flight
// finish (for at most demoStopGrace: a request cut off would be a
// spurious error in the server's log) and returns; done is closed then.
func (f *demoFleet) run(ctx context.Context) {
	defer close(f.done)
	now := time.Now()
	for i := range f.devs {
		f.sched.Push(int32(i), now.Add(time.Duration(f.devs[i].rng.Int64N(int64(f.cfg.EnrollSpread)+1))))
	}
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	work := make(chan int32)
	var wg sync.WaitGroup
	for range f.cfg.Workers {
		wg.Go(func() {
			for i := range work {
				if next, ok := f.step(reqCtx, &f.devs[i]); ok {
					f.sched.Push(i, next)
				}
			}
		})
	}
	f.sched.Dispatch(ctx, work)
	close(work)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(demoStopGrace):
		cancel()
		<-finished
	}
	f.cfg.Verifier.wait()
}

// demoStopGrace bounds how long the fleet's last requests may take once
// the demo stops.
const demoStopGrace = 5 * time.Second

// step runs handset d's next action and says when to run the one after;
// false drops the handset (it cannot enroll, or ctx ended).
func (f *demoFleet) step(ctx context.Context, d *demoHandset) (time.Time, bool) {
	if ctx.Err() != nil {
		return time.Time{}, false
	}
	switch d.phase {
	case phEnroll:
		return f.enroll(ctx, d)
	case phCheckIn:
		return f.checkIn(ctx, d)
	case phDownload:
		return f.download(ctx, d)
	default:
		return f.finish(ctx, d)
	}
}

// retry answers a failed request: later when it may succeed (when the
// server said, else after 1-3 s), or give up on the handset.
func (f *demoFleet) retry(ctx context.Context, d *demoHandset, op string, err error) (time.Time, bool) {
	if ctx.Err() != nil {
		return time.Time{}, false
	}
	if f.stats.addError(op, err) {
		f.cfg.Logger.Warn("demo fleet: a request failed (further ones are counted, not logged)",
			slog.String("op", op), slog.Any("error", err))
	}
	if ce := client.AsError(err); ce != nil && ce.Status == http.StatusUnauthorized && op != "enroll" {
		d.phase, d.api = phEnroll, nil
		return time.Now(), true
	}
	if !client.Temporary(err) || d.retries >= 20 {
		if d.phase == phEnroll {
			return time.Time{}, false
		}
		// Refused for good (or too often): the handset gives the offer
		// up and checks in again later; the server offers again what is
		// still due.
		d.retries = 0
		return f.after(d, err)
	}
	d.retries++
	if wait, ok := client.RetryAfter(err); ok && wait > 0 {
		return time.Now().Add(wait + f.jitter(d, time.Second)), true
	}
	return time.Now().Add(time.Second + f.jitter(d, 2*time.Second)), true
}

// after moves on past a request the server refused for good: the
// handset drops the offer and checks in again later.
func (f *demoFleet) after(d *demoHandset, _ error) (time.Time, bool) {
	d.phase, d.offer, d.patch, d.fail = phCheckIn, nil, nil, ""
	return time.Now().Add(5 * time.Second), true
}

// jitter is a random wait from 0 to upTo, from d's own stream.
func (f *demoFleet) jitter(d *demoHandset, upTo time.Duration) time.Duration {
	return time.Duration(d.rng.Int64N(int64(upTo) + 1))
}

func (f *demoFleet) enroll(ctx context.Context, d *demoHandset) (time.Time, bool) {
	a, _, err := f.cfg.Client.Enroll(ctx, d.key, wire.EnrollBody{Model: d.model, Build: d.build, Channel: "stable", Region: d.region})
	if err != nil {
		return f.retry(ctx, d, "enroll", err)
	}
	if !d.enrolled {
		d.enrolled = true
		f.stats.enrolled.Add(1)
	}
	d.api, d.retries, d.phase = f.cfg.Client.WithToken(a.Token), 0, phCheckIn
	return time.Now(), true
}

func (f *demoFleet) checkIn(ctx context.Context, d *demoHandset) (time.Time, bool) {
	enc := d.numberEnc
	a, err := d.api.CheckIn(ctx, wire.CheckInBody{Build: d.build, Model: d.model, Channel: "stable",
		InstalledPatches: d.patches, CloudMessaging: d.messaging, NumberEncryption: &enc})
	if err != nil {
		return f.retry(ctx, d, "checkin", err)
	}
	f.stats.checkins.Add(1)
	d.retries = 0
	// poll_after_seconds is whole seconds; a fraction more keeps the
	// fleet from checking in on the same ticks.
	next := time.Now().Add(time.Duration(max(a.PollAfterSeconds, 1))*time.Second + f.jitter(d, time.Second))
	if o := a.Offer; o != nil && !slices.Contains(d.patches, o.PatchID) {
		if !d.offered {
			d.offered = true
			f.stats.offered.Add(1)
		}
		d.offer, d.phase, d.reported = o, phDownload, false
		return time.Now(), true
	}
	return next, true
}

// download reports downloading, then verifies the offer with go-tuf and
// starts the install; a target that does not verify is reported failed.
func (f *demoFleet) download(ctx context.Context, d *demoHandset) (time.Time, bool) {
	if d.patch == nil && d.fail == "" {
		if !d.reported {
			if err := f.report(ctx, d, handsets.StateDownloading, "", ""); err != nil {
				return f.retry(ctx, d, "report", err)
			}
			d.reported = true
		}
		custom, ready, err := f.cfg.Verifier.verify(d.offer, d.model, d.build)
		if !ready {
			return time.Now().Add(250 * time.Millisecond), true
		}
		if err != nil {
			if agent.Transient(err) {
				if f.stats.addError("tuf", err) {
					f.cfg.Logger.Warn("demo fleet: TUF verification failed (retrying)", slog.Any("error", err))
				}
				return time.Now().Add(2*time.Second + f.jitter(d, 2*time.Second)), true
			}
			f.cfg.Logger.Error("demo fleet: offer did not verify", slog.String("model", d.model), slog.Any("error", err))
			d.fail = agent.Code(err)
			d.phase = phFinish
			return time.Now(), true
		}
		d.patch = &demoPatch{installsBuild: custom.InstallsBuild, messagingDefault: custom.CloudMessagingDefault,
			numberEncryption: custom.NumberEncryption}
		d.attempts++
		span := [2]float64{1, 2}
		if d.model == demoFailingModel {
			span = [2]float64{1.5, 2}
		}
		if d.fail = demoInstallFailure(f.cfg.Seed, d.index, d.attempts, d.model); d.fail != "" {
			span = [2]float64{2, 3}
			if d.model == demoFailingModel {
				span = [2]float64{6, 8}
			}
		}
		wait := time.Duration((span[0] + d.rng.Float64()*(span[1]-span[0])) * float64(f.cfg.InstallTime))
		d.phase = phFinish
		return time.Now().Add(wait), true
	}
	d.phase = phFinish
	return time.Now(), true
}

// finish reports the install's result. An installed patch changes what
// the handset runs and says at its next check-in, right after the
// reboot: the new build, the patch, cloud messaging off until the user
// opts in, numbers encrypted.
func (f *demoFleet) finish(ctx context.Context, d *demoHandset) (time.Time, bool) {
	if d.fail != "" {
		msg := "simulated install failure"
		if d.fail == demoPX8Code {
			msg = "vendor partition too small for the patch on PX-8"
		}
		if err := f.report(ctx, d, handsets.StateFailed, d.fail, msg); err != nil {
			return f.retry(ctx, d, "report", err)
		}
		f.stats.failed.Add(1)
		f.stats.addResult(d, d.fail)
		d.fail, d.patch, d.offer, d.phase, d.retries = "", nil, nil, phCheckIn, 0
		return time.Now().Add(5*time.Second + f.jitter(d, 5*time.Second)), true
	}
	if err := f.report(ctx, d, handsets.StateInstalled, "", ""); err != nil {
		return f.retry(ctx, d, "report", err)
	}
	f.stats.installed.Add(1)
	f.stats.addResult(d, "")
	c := d.patch
	d.patches = append(d.patches, d.offer.PatchID)
	if c.installsBuild != "" {
		d.build = c.installsBuild
	}
	if c.messagingDefault == "opt-in" && d.messaging == handsets.MessagingAutoEnabled {
		d.messaging = handsets.MessagingOptedOut
	}
	if c.numberEncryption == "on" {
		d.numberEnc = true
	}
	d.patch, d.offer, d.phase, d.retries = nil, nil, phCheckIn, 0
	return time.Now(), true
}

func (f *demoFleet) report(ctx context.Context, d *demoHandset, state, code, message string) error {
	at := time.Now().UTC()
	if !at.After(d.lastAt) {
		at = d.lastAt.Add(time.Microsecond) // a handset's reports are strictly ordered
	}
	var id [16]byte
	crand.Read(id[:])
	_, err := d.api.Report(ctx, wire.ReportBody{
		ReportID: demoReportID(id), PatchID: d.offer.PatchID, RolloutID: d.offer.RolloutID, Target: d.offer.Target,
		State: state, ErrorCode: code, Message: message, At: &at})
	if err == nil {
		d.lastAt = at
	}
	return err
}

// demoReportID writes a report id in letters a-p: the server refuses ids
// with 7 digits in a row (an IMEI or a phone number could hide there).
func demoReportID(id [16]byte) string {
	const letters = "abcdefghijklmnop"
	b := make([]byte, 0, 2*len(id))
	for _, c := range id {
		b = append(b, letters[c>>4], letters[c&15])
	}
	return string(b)
}

// demoInstallFailure decides whether install attempt (1, 2, ...) of
// handset index of the fleet of seed fails, and with which code ("" for
// success): a pure function, so that a run repeated with its seed fails
// the same installs whatever the timing. Most models fail demoFailRate of
// their installs, PX-8 demoPX8FailRate.
func demoInstallFailure(seed uint64, index, attempt int, model string) string {
	// One stream per (handset, attempt), apart from the handsets' own
	// streams (whose second word is index+1, under 2^32).
	rng := rand.New(rand.NewPCG(seed, 1<<63|uint64(index)<<16|uint64(attempt&0xffff)))
	rate, codes := demoFailRate, demoFailCodes
	if model == demoFailingModel {
		rate, codes = demoPX8FailRate, []string{demoPX8Code}
	}
	if rng.Float64() >= rate {
		return ""
	}
	return codes[rng.IntN(len(codes))]
}

// demoUserAgent names the demo's requests in the server's logs.
const demoUserAgent = "otad-demo/1"

// newDemoHTTPClient is the demo's one HTTP client to its own server over
// loopback: the simulated handsets, the release engineers and the go-tuf
// updaters all go through it, as real clients would. One Transport with
// an idle connection for each worker: the fleet costs no TCP handshakes.
func newDemoHTTPClient(workers int) *http.Client {
	tr := &http.Transport{
		Proxy:               nil, // loopback only, never a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        workers + 8,
		MaxIdleConnsPerHost: workers + 8,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// demoVerifier checks offers with the agent's go-tuf verifier, for real:
// metadata from the server over loopback HTTP, starting from the root the
// demo fetched once as firmware would ship it, and the artifact
// downloaded and checked against the signed length and sha256.
//
// Sharing: one verification per model and offer (target, sha256, length,
// patch), not one per handset. The first handset of a model offered a
// target runs a fresh go-tuf update (Refresh, Check, Fetch); the model's
// other handsets offered the same reuse its signed target, and each still
// checks its own build against it. 3000 handsets in 4 models cost 4
// refreshes and 4 downloads per release, not 3000.
type demoVerifier struct {
	client *client.Client // the server's URL and the shared transport
	root   []byte
	dir    string

	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*verifiedTarget
	n       int // folders made
	wg      sync.WaitGroup
}

// verifiedTarget is one model's verification of one offer; handsets
// arriving while it runs wait for it.
type verifiedTarget struct {
	done   chan struct{}
	target *agent.Target
	// targetsVersion is the signed targets version it was found in.
	targetsVersion int64
	err            error
}

func newDemoVerifier(c *client.Client, root []byte, dir string, log *slog.Logger) *demoVerifier {
	return &demoVerifier{client: c, root: root, dir: dir, log: log, entries: map[string]*verifiedTarget{}}
}

// verify checks offer o for a handset of model and build and returns the
// signed custom metadata it installs by. ready is false while the
// model's verification of the offer still runs: the handset asks again
// a little later instead of holding a worker. Errors are the agent's:
// agent.Code, agent.Transient.
func (v *demoVerifier) verify(o *wire.OfferAnswer, model, build string) (custom *manifests.TargetCustom, ready bool, err error) {
	key := model + "\x00" + o.Target + "\x00" + o.SHA256 + "\x00" + strconv.FormatInt(o.Length, 10) + "\x00" + o.PatchID
	v.mu.Lock()
	e, ok := v.entries[key]
	if !ok {
		e = &verifiedTarget{done: make(chan struct{})}
		v.entries[key] = e
		v.n++
		dir := filepath.Join(v.dir, fmt.Sprintf("%s-%d", model, v.n))
		offer := *o
		// go-tuf takes no context: the HTTP client's timeout bounds it.
		v.wg.Go(func() {
			defer close(e.done)
			start := time.Now()
			e.err = v.run(e, dir, offer)
			switch {
			case agent.Transient(e.err):
				v.mu.Lock()
				delete(v.entries, key)
				v.mu.Unlock()
			case e.err == nil:
				v.log.Info("demo fleet: go-tuf verified the offered patch for a model; its handsets install it",
					slog.String("model", model), slog.String("target", o.Target), slog.String("sha256", e.target.SHA256),
					slog.Int64("targets_version", e.targetsVersion), slog.Duration("took", time.Since(start).Round(time.Millisecond)))
			}
		})
	}
	v.mu.Unlock()
	select {
	case <-e.done:
	default:
		return nil, false, nil
	}
	if e.err != nil {
		return nil, true, e.err
	}
	if err := e.target.For(model, build); err != nil {
		return nil, true, err
	}
	c := e.target.Custom
	return &c, true, nil
}

// wait waits for the verifications running.
func (v *demoVerifier) wait() { v.wg.Wait() }

// run refreshes a new verifier in dir, checks offer o against the signed
// metadata and downloads its target.
func (v *demoVerifier) run(e *verifiedTarget, dir string, o wire.OfferAnswer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err // not transient: agent.Code makes it E_TUF_VERIFY
	}
	base := v.client.BaseURL()
	ver := &agent.Verifier{MetadataURL: base + wire.MetadataPrefix, TargetsURL: base + wire.TargetsPrefix,
		Root: v.root, Dir: dir, HTTPClient: v.client.HTTPClient(), UserAgent: demoUserAgent}
	view, err := ver.Refresh()
	if err != nil {
		return err
	}
	t, err := view.Check(o)
	if err != nil {
		return err
	}
	if _, err := t.Fetch(context.Background(), v.client.HTTPClient(), filepath.Join(dir, "artifact"), demoUserAgent); err != nil {
		return err
	}
	e.target, e.targetsVersion = t, view.TargetsVersion()
	return nil
}
