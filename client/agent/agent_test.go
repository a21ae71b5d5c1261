package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server/api/wire"
)

// fakeAPI is the handset API with scripted answers: each call takes the
// next answer of its route (the last one repeats).
type fakeAPI struct {
	mu      sync.Mutex
	answers map[string][]answer
	calls   map[string]int
	reports []wire.ReportBody
}

type answer struct {
	status     int
	retryAfter string
	body       string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	route := r.Method + " " + r.URL.Path
	if route == "POST /api/v1/reports" {
		var b wire.ReportBody
		data, _ := io.ReadAll(r.Body)
		json.Unmarshal(data, &b)
		f.reports = append(f.reports, b)
	}
	as := f.answers[route]
	n := f.calls[route]
	f.calls[route]++
	if len(as) == 0 {
		http.NotFound(w, r)
		return
	}
	a := as[min(n, len(as)-1)]
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (f *fakeAPI) count(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[route]
}

const (
	enrollRoute  = "POST /api/v1/devices"
	checkInRoute = "POST /api/v1/checkin"
	reportRoute  = "POST /api/v1/reports"
)

// testRoot passes the agent's first-start check; these tests never get
// as far as TUF.
var testRoot = []byte(`{"signed":{"_type":"root"},"signatures":[]}`)

func newTestAgent(t *testing.T, api *fakeAPI, now func() time.Time) *Agent {
	t.Helper()
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL, client.WithClock(now))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Dir: t.TempDir(), Client: c, Root: testRoot, Now: now, Logger: slog.New(slog.DiscardHandler),
		Device:    Device{Model: "PX-7", Build: "7.4.0", Channel: "stable"},
		Installer: InstallerFunc(func(context.Context, *Update) error { return nil }),
		// Minutes, so that a test tells the backoff from a Retry-After.
		Backoff: func(n int) time.Duration { return time.Duration(n) * time.Minute }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

const enrolled = `{"device_id":"dev-1","token":"otadev_x","poll_after_seconds":0}`

// TestStepObeysServerWaits: the wait before the next step is the
// server's poll_after_seconds after a check-in (at least MinPoll), its
// Retry-After (seconds, or a date read on the injected clock) after a
// 429 or 503, and the backoff, growing with failures in a row, when the
// server names no time.
func TestStepObeysServerWaits(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	api := &fakeAPI{calls: map[string]int{}, answers: map[string][]answer{
		enrollRoute: {{201, "", enrolled}},
		checkInRoute: {
			{200, "", `{"poll_after_seconds":3600,"offer":null}`},
			{429, "7", `{"error":{"code":"rate_limited","message":"slow down"}}`},
			{503, "", `{"error":{"code":"unavailable","message":"db"}}`},
			{503, "", `{"error":{"code":"unavailable","message":"db"}}`},
			{200, "", `{"poll_after_seconds":0,"offer":null}`},
			{503, now.Add(30 * time.Second).Format(http.TimeFormat), `{"error":{"code":"unavailable","message":"db"}}`},
			{503, "", `{"error":{"code":"unavailable","message":"db"}}`},
		},
	}}
	a := newTestAgent(t, api, clock)
	for i, want := range []struct {
		wait time.Duration
		err  bool
		idle bool
	}{
		{time.Hour, false, true},        // poll_after_seconds
		{7 * time.Second, true, false},  // Retry-After: 7
		{2 * time.Minute, true, false},  // backoff, second failure in a row
		{3 * time.Minute, true, false},  // third
		{MinPoll, false, true},          // poll_after_seconds 0 is not a tight loop
		{30 * time.Second, true, false}, // Retry-After as a date
		{2 * time.Minute, true, false},  // backoff: the second failure in a row, the first had a Retry-After
	} {
		wait, err := a.Step(context.Background())
		if wait != want.wait || (err != nil) != want.err || a.Idle() != want.idle {
			t.Errorf("step %d: wait %v, err %v, idle %v; want %v, error %v, idle %v", i+1, wait, err, a.Idle(), want.wait, want.err, want.idle)
		}
	}
	if n := api.count(enrollRoute); n != 1 {
		t.Errorf("enrolled %d times, want once", n)
	}
}

// TestStepSendsOutboxFirst: stored reports go before the check-in; while
// the server refuses them for now, the agent waits as the server says
// and does not check in; once they are acknowledged it checks in.
func TestStepSendsOutboxFirst(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	api := &fakeAPI{calls: map[string]int{}, answers: map[string][]answer{
		enrollRoute:  {{201, "", enrolled}},
		reportRoute:  {{503, "20", `{"error":{"code":"unavailable","message":"db"}}`}, {201, "", `{"duplicate":false}`}},
		checkInRoute: {{200, "", `{"poll_after_seconds":600,"offer":null}`}},
	}}
	a := newTestAgent(t, api, func() time.Time { return now })
	if err := a.outbox.Add(report("r-1", "installed")); err != nil {
		t.Fatal(err)
	}
	wait, err := a.Step(context.Background())
	if err == nil || wait != 20*time.Second || api.count(checkInRoute) != 0 {
		t.Fatalf("step 1: wait %v, %v, %d check-ins; want the Retry-After of 20s and no check-in", wait, err, api.count(checkInRoute))
	}
	if n, _ := a.outbox.Len(); n != 1 {
		t.Fatalf("%d reports stored after the 503, want 1", n)
	}
	wait, err = a.Step(context.Background())
	if err != nil || wait != 10*time.Minute || api.count(checkInRoute) != 1 {
		t.Fatalf("step 2: wait %v, %v, %d check-ins; want the check-in's 10 minutes", wait, err, api.count(checkInRoute))
	}
	if len(api.reports) != 2 || api.reports[0].ReportID != api.reports[1].ReportID || !api.reports[0].At.Equal(*api.reports[1].At) {
		t.Errorf("sent %+v, want the same report twice", api.reports)
	}
	if n, _ := a.outbox.Len(); n != 0 {
		t.Errorf("%d reports stored after the acknowledgment, want 0", n)
	}
}

// TestStepEnrollsAgainAfter401: a refused token (the device was erased,
// the server's database replaced) makes the next step enroll again with
// the same device key.
func TestStepEnrollsAgainAfter401(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	api := &fakeAPI{calls: map[string]int{}, answers: map[string][]answer{
		enrollRoute: {{201, "", enrolled}},
		checkInRoute: {{401, "", `{"error":{"code":"unauthorized","message":"unknown token"}}`},
			{200, "", `{"poll_after_seconds":60,"offer":null}`}},
	}}
	a := newTestAgent(t, api, func() time.Time { return now })
	if _, err := a.Step(context.Background()); err == nil {
		t.Fatal("step 1: no error for a 401")
	}
	key := a.key
	if wait, err := a.Step(context.Background()); err != nil || wait != time.Minute {
		t.Fatalf("step 2: %v, %v; want a check-in after enrolling again", wait, err)
	}
	if n := api.count(enrollRoute); n != 2 || !key.Equal(a.key) {
		t.Errorf("enrolled %d times (same key %v), want twice with the same key", n, key.Equal(a.key))
	}
}

// TestOfferCannotNameFiles: an offer's sha256 is the server's word; a
// malicious or broken one ("../state.json") names no file the agent
// writes or removes. The offer fails verification and is reported
// failed, and the agent's state survives.
func TestOfferCannotNameFiles(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	api := &fakeAPI{calls: map[string]int{}, answers: map[string][]answer{
		enrollRoute: {{201, "", enrolled}},
		checkInRoute: {{200, "", `{"poll_after_seconds":60,"offer":{"target":"px7/u.bin","length":10,"sha256":"../state.json",` +
			`"patch_id":"CM-2026-001","rollout_id":"r1","metadata_url":"/tuf/","targets_url":"/targets/","custom":{}}}`}},
		reportRoute: {{201, "", `{"duplicate":false}`}},
	}}
	a := newTestAgent(t, api, func() time.Time { return now })
	a.Step(context.Background()) // check in: the offer
	a.Step(context.Background()) // try it: it fails
	if _, err := os.Stat(filepath.Join(a.cfg.Dir, "state.json")); err != nil {
		t.Fatalf("state.json after the failed offer: %v", err)
	}
	a.Step(context.Background()) // report
	var states []string
	for _, r := range api.reports {
		states = append(states, r.State+":"+r.ErrorCode)
	}
	if got := strings.Join(states, ","); got != "downloading:,failed:E_TUF_VERIFY" {
		t.Errorf("reports %s, want downloading then failed with E_TUF_VERIFY", got)
	}
}

// TestReportMessage: a message becomes one line of at most 256 bytes,
// cut on a character, as the server's report rule wants.
func TestReportMessage(t *testing.T) {
	long := strings.Repeat("é", 300)
	got := ReportMessage("a\nb\t" + long)
	if len(got) > 256 || strings.ContainsAny(got, "\n\t") || !strings.HasPrefix(got, "a b ") || !utf8.ValidString(got) {
		t.Errorf("ReportMessage = %q (%d bytes)", got, len(got))
	}
}
