package app_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
)

// clock is a fake clock tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer is a log destination the background jobs and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// replica builds an App on env's database, blob store and online key, as a
// second otad of the same deployment, and returns it with a channel that
// receives after each pass of its background jobs.
func replica(tb testing.TB, env *apitest.Env, cfg app.Config) (*app.App, <-chan struct{}) {
	tb.Helper()
	passes := make(chan struct{}, 100)
	cfg.DB, cfg.Blobs, cfg.Online = env.DB, env.Blobs, env.Online
	cfg.AfterPass = func() {
		select {
		case passes <- struct{}{}:
		default:
		}
	}
	a, err := app.New(tb.Context(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return a, passes
}

func waitPass(tb testing.TB, passes <-chan struct{}) {
	tb.Helper()
	select {
	case <-passes:
	case <-time.After(30 * time.Second):
		tb.Fatal("no pass of the background jobs within 30 s")
	}
}

func timestampVersion(tb testing.TB, repo *manifests.Repository) int64 {
	tb.Helper()
	st, err := repo.Status(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range st.Roles {
		if r.Role == "timestamp" {
			return r.Version
		}
	}
	tb.Fatal("no timestamp published")
	return 0
}

// TestJobsResignAndPrune runs the background jobs once past half the
// timestamp's life and the report retention: they re-sign the timestamp
// and delete the report past retention, and keep the recent one.
func TestJobsResignAndPrune(t *testing.T) {
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	env.Ceremony(t, apitest.NewEngineers(t, 1), 1)
	before := timestampVersion(t, env.Repo)

	ctx := t.Context()
	enrollment, err := env.Fleet.Enroll(ctx, server.EnrollRequest{Model: "Pixel-8", Build: "7.4.0", Channel: "stable"})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(manifests.DefaultExpiry().Timestamp/2 + time.Minute)
	retention := 30 * 24 * time.Hour
	for _, r := range []struct {
		id  string
		age time.Duration
	}{{"old", retention + time.Hour}, {"recent", retention - time.Hour}} {
		rep := handsets.Report{ID: r.id, DeviceID: enrollment.DeviceID, PatchID: "SEC-1", Target: "patches/sec-1.zip",
			State: handsets.StateDownloading, At: clk.Now().Add(-r.age), ReceivedAt: clk.Now().Add(-r.age)}
		if _, err := env.DB.Devices().AddReport(ctx, rep); err != nil {
			t.Fatal(err)
		}
	}

	logs := &syncBuffer{}
	a, passes := replica(t, env, app.Config{Now: clk.Now, ReportRetention: retention,
		Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	a.Run(ctx)
	defer a.Close()
	waitPass(t, passes)

	if got := timestampVersion(t, a.Repo); got != before+1 {
		t.Errorf("timestamp v%d after a pass past half its life, want v%d (re-signed)", got, before+1)
	}
	reports, err := env.DB.Devices().Reports(ctx, enrollment.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range reports {
		ids = append(ids, r.ID)
	}
	if strings.Join(ids, ",") != "recent" {
		t.Errorf("reports after a pass: %v, want only [recent]", ids)
	}
	if !strings.Contains(logs.String(), `"msg":"deleted reports past retention","reports":1`) {
		t.Errorf("no log of the deleted report; logs:\n%s", logs)
	}
}

// TestCloseStopsTheJobs runs the jobs on a short interval and checks
// that Close stops them and waits for them to end.
func TestCloseStopsTheJobs(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	a, passes := replica(t, env, app.Config{RefreshInterval: time.Millisecond})
	a.Run(t.Context())
	waitPass(t, passes)
	waitPass(t, passes) // the ticker drives further passes
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return: the background jobs did not stop")
	}
}

// TestApitestRunsTheJobs checks that apitest.Start runs the background
// jobs, as otad does: with a short refresh interval the timestamp is
// re-signed without the test calling Resign.
func TestApitestRunsTheJobs(t *testing.T) {
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now, RefreshInterval: 10 * time.Millisecond})
	env.Ceremony(t, apitest.NewEngineers(t, 1), 1)
	before := timestampVersion(t, env.Repo)
	clk.Advance(manifests.DefaultExpiry().Timestamp/2 + time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for timestampVersion(t, env.Repo) == before {
		if time.Now().After(deadline) {
			t.Fatalf("timestamp still v%d 30 s after moving past half its life: the background jobs do not run", before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
