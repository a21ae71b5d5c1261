package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/server/rollout"
)

// demoOutcome is what --seed must repeat: the fleet, which first
// installs failed, and the stage at which PX-8 was held.
type demoOutcome struct {
	fleet     []string       // per handset: public key, model, region
	firstTry  map[int]string // handset index -> error code of its first install, "" installed
	heldAtPct float64        // the stage PX-8 was held at; 0: never held
}

// demoSeedHandsets is the fleet of the seed test: enough that PX-8 has
// about 10 handsets in the 10% stage (the policy's minimum of results is
// 5), so that it is held there, and few enough for -race.
const demoSeedHandsets = 400

// handsetLine is what a demo handset is: its public key, model and
// region.
func handsetLine(h *handsetsim.Handset) string {
	pub := ed25519.NewKeyFromSeed(h.Seed[:]).Public().(ed25519.PublicKey)
	return strings.Join([]string{hex.EncodeToString(pub), h.Model, h.Region}, " ")
}

// model is handset i's model.
func (o demoOutcome) model(i int) string { return strings.Fields(o.fleet[i])[1] }

// runDemoOutcome runs a small, fast demo with seed until its rollout has
// completed and every handset offered the patch has a first result, and
// returns what it did.
func runDemoOutcome(t *testing.T, seed uint64) demoOutcome {
	t.Helper()
	cfg := defaultDemoConfig()
	cfg.Listen, cfg.AddrFile, cfg.Handsets, cfg.Seed = "127.0.0.1:0", filepath.Join(t.TempDir(), "otad.addr"), demoSeedHandsets, seed
	// As the defaults do at their scale (see fleetConfig.InstallTime):
	// offers reach a stage within a few seconds (a second of cache, a
	// poll of 1 s stretched by what the workers manage under -race),
	// PX-8's successes take 0.45-0.6 s and its failures 1.8-2.4 s, so
	// every result lands well within the soak.
	cfg.Soak, cfg.PollInterval, cfg.InstallTime = 12*time.Second, time.Second, 300*time.Millisecond
	cfg.ApproveAfter, cfg.Progress, cfg.Workers = 500*time.Millisecond, time.Hour, 16
	cfg.TempParent = t.TempDir()

	var stdout, logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan *demoRun, 1)
	result := make(chan error, 1)
	go func() { result <- runDemoWith(ctx, cfg, &stdout, &logs, log, func(d *demoRun) { ready <- d }) }()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Logf("demo log:\n%s", logs.String())
		t.Fatalf(format, args...)
	}
	var d *demoRun
	select {
	case d = <-ready:
	case err := <-result:
		fail("demo ended before it was ready: %v", err)
	case <-time.After(3 * time.Minute):
		fail("demo not ready after 3 minutes")
	}
	// --addr-file, as otad serve writes it.
	if b, err := os.ReadFile(cfg.AddrFile); err != nil || "http://"+strings.TrimSpace(string(b)) != d.url {
		fail("--addr-file %s holds %q (%v), want the address of %s", cfg.AddrFile, b, err, d.url)
	}

	var out demoOutcome
	devs := d.fleet.Handsets()
	for i := range devs {
		// Key, model and region never change once the fleet is made, so
		// reading them while it runs is no race (the build changes).
		out.fleet = append(out.fleet, handsetLine(&devs[i]))
	}
	// A bound on a hang only: a run takes about a minute.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		r, err := d.main.App.Rollouts.Get(ctx, d.rolloutID)
		if err != nil {
			fail("rollout: %v", err)
		}
		if r.State == rollout.RolloutPaused {
			fail("the rollout halted: %+v", r.Halt)
		}
		first := d.fleet.firstResults()
		if r.State == rollout.RolloutCompleted && int64(len(first)) == d.fleet.Counts().Offered {
			out.firstTry = first
			break
		}
		if time.Now().After(deadline) {
			fail("after 4 minutes: rollout %s at %g%%, %d of %d offered handsets with a result",
				r.State, r.Percent(), len(first), d.fleet.Counts().Offered)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case err := <-result:
			fail("demo ended: %v", err)
		}
	}
	events, err := d.main.App.Rollouts.Events(ctx, d.rolloutID, 1000)
	if err != nil {
		fail("events: %v", err)
	}
	for _, ev := range events {
		if ev.Action == rollout.ActionHold && ev.Model == demoFailingModel {
			out.heldAtPct = ev.FromPercent
			t.Logf("seed %d: %s held at %g%%: %s", seed, ev.Model, ev.FromPercent, ev.Reason)
		}
		if ev.Action == rollout.ActionAdvance {
			t.Logf("seed %d: advance %g%% -> %g%%: %s", seed, ev.FromPercent, ev.ToPercent, ev.Reason)
		}
	}
	cancel()
	if err := <-result; err != nil {
		fail("demo ended with %v", err)
	}
	if _, err := os.Stat(cfg.AddrFile); !os.IsNotExist(err) {
		t.Errorf("--addr-file %s still there after the demo stopped: %v", cfg.AddrFile, err)
	}
	return out
}

// demoFirstTry is what handset index's first install does in a demo of
// seed: "silent" when the patch bricks it, else demoInstallFailure.
func demoFirstTry(seed uint64, index int, model string) string {
	if demoSilent(seed, index, model) {
		return "silent"
	}
	return demoInstallFailure(seed, index, 1, model)
}

// TestDemoSeedRepeatsRun: two demos with one seed have the same fleet,
// fail the same first installs (of the handsets both runs offered the
// patch) and hold PX-8 at the same stage; another
// seed has another fleet and other failures. The same seed once held
// PX-8 at 10% and the next time at 25%: its failures were drawn from a
// stream that timing also drew from, and landed after the soak.
func TestDemoSeedRepeatsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("two demo runs of about a minute each")
	}
	// The two runs go side by side: each has its own server, database and
	// fleet, and what they must agree on may not depend on timing.
	var a, b demoOutcome
	t.Run("runs", func(t *testing.T) {
		t.Run("first", func(t *testing.T) { t.Parallel(); a = runDemoOutcome(t, 7) })
		t.Run("second", func(t *testing.T) { t.Parallel(); b = runDemoOutcome(t, 7) })
	})
	if t.Failed() {
		return
	}
	// Seed 8 is not run: its fleet and its first installs' failures are
	// what a run would have (the run above shows they are the run's).
	c := demoOutcome{firstTry: map[int]string{}}
	devs, _ := demoHandsets(demoSeedHandsets, 8)
	for i := range devs {
		c.fleet = append(c.fleet, handsetLine(&devs[i]))
		c.firstTry[i] = demoFirstTry(8, i, devs[i].Model)
	}

	if !slices.Equal(a.fleet, b.fleet) {
		t.Errorf("seed 7 made two different fleets")
	}
	if slices.Equal(a.fleet, c.fleet) {
		t.Errorf("seeds 7 and 8 made the same fleet")
	}
	failed := func(o demoOutcome) []int {
		var idx []int
		for i, code := range o.firstTry {
			if code != "" {
				idx = append(idx, i)
			}
		}
		slices.Sort(idx)
		return idx
	}
	// Which handsets were offered the patch depends on timing at the
	// edges: one PX-8 handset checking in just before or just after the
	// hold is offered in one run and not in the other. What a handset
	// offered in both runs did must not depend on timing.
	both, mismatched := 0, 0
	for i, code := range a.firstTry {
		if other, ok := b.firstTry[i]; ok {
			both++
			if other != code {
				mismatched++
				t.Errorf("seed 7, handset %d: first install %q in one run and %q in the other", i, code, other)
			}
		}
	}
	if small := min(len(a.firstTry), len(b.firstTry)); both < small*95/100 {
		t.Errorf("seed 7: only %d handsets offered in both runs, of %d and %d; failed %v and %v",
			both, len(a.firstTry), len(b.firstTry), failed(a), failed(b))
	}
	differ := 0
	for i, code := range a.firstTry {
		if (code == "") != (c.firstTry[i] == "") {
			differ++
		}
	}
	if differ == 0 {
		t.Errorf("seeds 7 and 8 fail the same first installs: %v", failed(a))
	}
	if a.heldAtPct == 0 || a.heldAtPct != b.heldAtPct {
		t.Errorf("seed 7 held PX-8 at %g%% and then at %g%% (0: never); want one stage", a.heldAtPct, b.heldAtPct)
	}
	for i, code := range a.firstTry {
		if want := demoFirstTry(7, i, a.model(i)); code != want {
			t.Errorf("seed 7, handset %d: first install %q, want %q", i, code, want)
		}
	}
	t.Logf("seed 7: %d and %d first installs (%d in both, %d differing), %d failed, PX-8 held at %g%%",
		len(a.firstTry), len(b.firstTry), both, mismatched, len(failed(a)), a.heldAtPct)
}

// TestDemoInstallFailure: the failures are a pure function of (seed,
// handset, attempt) at about the rates the README gives.
func TestDemoInstallFailure(t *testing.T) {
	const n = 20000
	var px8, other int
	for i := range n {
		if demoInstallFailure(3, i, 1, demoFailingModel) != "" {
			px8++
		}
		if code := demoInstallFailure(3, i, 1, "PX-7"); code != "" {
			other++
			if !slices.Contains(demoFailCodes, code) {
				t.Fatalf("PX-7 failed with %q, want one of %v", code, demoFailCodes)
			}
		}
		if demoInstallFailure(3, i, 1, "PX-7") != demoInstallFailure(3, i, 1, "PX-7") {
			t.Fatalf("handset %d: two answers for one attempt", i)
		}
	}
	if r := float64(px8) / n; r < 0.38 || r > 0.42 {
		t.Errorf("PX-8 fails %.3f of installs, want about %g", r, demoPX8FailRate)
	}
	if r := float64(other) / n; r < 0.015 || r > 0.025 {
		t.Errorf("PX-7 fails %.3f of installs, want about %g", r, demoFailRate)
	}
	same := 0
	for i := range 1000 {
		if (demoInstallFailure(3, i, 1, demoFailingModel) == "") == (demoInstallFailure(3, i, 2, demoFailingModel) == "") {
			same++
		}
	}
	if same == 1000 {
		t.Errorf("a second attempt always repeats the first")
	}
}
