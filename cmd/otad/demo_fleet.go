package main

import (
	"context"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/handsetsim"
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

// Silent bricks: the patch boot-loops demoSilentRate of PX-9s before
// their agent runs again, so they report installing and then nothing.
// The rollout counts them silent once demoSilenceAfter passes without a
// check-in, and holds PX-9 for silence alone (demoMaxSilenceRate).
const (
	demoSilentModel    = "PX-9"
	demoSilentRate     = 0.2
	demoSilenceAfter   = time.Minute
	demoMaxSilenceRate = 0.05
)

// fleetConfig is a simulated fleet.
type fleetConfig struct {
	// Client is the handsets' client, without a token: each handset
	// calls through WithToken's copy, over the same connections.
	Client *client.Client
	// Root is the trusted root the handsets ship with; TUFDir, an
	// existing folder, holds what their shared go-tuf verifier keeps.
	Root     []byte
	TUFDir   string
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
	// Images are the builds' full images (handsetsim.Config.Images):
	// what the release's binary deltas apply to.
	Images map[string]string
	Logger *slog.Logger
}

// demoFleet is the demo's simulated fleet: handsetsim's, with the
// demo's handsets (from the seed) and installs (demoInstallFailure,
// InstallTime), retrying failed installs when offered again.
type demoFleet struct {
	*handsetsim.Fleet
	done chan struct{}

	mu sync.Mutex
	// firstTries are the results of each handset's first install, by
	// handset index: the error code, or "" for installed.
	firstTries map[int]string
}

// demoHandsets is the fleet of seed: keys, models, regions and builds,
// and each handset's own random stream (for install times).
func demoHandsets(n int, seed uint64) ([]handsetsim.Handset, []*rand.Rand) {
	devs, rngs := make([]handsetsim.Handset, n), make([]*rand.Rand, n)
	seeds := rand.New(rand.NewPCG(seed, 0x0da7))
	for i := range devs {
		rng := rand.New(rand.NewPCG(seed, uint64(i)+1))
		h := handsetsim.Handset{Model: demoModels[i%len(demoModels)], Channel: "stable",
			Region: demoRegions[seeds.IntN(len(demoRegions))], Build: demoBuilds[seeds.IntN(len(demoBuilds))],
			Messaging: handsets.MessagingAutoEnabled} // the incident: on at first boot, numbers in clear
		// Device keys, hence device ids and with the rollout's salt the
		// cohorts, follow the seed too: a run's database is its own, so
		// keys of two runs may well be the same.
		for j := range h.Seed {
			h.Seed[j] = byte(rng.Uint32())
		}
		devs[i], rngs[i] = h, rng
	}
	return devs, rngs
}

func newDemoFleet(cfg fleetConfig) (*demoFleet, error) {
	devs, rngs := demoHandsets(cfg.Handsets, cfg.Seed)
	f := &demoFleet{done: make(chan struct{}), firstTries: map[int]string{}}
	fleet, err := handsetsim.New(handsetsim.Config{
		Client: cfg.Client, Root: cfg.Root, TUFDir: cfg.TUFDir, UserAgent: demoUserAgent,
		Workers: cfg.Workers, EnrollSpread: cfg.EnrollSpread, RetryFailed: true, Images: cfg.Images,
		// poll_after_seconds is whole seconds; a fraction more keeps the
		// fleet from checking in on the same ticks.
		PollJitter: time.Second,
		StopGrace:  demoStopGrace,
		Install: func(i int, h *handsetsim.Handset, attempt int) handsetsim.Outcome {
			// Handset i's stream is used by the worker that owns it only.
			rng := rngs[i]
			o := handsetsim.Outcome{Code: demoInstallFailure(cfg.Seed, i, attempt, h.Model)}
			if demoSilent(cfg.Seed, i, h.Model) {
				return handsetsim.Outcome{Silent: true}
			}
			span := [2]float64{1, 2}
			if h.Model == demoFailingModel {
				span = [2]float64{1.5, 2}
			}
			if o.Code != "" {
				o.Message, span = "simulated install failure", [2]float64{2, 3}
				if h.Model == demoFailingModel {
					o.Message, span = "vendor partition too small for the patch on PX-8", [2]float64{6, 8}
				}
			}
			o.Takes = time.Duration((span[0] + rng.Float64()*(span[1]-span[0])) * float64(cfg.InstallTime))
			return o
		},
		OnResult: func(i, attempt int, code string) {
			if attempt == 1 {
				f.mu.Lock()
				f.firstTries[i] = code
				f.mu.Unlock()
			}
		},
		Say: func(line string) { cfg.Logger.Info("demo fleet: " + line) },
	}, devs)
	if err != nil {
		return nil, err
	}
	f.Fleet = fleet
	return f, nil
}

// firstResults returns a copy of the results of first installs.
func (f *demoFleet) firstResults() map[int]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.firstTries)
}

// run drives the fleet until ctx ends, then lets the steps in flight
// finish (for at most demoStopGrace: a request cut off would be a
// spurious error in the server's log) and returns; done is closed then.
func (f *demoFleet) run(ctx context.Context) {
	defer close(f.done)
	f.Run(context.WithoutCancel(ctx), ctx)
}

// demoStopGrace bounds how long the fleet's last requests may take once
// the demo stops.
const demoStopGrace = 5 * time.Second

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

// demoSilent decides whether the patch bricks handset index of the fleet
// of seed silently: demoSilentRate of demoSilentModel, a pure function
// like demoInstallFailure.
func demoSilent(seed uint64, index int, model string) bool {
	if model != demoSilentModel {
		return false
	}
	return rand.New(rand.NewPCG(seed, 1<<62|uint64(index))).Float64() < demoSilentRate
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
