// Command handset simulates a fleet of handsets against an otad server:
// the reference device agent (enrollment with a device key, check-ins,
// go-tuf verified updates, install reports) and a load generator.
//
//	handset --server URL --count N --model M --build B [flags]
//
// Without --duration it runs a rollout: every handset enrolls, checks in
// on the server's schedule (scaled by --poll-scale), and on an offer runs
// a go-tuf update, installs what verifies (or fails, with --fail-rate) and
// reports each step, until every handset has installed or failed. With
// --duration it enrolls the handsets, then checks them in as fast as
// --concurrency allows and prints throughput and latency.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/internal/handsetsim"
)

const synopsis = `Simulates handsets against an otad server. Each handset has its own ed25519
device key, starts unpatched with cloud messaging auto_enabled and number
encryption off, checks in on the server's schedule, and on an offer runs a
go-tuf update and installs only what verifies, reporting every step.

Without --duration it runs until every handset has installed the offered
patch or failed (or --timeout), then prints a summary. With --duration it is
a load generator: check-ins as fast as --concurrency allows, then
throughput, latency percentiles and errors by kind.`

// Exit codes: 2 for a configuration error the operator must fix, 1 for a
// run that did not complete.
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own
// arguments, environment and output. Errors end as one line on stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg := defaultConfig()
	fs := envflag.New("handset --server URL --count N --model M --build B [flags]", synopsis, stderr)
	cfg.register(fs)
	err := parseFlags(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "handset: %s\n", oneLine(err.Error()))
		return exitConfig
	}
	if err := simulate(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "handset: %s\n", oneLine(err.Error()))
		var ce *envflag.Error
		if errors.As(err, &ce) {
			return exitConfig
		}
		return exitFailed
	}
	return exitOK
}

// rolloutResult is what a run without --duration prints.
type rolloutResult struct {
	Mode           string                    `json:"mode"`
	Complete       bool                      `json:"complete"`
	Handsets       int                       `json:"handsets"`
	Enrolled       int64                     `json:"enrolled"`
	EnrolledNew    int64                     `json:"enrolled_new"`
	Reenrolled     int64                     `json:"reenrolled"`
	Installed      int                       `json:"installed"`
	Compliant      int                       `json:"compliant"`
	UpToDate       int                       `json:"up_to_date"`
	Failed         int                       `json:"failed"`
	FailedByCode   map[string]int            `json:"failed_by_code"`
	GaveUp         int                       `json:"gave_up"`
	Pending        int                       `json:"pending"`
	CheckIns       int64                     `json:"checkins"`
	CheckInLatency handsetsim.LatencySummary `json:"checkin_latency"`
	Reports        int64                     `json:"reports"`
	Duplicates     int64                     `json:"duplicate_reports"`
	Retries        int64                     `json:"report_retries"`
	Dropped        int64                     `json:"reports_dropped"`
	Errors         map[string]int64          `json:"errors"`
	// NoOffer counts check-ins answered without an offer, by reason.
	NoOffer        map[string]int64 `json:"no_offer"`
	Erased         *int64           `json:"erased,omitempty"`
	ElapsedSeconds float64          `json:"elapsed_seconds"`
}

func simulate(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	stderr = &lockedWriter{w: stderr}
	server, err := url.Parse(strings.TrimSuffix(cfg.Server, "/"))
	if err != nil {
		return settingError("server", err)
	}
	policy := newHostPolicy(server, splitList(cfg.AllowHosts))
	tr := newTransport(cfg.Concurrency)
	defer tr.CloseIdleConnections()
	// The http.Client's timeout bounds every API call; redirects stay
	// within the host policy.
	api, err := client.New(server.String(), client.WithUserAgent(userAgent),
		client.WithHTTPClient(&http.Client{Transport: tr, Timeout: cfg.RequestTimeout, CheckRedirect: policy.checkRedirect}))
	if err != nil {
		return settingError("server", err)
	}

	devs, extra, fresh, err := loadDevices(cfg.StateFile, cfg)
	if err != nil {
		return err
	}
	if cfg.StateFile != "" && fresh {
		// Keep the new keys before the first enrollment, so that a run
		// that dies half-way re-enrolls the same devices.
		if err := saveDevices(cfg.StateFile, server.String(), cfg, devs, extra); err != nil {
			return settingError("state-file", err)
		}
	}
	load := cfg.Duration > 0
	codes := cfg.failCodes()
	fc := handsetsim.Config{Client: api, EnrollmentSecret: cfg.EnrollmentSecret, Workers: cfg.Concurrency,
		AllowedHosts: policy.extra, UserAgent: userAgent, TUFMaxAge: cfg.TUFMaxAge,
		DownloadClient: &http.Client{Transport: tr, Timeout: cfg.DownloadTimeout, CheckRedirect: policy.checkRedirect},
		TimeScale:      cfg.PollScale, StopGrace: cfg.RequestTimeout, EnrollOnly: load,
		Say: func(line string) { fmt.Fprintf(stderr, "handset: %s\n", line) },
		Install: func(int, *handsetsim.Handset, int) handsetsim.Outcome {
			if cfg.FailRate > 0 && rand.Float64() < cfg.FailRate {
				return handsetsim.Outcome{Code: codes[rand.IntN(len(codes))], Message: "simulated install failure"}
			}
			return handsetsim.Outcome{}
		}}
	if !load {
		if fc.Root, err = trustedRoot(ctx, cfg, api, stderr); err != nil {
			return err
		}
		if fc.TUFDir, err = os.MkdirTemp("", "handset-tuf-"); err != nil {
			return fmt.Errorf("TUF cache: %w", err)
		}
		defer os.RemoveAll(fc.TUFDir)
	}
	fleet, err := handsetsim.New(fc, devs)
	if err != nil {
		return err
	}

	start := time.Now()
	stopProgress := progress(fleet, cfg.Progress, len(devs), stderr)
	var result any
	var runErr error
	if load {
		fleet.RunUntilSettled(ctx, cfg.Timeout)
		enrolled := 0
		for _, h := range fleet.Handsets() {
			if h.Token != "" {
				enrolled++
			}
		}
		enrollTime := time.Since(start)
		switch {
		case ctx.Err() != nil:
			runErr = errors.New("interrupted while enrolling")
		case enrolled == 0:
			runErr = fmt.Errorf("no handset enrolled%s", giveUpReason(fleet))
		default:
			if enrolled < len(devs) {
				fmt.Fprintf(stderr, "handset: warning: %d of %d handsets enrolled%s; load-testing with those\n",
					enrolled, len(devs), giveUpReason(fleet))
			}
			n, elapsed := fleet.Load(ctx, cfg.Duration)
			c := fleet.Counts()
			result = &loadResult{Mode: "load", Handsets: len(devs), Enrolled: enrolled, Concurrency: cfg.Concurrency,
				EnrollSeconds: round3(enrollTime.Seconds()), DurationSeconds: round3(elapsed.Seconds()), CheckIns: n,
				CheckInsPerSecond: round3(float64(n) / elapsed.Seconds()), Latency: c.CheckInLatency, Errors: c.Errors}
			if ctx.Err() != nil {
				runErr = errors.New("interrupted")
			}
		}
	} else {
		complete := fleet.RunUntilSettled(ctx, cfg.Timeout)
		r := newRolloutResult(fleet, complete, time.Since(start))
		result = r
		switch {
		case complete && r.GaveUp > 0:
			runErr = fmt.Errorf("%d of %d handsets gave up%s", r.GaveUp, r.Handsets, giveUpReason(fleet))
		case complete:
		case ctx.Err() != nil:
			runErr = fmt.Errorf("interrupted with %d of %d handsets pending", r.Pending, r.Handsets)
		default:
			runErr = fmt.Errorf("timed out after %v with %d of %d handsets neither installed nor failed (see --timeout, --poll-scale)",
				cfg.Timeout, r.Pending, r.Handsets)
		}
	}
	stopProgress()

	if cfg.Erase {
		n := fleet.Erase(context.WithoutCancel(ctx), max(2*cfg.RequestTimeout, time.Minute))
		switch r := result.(type) {
		case *rolloutResult:
			r.Erased = &n
		case *loadResult:
			r.Erased = &n
		}
	}
	if cfg.StateFile != "" {
		if err := saveDevices(cfg.StateFile, server.String(), cfg, fleet.Handsets(), extra); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	if result != nil {
		if err := printResult(stdout, cfg.JSON, result); err != nil {
			runErr = errors.Join(runErr, err)
		}
	}
	return runErr
}

func giveUpReason(f *handsetsim.Fleet) string {
	if v := f.GiveUpReason(); v != "" {
		return " (last error: " + v + ")"
	}
	return ""
}

// progress prints a line to stderr every period until stopped.
func progress(f *handsetsim.Fleet, period time.Duration, n int, stderr io.Writer) (stop func()) {
	if period <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c := f.Counts()
				fmt.Fprintf(stderr, "handset: %s: enrolled %d/%d, installed %d, failed %d, settled %d, check-ins %d, reports %d\n",
					time.Since(start).Round(time.Second), c.Enrolled, n, c.Installed, c.Failed,
					f.SettledCount(), c.CheckIns, c.Reports)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// trustedRoot is the root the handsets trust: --root, as shipped in
// firmware, or root v1 fetched from the server once (trust on first use).
func trustedRoot(ctx context.Context, cfg Config, api *client.Client, stderr io.Writer) ([]byte, error) {
	var root []byte
	if cfg.Root != "" {
		f, err := os.Open(cfg.Root)
		if err != nil {
			return nil, settingError("root", unwrapPathError(err))
		}
		defer f.Close()
		if root, err = io.ReadAll(io.LimitReader(f, 512<<10)); err != nil {
			return nil, settingError("root", err)
		}
	} else {
		var err error
		if root, err = api.FirstRoot(ctx); err != nil {
			if ce := client.AsError(err); ce != nil && ce.Status == http.StatusNotFound {
				err = fmt.Errorf("%w (has the root ceremony run?)", err)
			}
			return nil, fmt.Errorf("no --root given and fetching it failed: %w", err)
		}
		fmt.Fprintf(stderr, "handset: warning: no --root: trusting root v1 fetched from %s on first use; a real handset ships its root in firmware\n", api.BaseURL())
	}
	// Refuse a root that does not even verify itself now, rather than
	// have every handset fail on its first offer.
	if _, err := trustedmetadata.New(root); err != nil {
		if cfg.Root != "" {
			return nil, settingError("root", fmt.Errorf("%s: not a valid self-signed TUF root: %w", cfg.Root, err))
		}
		return nil, fmt.Errorf("root v1 from the server is not a valid self-signed TUF root: %w", err)
	}
	return root, nil
}

func newRolloutResult(f *handsetsim.Fleet, complete bool, elapsed time.Duration) *rolloutResult {
	c := f.Counts()
	devs := f.Handsets()
	r := &rolloutResult{Mode: "rollout", Complete: complete, Handsets: len(devs),
		Enrolled: c.Enrolled, EnrolledNew: c.EnrolledNew, Reenrolled: c.Reenrolled,
		FailedByCode: map[string]int{}, CheckIns: c.CheckIns, CheckInLatency: c.CheckInLatency,
		Reports: c.Reports, Duplicates: c.Duplicates, Retries: c.Retries, Dropped: c.Dropped,
		Errors: c.Errors, NoOffer: c.NoOffer, ElapsedSeconds: round3(elapsed.Seconds())}
	// The workers have stopped: the handsets can be read.
	for i := range devs {
		h := &devs[i]
		switch {
		case h.Result() == handsetsim.ResultInstalled:
			r.Installed++
		case h.Result() == handsetsim.ResultFailed:
			r.Failed++
			r.FailedByCode[h.FailCode()]++
		case h.Result() == handsetsim.ResultGaveUp:
			r.GaveUp++
		case h.Settled():
			r.UpToDate++
		}
		if !h.Settled() {
			r.Pending++
		}
		if h.Compliant() {
			r.Compliant++
		}
	}
	return r
}

func printResult(w io.Writer, asJSON bool, result any) error {
	if asJSON {
		return json.NewEncoder(w).Encode(result)
	}
	var b strings.Builder
	line := func(name, format string, args ...any) {
		fmt.Fprintf(&b, "%-12s %s\n", name, fmt.Sprintf(format, args...))
	}
	lat := func(l handsetsim.LatencySummary) string {
		return fmt.Sprintf("p50 %s  p95 %s  p99 %s  max %s", fmtMS(l.P50), fmtMS(l.P95), fmtMS(l.P99), fmtMS(l.Max))
	}
	errs := func(m map[string]int64) string {
		if len(m) == 0 {
			return "none"
		}
		var parts []string
		for _, k := range sortedKeys(m) {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
		return strings.Join(parts, ", ")
	}
	switch r := result.(type) {
	case *rolloutResult:
		line("handsets", "%d", r.Handsets)
		line("enrolled", "%d (%d new, %d re-enrolled)", r.Enrolled, r.EnrolledNew, r.Reenrolled)
		line("installed", "%d (compliant: %d run messaging opt-in with numbers encrypted)", r.Installed, r.Compliant)
		if r.UpToDate > 0 {
			line("up to date", "%d (patched in an earlier run, nothing offered)", r.UpToDate)
		}
		failed := fmt.Sprint(r.Failed)
		if r.Failed > 0 {
			var parts []string
			for _, k := range sortedKeys(r.FailedByCode) {
				parts = append(parts, fmt.Sprintf("%s %d", k, r.FailedByCode[k]))
			}
			failed += " (" + strings.Join(parts, ", ") + ")"
		}
		line("failed", "%s", failed)
		if r.GaveUp > 0 {
			line("gave up", "%d (the server refused enrollment or check-ins)", r.GaveUp)
		}
		line("pending", "%d", r.Pending)
		line("check-ins", "%d  %s", r.CheckIns, lat(r.CheckInLatency))
		line("reports", "%d (%d duplicates, %d retries, %d dropped)", r.Reports, r.Duplicates, r.Retries, r.Dropped)
		line("errors", "%s", errs(r.Errors))
		if len(r.NoOffer) > 0 {
			line("no offer", "%s", errs(r.NoOffer))
		}
		if r.Erased != nil {
			line("erased", "%d", *r.Erased)
		}
		line("elapsed", "%.3fs", r.ElapsedSeconds)
	case *loadResult:
		line("handsets", "%d (%d enrolled in %.3fs)", r.Handsets, r.Enrolled, r.EnrollSeconds)
		line("concurrency", "%d", r.Concurrency)
		line("duration", "%.3fs", r.DurationSeconds)
		line("check-ins", "%d (%.1f/s)", r.CheckIns, r.CheckInsPerSecond)
		line("latency", "%s", lat(r.Latency))
		line("errors", "%s", errs(r.Errors))
		if r.Erased != nil {
			line("erased", "%d", *r.Erased)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// fmtMS prints milliseconds readably: 0.412ms, 38.9ms, 3.41s.
func fmtMS(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.2fs", ms/1000)
}

// loadResult is what load generator mode prints.
type loadResult struct {
	Mode              string                    `json:"mode"`
	Handsets          int                       `json:"handsets"`
	Enrolled          int                       `json:"enrolled"`
	Concurrency       int                       `json:"concurrency"`
	EnrollSeconds     float64                   `json:"enroll_seconds"`
	DurationSeconds   float64                   `json:"duration_seconds"`
	CheckIns          int64                     `json:"checkins"`
	CheckInsPerSecond float64                   `json:"checkins_per_second"`
	Latency           handsetsim.LatencySummary `json:"latency"`
	Errors            map[string]int64          `json:"errors"`
	Erased            *int64                    `json:"erased,omitempty"`
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
