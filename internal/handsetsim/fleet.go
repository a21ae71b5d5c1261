// Package handsetsim simulates a fleet of handsets against an otad
// server, for the handset simulator (cmd/handset) and otad demo: one
// simulator, on the handset half of the client package and the agent's
// go-tuf verifier.
//
// Each handset has its own device key, enrolls, checks in on the
// server's schedule and, on an offer, reports downloading, runs a go-tuf
// update (the target must be signed, match the offer and apply to its
// model and build, and its bytes must verify), reports downloaded,
// verified and installing, and then installed or failed as the caller's
// Install decides. Reports keep their id across retries, so the server
// counts a resent one once; a 401 re-enrolls; Retry-After is obeyed.
//
// What the agent does on one device, a fleet does for thousands in one
// process: handsets are entries in a time-ordered schedule, run by a
// fixed pool of workers, and share one verifier, so 10,000 handsets cost
// a few go-tuf updates and one download per release, not 10,000.
package handsetsim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/due"
)

// Config is a fleet.
type Config struct {
	// Client calls the server; it has no token: each handset calls
	// through WithToken's copy, over the same connections.
	Client *client.Client
	// EnrollmentSecret is the fleet's, when the server asks for one.
	EnrollmentSecret string
	// Workers bounds the requests in flight (default 32).
	Workers int

	// Root is the trusted root.json the handsets ship with. It is
	// required unless EnrollOnly.
	Root []byte
	// TUFDir holds the verifier's metadata and verified targets; it must
	// exist. Required unless EnrollOnly.
	TUFDir string
	// TUFMaxAge is how long handsets share one go-tuf update before the
	// next offer refreshes it (default 30s). An offer not found in a
	// shared view refreshes it at once.
	TUFMaxAge time.Duration
	// DownloadClient fetches metadata and targets; default the Client's.
	DownloadClient *http.Client
	// AllowedHosts are host[:port]s besides the server's that offers may
	// name (a CDN); an offer naming another host is ignored for the
	// server's own URL, and Say tells it once.
	AllowedHosts []string
	// UserAgent names the verifier's requests (the Client names its own).
	UserAgent string

	// Install decides install attempt (1, 2, ...) of handset i in this
	// run; nil installs everything at once.
	Install func(i int, h *Handset, attempt int) Outcome
	// OnResult, if set, is called when handset i's install attempt ends:
	// code "" for installed, "silent" for a handset the install bricked.
	// It runs on the handset's worker.
	OnResult func(i, attempt int, code string)
	// RetryFailed makes a handset whose install failed take the patch
	// again when the server offers it again; without it a failed patch is
	// not taken again in this run and the handset is settled.
	RetryFailed bool
	// Images maps a build to the path of its full image: what a binary
	// delta (manifests.FormatZstdPatch) offered to a handset on that
	// build is applied to, its result checked against the full image's
	// signed hash. A delta for a build without one fails with
	// E_INCREMENTAL_APPLY, as on an agent without Config.CurrentImage.
	Images map[string]string

	// TimeScale multiplies the waits the fleet chooses: polls and backoff
	// (default 1; 0.01 runs a day of polls in 15 minutes). The server's
	// Retry-After is obeyed as it is.
	TimeScale float64
	// PollJitter adds up to this much to every poll, before scaling, so
	// that the fleet does not check in on the same ticks.
	PollJitter time.Duration
	// Backoff is the wait after the n-th failure in a row, before
	// scaling; default agent.DefaultBackoff, the agent's.
	Backoff func(n int) time.Duration
	// EnrollSpread spreads the first enrollments over this long, so the
	// fleet does not arrive in one burst.
	EnrollSpread time.Duration
	// EnrollOnly stops each handset once it enrolled (a load test's
	// first phase).
	EnrollOnly bool
	// StopGrace bounds how long the steps in flight may take once the
	// run stops (default 5s): a request cut off would be a spurious error
	// in the server's log.
	StopGrace time.Duration
	// Say gets a line for a person watching, now and then: the first
	// no_offer reason of each kind, an ignored offer URL, a target
	// verified, the first request failure of each kind. Default: nothing.
	Say func(line string)
}

// Fleet is a simulated fleet and its run.
//
// Goroutines: one dispatcher and Workers workers, whatever the number of
// handsets. A handset is an index in a time-ordered heap; the dispatcher
// hands due handsets to free workers, a worker runs its steps (a request,
// or a go-tuf update, each) while they are due at once and pushes the
// handset back with the time of its next step. Waiting for a poll or a
// Retry-After costs a heap entry, not a goroutine or a worker, and at
// most Workers requests are in flight because only workers send them.
type Fleet struct {
	cfg    Config
	server *url.URL
	tuf    *verifier // nil when EnrollOnly
	devs   []Handset
	stats  *stats

	settledN   atomic.Int64
	allSettled chan struct{}
	settleOnce sync.Once
	lastGiveUp atomic.Value // string: why the last handset gave up

	offersMu  sync.Mutex
	offers    map[offer]*offer
	warnedURL atomic.Bool
}

// New makes a fleet of the handsets devs, which it owns from now on.
func New(cfg Config, devs []Handset) (*Fleet, error) {
	if cfg.Client == nil {
		return nil, errors.New("handsetsim: no client")
	}
	server, err := url.Parse(cfg.Client.BaseURL())
	if err != nil {
		return nil, fmt.Errorf("handsetsim: server URL: %w", err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.TimeScale <= 0 {
		cfg.TimeScale = 1
	}
	if cfg.TUFMaxAge <= 0 {
		cfg.TUFMaxAge = 30 * time.Second
	}
	if cfg.Backoff == nil {
		cfg.Backoff = agent.DefaultBackoff
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	if cfg.Say == nil {
		cfg.Say = func(string) {}
	}
	if cfg.DownloadClient == nil {
		cfg.DownloadClient = cfg.Client.HTTPClient()
	}
	f := &Fleet{cfg: cfg, server: server, devs: devs, stats: newStats(), allSettled: make(chan struct{}),
		offers: map[offer]*offer{}}
	if !cfg.EnrollOnly {
		if len(cfg.Root) == 0 || cfg.TUFDir == "" {
			return nil, errors.New("handsetsim: a fleet that installs needs a trusted root and a TUF folder")
		}
		if fi, err := os.Stat(cfg.TUFDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("handsetsim: TUF folder %s: not a folder (%v)", cfg.TUFDir, err)
		}
		f.tuf = newVerifier(cfg.Root, cfg.DownloadClient, cfg.TUFDir, cfg.TUFMaxAge, cfg.UserAgent, f.say)
		f.tuf.images = cfg.Images
	}
	for i := range f.devs {
		h := &f.devs[i]
		h.newRun()
	}
	return f, nil
}

// Handsets are the fleet's handsets: read them only when no run is going,
// except the fields set before it (Seed, Model, Region, Channel).
func (f *Fleet) Handsets() []Handset { return f.devs }

// Counts are the fleet's counters now; safe during a run.
func (f *Fleet) Counts() Counts { return f.stats.counts() }

// SettledCount is how many handsets have nothing left to do in this run.
func (f *Fleet) SettledCount() int64 { return f.settledN.Load() }

// GiveUpReason is why the last handset that gave up did, or "".
func (f *Fleet) GiveUpReason() string {
	v, _ := f.lastGiveUp.Load().(string)
	return v
}

func (f *Fleet) say(line string) { f.cfg.Say(line) }

// addError counts a failed request and tells the first of its kind.
func (f *Fleet) addError(op string, err error) {
	if f.stats.addError(op, err) {
		f.say(fmt.Sprintf("a request failed: %s: %s (further ones are counted)", op, agent.Describe(err)))
	}
}

// scale applies the fleet's TimeScale to a wait it chose.
func (f *Fleet) scale(d time.Duration) time.Duration {
	return time.Duration(float64(d) * f.cfg.TimeScale)
}

// backoff is the scaled wait after the n-th failure in a row.
func (f *Fleet) backoff(n int) time.Duration { return max(f.scale(f.cfg.Backoff(n)), time.Millisecond) }

// settle marks a handset as having nothing left to do in this run; when
// all have, RunUntilSettled ends.
func (f *Fleet) settle(h *Handset) {
	if h.settled {
		return
	}
	h.settled = true
	if f.settledN.Add(1) == int64(len(f.devs)) {
		f.settleOnce.Do(func() { close(f.allSettled) })
	}
}

// resolve returns the absolute URL of an offered location, or the
// server's default (def, a path under it) when the offer names none or a
// host neither the server's nor allowed: no answer can make the simulator
// contact another host. A root-relative path (what otad answers without a
// public URL) goes under the server's URL, path included
// (client.ResolveURL).
func (f *Fleet) resolve(raw, def string) string {
	base := strings.TrimSuffix(f.server.String(), "/") + def
	if raw == "" {
		return base
	}
	u, err := f.cfg.Client.ResolveURL(raw, f.cfg.AllowedHosts...)
	if err != nil {
		if f.warnedURL.CompareAndSwap(false, true) {
			f.say(fmt.Sprintf("warning: ignoring offered URL %q (not the server nor an allowed host), using %s", raw, base))
		}
		return base
	}
	return u
}

// intern shares one *offer among the handsets offered the same update.
func (f *Fleet) intern(o offer) *offer {
	f.offersMu.Lock()
	defer f.offersMu.Unlock()
	if p, ok := f.offers[o]; ok {
		return p
	}
	p := &o
	if len(f.offers) < 1024 {
		f.offers[o] = p
	}
	return p
}

// Run runs every handset from enrollment until stop ends (ctx ending
// also cancels the requests in flight). It is RunUntilSettled for a fleet
// that lives as long as its caller wants, such as otad demo's.
func (f *Fleet) Run(ctx, stop context.Context) {
	f.drive(ctx, stop, f.schedule())
}

// RunUntilSettled runs every handset from enrollment until all are
// settled, ctx ends or timeout passes; it reports whether all settled.
func (f *Fleet) RunUntilSettled(ctx context.Context, timeout time.Duration) bool {
	stop, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-f.allSettled:
			cancel()
		case <-stop.Done():
		}
	}()
	f.drive(ctx, stop, f.schedule())
	select {
	case <-f.allSettled:
		return true
	default:
		return false
	}
}

// schedule puts every handset on a new schedule, due now or spread over
// EnrollSpread.
func (f *Fleet) schedule() *due.Scheduler {
	sched := due.New(len(f.devs))
	now := time.Now()
	for i := range f.devs {
		at := now
		if f.cfg.EnrollSpread > 0 {
			at = at.Add(time.Duration(rand.Int64N(int64(f.cfg.EnrollSpread) + 1)))
		}
		sched.Push(int32(i), at)
	}
	return sched
}

// drive runs the scheduler and workers until stop ends. Steps in flight
// then finish (a request cut off would be a spurious error in the
// server's log), for at most StopGrace; ctx ending cancels them at once.
func (f *Fleet) drive(ctx, stop context.Context, sched *due.Scheduler) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int32)
	var wg sync.WaitGroup
	for range f.cfg.Workers {
		wg.Go(func() {
			for i := range work {
				f.run(ctx, stop, sched, i)
			}
		})
	}
	sched.Dispatch(stop, work)
	close(work)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	grace := time.NewTimer(f.cfg.StopGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		cancel()
		<-done
	}
	if f.tuf != nil {
		f.tuf.wait()
	}
}

// maxChain bounds how many due steps of one handset a worker runs in a
// row before handing it back to the scheduler.
const maxChain = 16

// run runs handset i's steps while they are due at once, so that an
// install goes from offer to installed without waiting behind every other
// handset's step (depth first, as real handsets run), then schedules it.
func (f *Fleet) run(ctx, stop context.Context, sched *due.Scheduler, i int32) {
	h := &f.devs[i]
	for n := 1; ; n++ {
		next, ok := f.step(ctx, int(i), h)
		if !ok {
			return
		}
		if n >= maxChain || next.After(time.Now()) || stop.Err() != nil {
			sched.Push(i, next)
			return
		}
	}
}

// Erase deletes every enrolled handset from the server, Workers at a
// time; it returns how many were erased.
func (f *Fleet) Erase(ctx context.Context, timeout time.Duration) int64 {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var next, erased atomic.Int64
	var wg sync.WaitGroup
	for range min(f.cfg.Workers, len(f.devs)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(f.devs)) {
					return
				}
				h := &f.devs[i]
				if h.Token == "" {
					continue
				}
				if err := f.as(h).EraseSelf(ctx); err != nil {
					f.addError("erase", err)
					continue
				}
				h.Token = ""
				erased.Add(1)
			}
		})
	}
	wg.Wait()
	return erased.Load()
}

// ErrorKind sorts an error into the few kinds a run's counts keep:
// "rate_limited", "http_<status>", "bad_answer", "timeout", "canceled",
// "network". None carries an address.
func ErrorKind(err error) string {
	var ba *client.BadAnswerError
	var ne net.Error
	switch ce := client.AsError(err); {
	case ce != nil:
		if ce.Status == http.StatusTooManyRequests {
			return "rate_limited"
		}
		return "http_" + strconv.Itoa(ce.Status)
	case errors.As(err, &ba):
		return "bad_answer"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	default:
		return "network"
	}
}

func unauthorized(err error) bool {
	ce := client.AsError(err)
	return ce != nil && ce.Status == http.StatusUnauthorized
}

// oneLine folds multi-line text so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
