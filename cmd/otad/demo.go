package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/manifests/delta"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/signing"
)

// DemoBanner is the warning strip on every dashboard page of a demo.
const DemoBanner = "DEMO — development-only keys, generated for this run"

// Users of the demo.
const (
	demoAdmin    = "admin"
	demoOperator = "demo-operator"
	demoApprover = "demo-approver"
	demoActor    = "otad-demo" // the audit log's actor of the demo's own setup
)

// demoConfig is an "otad demo" run. The flags set the first six; tests
// shorten the others.
type demoConfig struct {
	Listen   string // otad serve's --listen
	AddrFile string // otad serve's --addr-file
	Handsets int
	Keep     bool
	Soak     time.Duration
	Seed     uint64 // 0: a random seed, logged

	// PollInterval is the server's mean time between check-ins
	// (otad serve's --poll-interval; an hour in production).
	PollInterval time.Duration
	// MinResults is the rollout policy's minimum of results; 0 is 1% of
	// the handsets, from 5 to 30. It must stay small against the fleet:
	// PX-8 is held on its own only once it has MinResults results, and
	// until then its failures count toward halting the whole rollout.
	MinResults int
	// InstallTime is the base time a simulated install takes.
	InstallTime time.Duration
	// ApproveAfter is how long a pending approval waits for a person
	// before demo-approver approves it.
	ApproveAfter time.Duration
	// Progress is how often a progress line is logged.
	Progress time.Duration
	Workers  int
	// TempParent is where the run's folder is made (default os.TempDir()).
	TempParent string
}

func defaultDemoConfig() demoConfig {
	return demoConfig{
		Listen: "127.0.0.1:8080", Handsets: 3000, Soak: 30 * time.Second,
		PollInterval: 10 * time.Second, InstallTime: time.Second,
		ApproveAfter: 20 * time.Second, Progress: 10 * time.Second, Workers: 16,
	}
}

const demoSynopsis = `Runs a self-contained demo: otad on embedded defaults in a new temporary
folder (removed on exit unless --keep), development-only keys generated for
the run, the root ceremony and the privacy patch signed 2 of 3, users
"admin" (password printed once) and "demo-operator", a staged rollout
(10, 25, 50, 100%) that widens on its own after each soak, and a simulated
fleet of handsets in this process that enroll, poll, verify the patch with
go-tuf, install it and report. Widening past 50% waits for a second
person: log in as admin and approve it, or "demo-approver" does after 20 s.
Ctrl-C stops it.`

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := defaultDemoConfig()
	fs := envflag.New("otad demo [flags]", demoSynopsis, stderr)
	// The same names as otad serve's flags: one habit for both.
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address to serve the dashboard and the API on; 127.0.0.1:0 picks a free port (see --addr-file)")
	fs.StringVar(&cfg.AddrFile, "addr-file", cfg.AddrFile, "file to write the bound host:port to once listening (removed on exit); scripts read it with --listen 127.0.0.1:0")
	fs.IntVar(&cfg.Handsets, "handsets", cfg.Handsets, "simulated handsets (4 models, 3 regions, builds 7.3.x and 7.4.x)")
	fs.BoolVar(&cfg.Keep, "keep", cfg.Keep, "keep the temporary folder (database, blobs, development keys) on exit")
	fs.DurationVar(&cfg.Soak, "soak", cfg.Soak, "how long each rollout stage runs healthy before it widens on its own")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the simulated fleet's models, builds and failures; 0 picks one (logged)")
	if err := parseFlags(fs, args, func(string) string { return "" }); err != nil {
		return err
	}
	switch {
	case cfg.Handsets < 1 || cfg.Handsets > 100_000:
		return usageError{fmt.Errorf("--handsets %d: want 1 to 100000", cfg.Handsets)}
	case cfg.Soak < time.Second || cfg.Soak > time.Hour:
		return usageError{fmt.Errorf("--soak %v: want 1s to 1h", cfg.Soak)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return runDemoWith(ctx, cfg, stdout, stderr, log, nil)
}

// demoRun is a running demo, as tests see it.
type demoRun struct {
	cfg       demoConfig
	dir       string
	url       string
	password  string
	main      *Main
	rolloutID string
	fleet     *demoFleet
	// images are the builds' full images, by build.
	images map[string]string
	// operator and approver call the admin API as demo-operator and
	// demo-approver, as people would through otactl.
	operator, approver *client.Client
}

// runDemoWith runs the demo until ctx ends. ready, when set, is called
// once the dashboard is up and the rollout started. It returns nil on a
// clean stop: the fleet, the server and the jobs stopped and the folder
// removed (unless Keep).
func runDemoWith(ctx context.Context, cfg demoConfig, stdout, stderr io.Writer, log *slog.Logger, ready func(*demoRun)) (err error) {
	if cfg.Seed == 0 {
		cfg.Seed = mrand.Uint64N(1<<31) + 1
	}
	if cfg.MinResults <= 0 {
		cfg.MinResults = min(max(cfg.Handsets/100, 5), 30)
	}
	dir, err := os.MkdirTemp(cfg.TempParent, "otad-demo-")
	if err != nil {
		return fmt.Errorf("demo folder: %w", err)
	}
	d := &demoRun{cfg: cfg, dir: dir}
	defer func() {
		if cfg.Keep {
			log.Info("demo: kept the folder", slog.String("dir", dir))
			return
		}
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove demo folder: %w", rerr))
		}
	}()

	sc := defaultConfig()
	sc.DataDir, sc.Listen, sc.AddrFile = dir, cfg.Listen, cfg.AddrFile
	sc.LogLevel, sc.LogFormat = "warn", "text"
	sc.PollInterval = cfg.PollInterval
	// Policies every second, so that a stage widens soon after its soak;
	// offers reach the fleet at once.
	sc.RefreshInterval, sc.RolloutRefresh = time.Second, time.Second
	sc.ShutdownTimeout = 5 * time.Second
	// Every handset enrolls in the first seconds, and checks in again
	// right after installing: the production limits are for hourly polls.
	sc.EnrollmentsPerMinute, sc.CheckInsPerMinute, sc.ReportsPerMinute = 0, 0, 0
	sc.Banner = DemoBanner
	if err := sc.ValidateServe(); err != nil {
		return err
	}
	// The server logs warnings and errors only: a line per request of
	// thousands of handsets would bury the demo's own lines.
	d.main = NewMain(sc, sc.logger(stderr))
	if err := d.main.Run(ctx); err != nil {
		d.main.Close()
		if errors.Is(err, syscall.EADDRINUSE) {
			return usageError{fmt.Errorf("--listen %s is already in use (another otad, or an earlier demo?): run otad demo --listen 127.0.0.1:0 for a free port", cfg.Listen)}
		}
		return err
	}
	defer func() { err = errors.Join(err, d.main.Close()) }()
	d.url = "http://" + d.main.Addr()
	log.Warn("DEMO: development-only keys generated for this run in " + dir + "; never use them for real handsets")

	hc := newDemoHTTPClient(cfg.Workers)
	defer hc.CloseIdleConnections() // no transport goroutine outlives the demo
	dc, err := client.New(d.url, client.WithHTTPClient(hc), client.WithUserAgent(demoUserAgent))
	if err != nil {
		return err
	}
	if err := d.setup(ctx, dc); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("demo setup: %w", err)
	}
	root, err := dc.FirstRoot(ctx)
	if err != nil {
		return fmt.Errorf("demo: fetch the trusted root: %w", err)
	}
	// What handsets ship in firmware.
	if err := os.WriteFile(filepath.Join(dir, "root.json"), root, 0o600); err != nil {
		return err
	}

	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	tufDir := filepath.Join(dir, "handset-tuf")
	if err := os.Mkdir(tufDir, 0o700); err != nil {
		return err
	}
	if d.fleet, err = newDemoFleet(fleetConfig{Client: dc, Root: root, TUFDir: tufDir,
		Handsets: cfg.Handsets, Workers: cfg.Workers, Seed: cfg.Seed, EnrollSpread: min(5*time.Second, cfg.PollInterval),
		InstallTime: cfg.InstallTime, Images: d.images, Logger: log}); err != nil {
		return err
	}
	go d.fleet.run(fleetCtx)
	// The fleet stops before the server (deferred last, runs first).
	defer func() { stopFleet(); <-d.fleet.done }()

	fmt.Fprintf(stdout, "\notad demo is running: %s\n", d.url)
	fmt.Fprintf(stdout, "login: %s / %s\n", demoAdmin, d.password)
	fmt.Fprintf(stdout, "Next: %d simulated handsets enroll, then %s rolls the privacy patch out to 10%% -> 25%% -> 50%% after %s healthy soaks; "+
		"PX-8 fails often and is held while the other models go on; the patch bricks some PX-9s, which go silent, "+
		"and PX-9 is held for silence %s after they began installing; widening past 50%% waits for a second person "+
		"(log in as admin and approve it, or %s does after %s); then 100%%. Handsets on %s get a small delta "+
		"instead of the full image: the rollout page shows the bytes saved. Ctrl-C stops.\n\n",
		cfg.Handsets, demoOperator, cfg.Soak, demoSilenceAfter, demoApprover, cfg.ApproveAfter, strings.Join(demoIncrementalBuilds, " and "))
	log.Info("demo: simulated handsets enrolling", slog.Int("handsets", cfg.Handsets), slog.Uint64("seed", cfg.Seed))
	d.waitEnrolled(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err := d.startRollout(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	log.Info("demo: "+demoOperator+" started the rollout", slog.String("rollout", d.rolloutID),
		slog.Int64("enrolled", d.fleet.Counts().Enrolled))

	var wg sync.WaitGroup
	wg.Go(func() { d.watch(fleetCtx, log) })
	defer func() { stopFleet(); wg.Wait() }()
	if ready != nil {
		ready(d)
	}
	select {
	case <-ctx.Done():
		log.Info("demo: stopping")
		return nil
	case err := <-d.main.Done():
		return fmt.Errorf("http server stopped: %w", err)
	}
}

// setup creates the users, then runs the ceremony and publishes the
// patch through the admin API as the release team.
func (d *demoRun) setup(ctx context.Context, dc *client.Client) error {
	a := d.main.App
	pw, err := demoPassword()
	if err != nil {
		return err
	}
	d.password = pw
	for _, u := range []struct{ name, role string }{
		{demoAdmin, identity.RoleAdmin}, {demoOperator, identity.RoleOperator}, {demoApprover, identity.RoleOperator},
	} {
		password := pw
		if u.name != demoAdmin {
			// Nobody logs in as the simulated operators.
			if password, err = demoPassword(); err != nil {
				return err
			}
		}
		user, err := a.Users.Create(ctx, u.name, u.role, password, false)
		if err != nil {
			return fmt.Errorf("create user %s: %w", u.name, err)
		}
		if err := a.Audit.AppendAudit(ctx, audit.AuditEntry{At: time.Now(), Actor: demoActor, Action: "user.create",
			Object: u.name, Detail: fmt.Sprintf(`{"role":%q,"service":false}`, u.role)}); err != nil {
			return err
		}
		if u.name == demoAdmin {
			continue
		}
		_, token, err := a.Tokens.CreateFor(ctx, user, u.name)
		if err != nil {
			return fmt.Errorf("token of %s: %w", u.name, err)
		}
		// Their calls share the fleet's connections.
		cl := dc.WithToken(token)
		if u.name == demoOperator {
			d.operator = cl
		} else {
			d.approver = cl
		}
	}
	_, token, err := a.Tokens.Create(ctx, "demo-release-team", identity.RoleReleaseEngineer)
	if err != nil {
		return fmt.Errorf("release team token: %w", err)
	}
	team, err := newReleaseTeam(d.operator.WithToken(token))
	if err != nil {
		return err
	}
	keys := filepath.Join(d.dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return err
	}
	for _, e := range team.engineers {
		if err := signing.WriteUnencryptedKeyFile(filepath.Join(keys, e.name+".key"), e.key); err != nil {
			return err
		}
	}
	if err := team.ceremony(ctx); err != nil {
		return err
	}
	artifact, err := demoArtifact(d.cfg.Seed)
	if err != nil {
		return err
	}
	// The builds' images, which the handsets' deltas apply to, and the
	// release's deltas from two of them.
	images := filepath.Join(d.dir, "images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		return err
	}
	d.images = map[string]string{}
	deltas := map[string][]byte{}
	for _, build := range demoBuilds {
		img, err := demoImage(d.cfg.Seed, build)
		if err != nil {
			return err
		}
		d.images[build] = filepath.Join(images, build+".img")
		if err := os.WriteFile(d.images[build], img, 0o600); err != nil {
			return err
		}
		if slices.Contains(demoIncrementalBuilds, build) {
			var b bytes.Buffer
			if err := delta.Make(ctx, bytes.NewReader(img), int64(len(img)), bytes.NewReader(artifact), int64(len(artifact)), &b, nil); err != nil {
				return fmt.Errorf("delta from %s: %w", build, err)
			}
			deltas[build] = b.Bytes()
		}
	}
	return team.release(ctx, artifact, deltas)
}

// demoPassword is 20 random letters and digits.
func demoPassword() (string, error) {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 20)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", err
		}
		b[i] = alphabet[n.Int64()]
	}
	return string(b), nil
}

// waitEnrolled waits until the fleet has enrolled, for at most a
// minute: the dashboard then shows the whole fleet exposed before the
// rollout starts, and the first offers do not queue behind enrollments.
func (d *demoRun) waitEnrolled(ctx context.Context) {
	deadline := time.Now().Add(time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) && d.fleet.Counts().Enrolled < int64(d.cfg.Handsets) {
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startRollout has demo-operator create and start the rollout through
// the admin API.
func (d *demoRun) startRollout(ctx context.Context) error {
	rate, minResults, retries := 0.08, int64(d.cfg.MinResults), 1
	window, soak := rollout.FormatDuration(10*time.Minute), rollout.FormatDuration(d.cfg.Soak)
	silence, silenceRate := rollout.FormatDuration(demoSilenceAfter), demoMaxSilenceRate
	ch, err := d.operator.CreateRollout(ctx, wire.RolloutRequest{Release: demoTarget, Stages: []float64{10, 25, 50, 100},
		MaxFailureRate: &rate, MinResults: &minResults, FailureWindow: &window, Soak: &soak, Retries: &retries,
		SilenceAfter: &silence, MaxSilenceRate: &silenceRate,
		Backoff: []string{rollout.FormatDuration(time.Minute)}, Salt: demoSalt(d.cfg.Seed),
		Reason: "privacy patch " + demoPatchID + ": 10% first, widening after each healthy soak"})
	if err != nil {
		return fmt.Errorf("demo: start the rollout: %w", err)
	}
	if ch.Pending != nil {
		// 10% needs no second person unless other rollouts of the patch
		// already reach past the four-eyes limit.
		return fmt.Errorf("demo: start the rollout: the start waits for approval %s", ch.Pending.ID)
	}
	d.rolloutID = ch.Rollout.ID
	return nil
}

// demoSalt is the rollout's salt for seed, so that a seed repeats a
// run's cohorts: written in letters, since a salt may hold few digits
// (an identifier could hide in a long number).
func demoSalt(seed uint64) string {
	b := []byte("demo-seed-")
	for {
		b = append(b, byte('a'+seed%26))
		if seed /= 26; seed == 0 {
			return string(b)
		}
	}
}

// watch logs the rollout's changes as they happen and a progress line
// every cfg.Progress, and has demo-approver approve a widening nobody
// decided within cfg.ApproveAfter.
func (d *demoRun) watch(ctx context.Context, log *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	rs := d.main.App.Rollouts
	var last string
	lastProgress := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r, err := rs.Get(ctx, d.rolloutID)
		if err != nil {
			if ctx.Err() == nil {
				log.Error("demo: read the rollout", slog.Any("error", err))
			}
			continue
		}
		held := heldModels(r)
		if now := fmt.Sprintf("%s %g %v %v", r.State, r.Percent(), held, r.Halt != nil); now != last {
			last = now
			attrs := []any{slog.String("state", string(r.State)), slog.Float64("stage_percent", r.Percent())}
			for _, h := range r.Holds {
				attrs = append(attrs, slog.String("held_"+h.Model, h.Reason))
			}
			if r.Halt != nil {
				attrs = append(attrs, slog.String("halted", r.Halt.Reason))
			}
			log.Info("demo: rollout "+d.rolloutID, attrs...)
		}
		d.approve(ctx, log)
		if time.Since(lastProgress) >= d.cfg.Progress {
			lastProgress = time.Now()
			c := d.fleet.Counts()
			log.Info("demo: progress", slog.String("state", string(r.State)), slog.Float64("stage_percent", r.Percent()),
				slog.Int64("enrolled", c.Enrolled), slog.Int64("offered", c.Offered),
				slog.Int64("installed", c.Installed), slog.Int64("failed", c.Failed), slog.Int64("checkins", c.CheckIns), slog.Int64("reports", c.Reports),
				slog.Int64("exposed", c.Enrolled-c.Installed),
				slog.Int64("silent", c.Silent), slog.String("held_models", strings.Join(held, ",")),
				slog.Int64("request_errors", c.ErrorCount()))
			if rep, err := d.operator.RolloutReport(ctx, d.rolloutID); err == nil && rep.Bytes.Full > 0 {
				log.Info("demo: payloads", slog.Int64("bytes_offered", rep.Bytes.Offered), slog.Int64("bytes_full_images", rep.Bytes.Full),
					slog.Int64("bytes_saved", rep.Bytes.Saved))
			}
		}
	}
}

func heldModels(r *rollout.Rollout) []string {
	var held []string
	for _, h := range r.Holds {
		held = append(held, h.Model)
	}
	slices.Sort(held)
	return held
}

// approve is the simulated second operator: a pending approval older
// than ApproveAfter is approved by demo-approver through the admin API,
// so the audit log shows it.
func (d *demoRun) approve(ctx context.Context, log *slog.Logger) {
	list, err := d.approver.Approvals(ctx, d.rolloutID)
	if err != nil {
		if ctx.Err() == nil {
			log.Error("demo: list approvals", slog.Any("error", err))
		}
		return
	}
	for _, a := range list {
		if a.State != string(rollout.ApprovalPending) || time.Since(a.RequestedAt) < d.cfg.ApproveAfter {
			continue
		}
		reason := fmt.Sprintf("demo: simulated second operator, nobody decided within %s", d.cfg.ApproveAfter)
		if _, err := d.approver.Approve(ctx, d.rolloutID, a.ID, reason); err != nil {
			// A conflict: someone decided it meanwhile.
			if ctx.Err() == nil && !client.HasCode(err, "conflict") {
				log.Error("demo: approve", slog.String("approval", a.ID), slog.Any("error", err))
			}
			continue
		}
		log.Info("demo: "+demoApprover+" approved the widening nobody decided", slog.String("approval", a.ID),
			slog.String("requested_by", a.RequestedBy), slog.Float64("to_percent", a.ToPercent))
	}
}
