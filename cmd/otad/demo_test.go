package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/web"
)

// TestDemo runs the demo in-process with a small fleet and short soaks,
// and checks what a newcomer should see: the rollout widening past 10%,
// PX-8 held with a reason while another model installs, the admin login,
// and a clean stop that leaves no fleet goroutine and no folder.
func TestDemo(t *testing.T) {
	cfg := defaultDemoConfig()
	cfg.Listen, cfg.Handsets, cfg.Seed = "127.0.0.1:0", 600, 42
	cfg.Soak, cfg.PollInterval = 4*time.Second, 2*time.Second
	cfg.InstallTime, cfg.ApproveAfter, cfg.Progress = 2*time.Second, 2*time.Second, 5*time.Second
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
		t.Logf("demo stdout:\n%s\ndemo log:\n%s", stdout.String(), logs.String())
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
	out := stdout.String()
	for _, want := range []string{d.url, "login: admin / " + d.password, "Next:"} {
		if !strings.Contains(out, want) {
			fail("stdout lacks %q", want)
		}
	}
	if !strings.Contains(logs.String(), "DEMO: development-only keys generated for this run in "+d.dir) {
		fail("no DEMO warning naming %s", d.dir)
	}

	// The admin logs in to the dashboard with the password printed, and
	// every page carries the demo banner.
	demoLogin(t, d.url, d.password, fail)
	u, _, err := d.main.DB.Users().UserByName(ctx, demoAdmin)
	if err != nil || !u.Can(identity.PermRolloutApprove) {
		fail("admin may not approve widenings: %+v, %v", u, err)
	}
	_, token, err := d.main.App.Tokens.CreateFor(ctx, u, "demo-test")
	if err != nil {
		fail("admin token: %v", err)
	}
	cl, err := client.New(d.url, client.WithBearer(token))
	if err != nil {
		fail("client: %v", err)
	}
	if who, err := cl.WhoAmI(ctx); err != nil || who.Name != demoAdmin {
		fail("whoami as admin: %+v, %v", who, err)
	}

	// Within a bounded time the rollout widens past 10%, PX-8 is held
	// with a reason and another model has installs. It takes about 20 s
	// (PX-8's failing installs alone take 12-18 s); the limit only bounds
	// a hang, for a loaded machine under -race is several times slower.
	deadline := time.Now().Add(5 * time.Minute)
	var rep server.RolloutReport
	for {
		got, err := cl.RolloutReport(ctx, d.rolloutID)
		if err != nil {
			fail("rollout report: %v", err)
		}
		rep = *got
		if done, _ := demoShows(&rep); done {
			break
		}
		if time.Now().After(deadline) {
			_, why := demoShows(&rep)
			fail("after 5 minutes: %s (report %+v)", why, rep)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if rep.State == rollout.RolloutPaused {
		fail("the rollout halted: %+v", rep.Halt)
	}
	// Past 50% the widening waits for a second person; nobody logged in
	// decides, so demo-approver approves it and the rollout reaches 100%.
	for {
		r, err := d.main.App.Rollouts.Get(ctx, d.rolloutID)
		if err != nil {
			fail("rollout: %v", err)
		}
		as, err := d.main.App.Rollouts.ListApprovals(ctx, d.rolloutID)
		if err != nil {
			fail("approvals: %v", err)
		}
		approved := slices.ContainsFunc(as, func(a *rollout.Approval) bool {
			return a.State == rollout.ApprovalApproved && a.DecidedBy == demoApprover && a.RequestedBy == demoOperator
		})
		if approved && r.Percent() == 100 {
			entries, err := d.main.App.Audit.ListAudit(ctx, audit.AuditQuery{Actor: demoApprover, Limit: 10})
			if err != nil || len(entries) == 0 {
				fail("no audit entry by %s after its approval: %+v, %v", demoApprover, entries, err)
			}
			t.Logf("audit: %s %s %s: %s", entries[0].Actor, entries[0].Action, entries[0].Object, entries[0].Detail)
			break
		}
		if time.Now().After(deadline) {
			fail("after 5 minutes: rollout at %g%% (%s), approvals %+v", r.Percent(), r.State, as)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The PX-9s the patch bricked go silent: a minute after they began
	// installing, PX-9 is held for silence, while the handsets on 7.4.0
	// and 7.4.1 took a delta instead of the full image.
	for {
		got, err := cl.RolloutReport(ctx, d.rolloutID)
		if err != nil {
			fail("rollout report: %v", err)
		}
		i := slices.IndexFunc(got.ByModel, func(m server.ModelCohort) bool { return m.Model == demoSilentModel })
		if i >= 0 && got.ByModel[i].Held {
			if reason := got.ByModel[i].HoldReason; !strings.Contains(reason, "silent for over 1m") {
				fail("%s held for %q; want silence", demoSilentModel, reason)
			}
			b := got.Bytes
			var incrementals int64
			for _, p := range b.ByPayload {
				if p.FromBuild != "" {
					incrementals += p.Offers
				}
			}
			if b.Saved <= 0 || b.Saved != b.Full-b.Offered || incrementals == 0 {
				fail("payloads %+v; want bytes saved by the deltas", b)
			}
			t.Logf("%s held: %s; payloads: %d bytes offered, %d as full images", demoSilentModel, got.ByModel[i].HoldReason, b.Offered, b.Full)
			break
		}
		if time.Now().After(deadline) {
			fail("after 5 minutes: %s not held for silence: %+v", demoSilentModel, got.Holds)
		}
		time.Sleep(time.Second)
	}

	cancel()
	select {
	case err := <-result:
		if err != nil {
			fail("demo ended with %v", err)
		}
	case <-time.After(2 * time.Minute):
		fail("demo still running 2 minutes after cancel")
	}
	select {
	case <-d.fleet.done:
	default:
		fail("the fleet is still running")
	}
	if _, err := os.Stat(d.dir); !errors.Is(err, os.ErrNotExist) {
		fail("demo folder %s still there: %v", d.dir, err)
	}
	if g := demoGoroutines(); g != "" {
		fail("demo goroutines left after the run returned:\n%s", g)
	}
	t.Logf("demo log:\n%s", logs.String())
}

// demoLogin posts the login form as admin and opens the overview with
// the session cookie.
func demoLogin(t *testing.T, base, password string, fail func(string, ...any)) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.PostForm(base+"/login", url.Values{"name": {demoAdmin}, "password": {password}, "next": {"/"}})
	if err != nil {
		fail("POST /login: %v", err)
	}
	resp.Body.Close()
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == web.CookieName && c.Value != "" {
			session = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || session == nil {
		fail("POST /login as admin: %d, session cookie %v; want 303 and a cookie", resp.StatusCode, session)
	}
	req, err := http.NewRequest("GET", base+"/", nil)
	if err != nil {
		fail("%v", err)
	}
	req.AddCookie(session)
	resp, err = hc.Do(req)
	if err != nil {
		fail("GET /: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), DemoBanner) {
		fail("GET / logged in: %d, banner %q shown: %t", resp.StatusCode, DemoBanner, strings.Contains(string(body), DemoBanner))
	}
}

// demoShows reports whether the report shows the rollout past 10%, PX-8
// held with a reason and another model with installs, and if not, what is
// missing.
func demoShows(rep *server.RolloutReport) (bool, string) {
	if rep.Percent <= 10 {
		return false, "rollout still at 10%"
	}
	var px8Held, othersInstalled bool
	for _, m := range rep.ByModel {
		switch {
		case m.Model == demoFailingModel:
			px8Held = m.Held && m.HoldReason != ""
		case m.Installed > 0:
			othersInstalled = true
		}
	}
	switch {
	case !px8Held:
		return false, "PX-8 not held with a reason"
	case !othersInstalled:
		return false, "no other model has installs"
	}
	return true, ""
}

// demoGoroutines returns the stacks of goroutines still running the
// demo's fleet (handsetsim's workers and verifier), scheduler or watcher, waiting briefly for those
// ending.
func demoGoroutines() string {
	var found string
	for range 20 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		found = ""
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "main.(*demoFleet)") || strings.Contains(g, "due.(*Scheduler)") ||
				strings.Contains(g, "handsetsim.") || strings.Contains(g, "main.(*demoRun)") {
				found += g + "\n\n"
			}
		}
		if found == "" {
			return ""
		}
		time.Sleep(100 * time.Millisecond)
	}
	return found
}

// TestDemoFlags checks the flags' help and refusals, and the message for
// an address already in use.
func TestDemoFlags(t *testing.T) {
	t.Run("help", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"demo", "--help"}, os.Getenv, &stdout, &stderr); code != exitOK {
			t.Fatalf("exit %d, want 0; stderr %s", code, stderr.String())
		}
		for _, f := range []string{"-listen", "-addr-file", "-handsets", "-keep", "-soak", "-seed"} {
			if !strings.Contains(stderr.String(), f) {
				t.Errorf("help lacks %s:\n%s", f, stderr.String())
			}
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no handsets", []string{"--handsets", "0"}, "--handsets 0"},
		{"soak too short", []string{"--soak", "10ms"}, "--soak 10ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"demo"}, tc.args...), os.Getenv, &stdout, &stderr)
			if code != exitConfig || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr.String(), exitConfig, tc.want)
			}
		})
	}
	t.Run("address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"demo", "--listen", ln.Addr().String()}, os.Getenv, &stdout, io.MultiWriter(&stderr))
		if code != exitConfig || !strings.Contains(stderr.String(), "already in use") || !strings.Contains(stderr.String(), "--listen 127.0.0.1:0") {
			t.Fatalf("exit %d, stderr %q; want %d, already in use, --listen 127.0.0.1:0", code, stderr.String(), exitConfig)
		}
	})
}
