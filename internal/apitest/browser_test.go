package apitest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/web"
)

// The dashboard in a real browser (headless Chromium driven by
// chromedp) against a real server: the login form, the numbers a
// rollout page shows, an operator's pause through the confirmation step,
// what a viewer may not do, a cross-site form post and logout. The pages
// are plain forms; these tests click them as a person would.

// browserUser is a dashboard account of the test with its own browser
// context (its own cookie jar).
type browserUser struct {
	name, password string
	ctx            context.Context
}

// chromium is the Chromium binary of the browser tests
// (OTA_TEST_CHROMIUM); without one the test is skipped.
func chromium(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("OTA_TEST_CHROMIUM")
	if bin == "" {
		t.Skip("OTA_TEST_CHROMIUM not set; run ./scripts/test.sh to run the browser tests")
	}
	return bin
}

// startBrowser starts Chromium (OTA_TEST_CHROMIUM) for the test and
// returns a context with the browser running; each user's context is a
// child of it with a browser context of its own.
func startBrowser(tb testing.TB, bin string) context.Context {
	tb.Helper()
	// The whole test's budget: a hung browser fails it, not the run.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	tb.Cleanup(cancel)
	opts := []chromedp.ExecAllocatorOption{chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(tb.TempDir()), chromedp.WindowSize(1280, 900),
		// Nothing but the test's loopback servers: no updates, no sync,
		// no QUIC probes.
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true)}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tb.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	tb.Cleanup(cancelBrowser)
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		tb.Fatalf("start chromium %s: %v", bin, err)
	}
	return bctx
}

// newSession gives u a fresh browser context (no cookies shared with
// the other users) with one tab.
func newSession(tb testing.TB, browser context.Context, u *browserUser) {
	tb.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	tb.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		tb.Fatalf("browser context for %s: %v", u.name, err)
	}
	u.ctx = ctx
}

// login logs u in through the login form, typing the name and password
// and clicking the button, and returns the response of the page it
// lands on.
func login(tb testing.TB, base string, u *browserUser) *network.Response {
	tb.Helper()
	if err := chromedp.Do(u.ctx,
		chromedp.Navigate(base+"/login"),
		chromedp.SendKeys(chromedp.CSS(`form.login input[name="name"]`), u.name),
		chromedp.SendKeys(chromedp.CSS(`form.login input[name="password"]`), u.password),
	); err != nil {
		tb.Fatalf("login form for %s: %v", u.name, err)
	}
	resp, err := chromedp.RunResponse(u.ctx, chromedp.Click(chromedp.CSS(`form.login button[type="submit"]`)))
	if err != nil {
		tb.Fatalf("log in %s: %v", u.name, err)
	}
	return resp
}

// location is the URL of u's tab.
func location(tb testing.TB, u *browserUser) string {
	tb.Helper()
	loc, err := chromedp.Run(u.ctx, chromedp.Location())
	if err != nil {
		tb.Fatal(err)
	}
	return loc
}

// bodyText is the text of the page in u's tab.
func bodyText(tb testing.TB, u *browserUser) string {
	tb.Helper()
	txt, err := chromedp.Run(u.ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		tb.Fatal(err)
	}
	return txt
}

// evalJS evaluates a JavaScript expression (awaited when a promise) in
// u's tab and decodes its value.
func evalJS[T any](tb testing.TB, u *browserUser, expr string) T {
	tb.Helper()
	v, err := chromedp.Run(u.ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// screenshot takes a full-page PNG of u's tab and keeps it as name in
// OTA_TEST_ARTIFACTS, when set.
func screenshot(tb testing.TB, u *browserUser, name string) {
	tb.Helper()
	png, err := chromedp.Run(u.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.Fatalf("screenshot %s: %v", name, err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10<<10 {
		tb.Fatalf("screenshot %s: %d bytes, not a PNG of a page", name, len(png))
	}
	dir := os.Getenv("OTA_TEST_ARTIFACTS")
	if dir == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// sessionCookie is u's dashboard session cookie as the browser holds it.
func sessionCookie(tb testing.TB, base string, u *browserUser) *network.Cookie {
	tb.Helper()
	res, err := chromedp.Call(u.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{base + "/"}})
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range res.Cookies {
		if c.Name == web.CookieName {
			return c
		}
	}
	tb.Fatalf("%s's browser has no %s cookie: %+v", u.name, web.CookieName, res.Cookies)
	return nil
}

// getWithCookie GETs path from a plain Go client carrying the session
// cookie value, without following redirects.
func getWithCookie(tb testing.TB, base, path, value string) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: web.CookieName, Value: value})
	client := &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// actionControls counts the forms and buttons of rollout rolloutID's
// actions (pause, resume, abort, advance) on the page in u's tab.
func actionControls(tb testing.TB, u *browserUser, rolloutID string) int {
	tb.Helper()
	return evalJS[int](tb, u, fmt.Sprintf(`(() => {
		const prefix = %q;
		const forms = Array.from(document.querySelectorAll('form')).filter(f => {
			const p = new URL(f.action, location.href).pathname;
			return p.startsWith(prefix) && /^(pause|resume|abort|advance)$/.test(p.slice(prefix.length));
		});
		const buttons = document.querySelectorAll('button[class^="act-"], button[class*=" act-"]');
		return forms.length + buttons.length;
	})()`, "/rollouts/"+rolloutID+"/"))
}

// seedFleet enrolls n PX-7 handsets, checks them in and has those offered
// the release report: most installed, some failed, some downloading, the
// rest still pending. It returns how many of each it reported.
func seedFleet(tb testing.TB, env *apitest.Env, n int) (offered, installed, failed, downloading int) {
	tb.Helper()
	hs := enrollFleet(tb, env, n, "PX-7", "7.2.0")
	answers := checkInAll(tb, hs)
	at := time.Now().UTC().Add(-time.Minute)
	var patched []*handset
	for i, h := range hs {
		a := answers[h.id]
		if a.Offer == nil {
			continue
		}
		offered++
		var state, code string
		switch {
		case offered%10 == 9:
			continue // pending: offered, nothing reported yet
		case offered%10 == 8:
			state, downloading = handsets.StateDownloading, downloading+1
		case offered%30 == 0:
			state, code, failed = handsets.StateFailed, "E_VERIFY", failed+1
		default:
			state, installed = handsets.StateInstalled, installed+1
		}
		body := wire.ReportBody{ReportID: fmt.Sprintf("b-%d-%s", i, state), PatchID: a.Offer.PatchID, RolloutID: a.Offer.RolloutID,
			Target: a.Offer.Target, State: state, ErrorCode: code, At: &at}
		if c := call(tb, "POST", env.URL+"/api/v1/reports", h.token, body, nil); c != http.StatusCreated {
			tb.Fatalf("report %s of %s: %d", state, h.id, c)
		}
		if state == handsets.StateInstalled {
			// It runs the patch now and says so at its next check-in: the
			// overview's compliance moves.
			tr := true
			h.body.InstalledPatches, h.body.Build = []string{a.Offer.PatchID}, a.Offer.Custom.InstallsBuild
			h.body.NumberEncryption, h.body.CloudMessaging = &tr, handsets.MessagingOptedOut
			patched = append(patched, h)
		}
	}
	checkInAll(tb, patched)
	return offered, installed, failed, downloading
}

// TestDashboardInBrowser drives the dashboard with headless Chromium:
// logins through the form, a rollout page whose numbers are the
// report's, a pause with a reason through the confirmation page and its
// audit entry, a viewer without action buttons whose forged post is
// refused, cross-site posts refused, and a logout that ends the session
// on the server.
func TestDashboardInBrowser(t *testing.T) {
	bin := chromium(t)
	env := apitest.Start(t, apitest.Options{})
	ctx := t.Context()
	users := map[string]*browserUser{}
	for _, u := range []struct{ name, role string }{
		{"viewer-v", identity.RoleViewer}, {"op-a", identity.RoleOperator}, {"op-b", identity.RoleOperator}, {"admin-z", identity.RoleAdmin},
	} {
		pw := "pw-of-" + u.name + "-long-enough"
		if _, err := env.App.Users.Create(ctx, u.name, u.role, pw, false); err != nil {
			t.Fatalf("create user %s: %v", u.name, err)
		}
		users[u.name] = &browserUser{name: u.name, password: pw}
	}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 512), es...)
	ro := env.StartRollout(t, patchPath, 50, 100)
	offered, installed, failed, downloading := seedFleet(t, env, 300)
	t.Logf("rollout %s: %d offered, %d installed, %d failed, %d downloading", ro.ID, offered, installed, failed, downloading)
	if installed == 0 || failed == 0 || downloading == 0 || offered-installed-failed-downloading == 0 {
		t.Fatalf("the fleet should show every kind of number: %d offered, %d installed, %d failed, %d downloading",
			offered, installed, failed, downloading)
	}

	browser := startBrowser(t, bin)
	for _, u := range users {
		newSession(t, browser, u)
	}
	opA, opB, viewer, admin := users["op-a"], users["op-b"], users["viewer-v"], users["admin-z"]
	rolloutURL := env.URL + "/rollouts/" + ro.ID
	pauseReason := "PX-7 E_VERIFY spike, checking " + strconv.FormatInt(time.Now().UnixNano()%100000, 10)

	t.Run("login lands on the overview", func(t *testing.T) {
		resp := login(t, env.URL, opA)
		if resp.Status != http.StatusOK || resp.URL != env.URL+"/" {
			t.Fatalf("after the login form: %d at %s, want 200 at %s/", resp.Status, resp.URL, env.URL)
		}
		who, err := chromedp.Run(opA.ctx, chromedp.Text(chromedp.CSS(`form.logout span`)))
		if err != nil || !strings.Contains(who, "op-a (operator)") {
			t.Fatalf("overview header says %q (%v), want op-a (operator)", who, err)
		}
		if n := evalJS[int](t, opA, fmt.Sprintf(`document.querySelectorAll('a[href="/rollouts/%s"]').length`, ro.ID)); n == 0 {
			t.Errorf("the overview does not link the running rollout %s", ro.ID)
		}
		screenshot(t, opA, "overview.png")
	})

	t.Run("rollout page shows the report's numbers", func(t *testing.T) {
		if err := chromedp.Do(opA.ctx, chromedp.Navigate(rolloutURL)); err != nil {
			t.Fatal(err)
		}
		type shown struct {
			State  string            `json:"state"`
			Counts map[string]string `json:"counts"`
		}
		page := evalJS[shown](t, opA, `({
			state: document.querySelector('[data-rollout-state]').textContent.trim(),
			counts: Object.fromEntries(Array.from(document.querySelectorAll('[data-count]'),
				e => [e.dataset.count, e.textContent.trim()])),
		})`)
		var rep server.RolloutReport
		if err := env.Do("GET", "/rollouts/"+ro.ID+"/report", nil, &rep); err != nil {
			t.Fatal(err)
		}
		raw, err := json.Marshal(rep.CohortCounts)
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]int64
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatal(err)
		}
		for name, w := range want {
			text, ok := page.Counts[name]
			if !ok {
				t.Errorf("the page shows no %s count (data-count=%q)", name, name)
				continue
			}
			got, err := strconv.ParseInt(strings.ReplaceAll(text, ",", ""), 10, 64)
			if err != nil || got != w {
				t.Errorf("%s: page shows %q, report says %d", name, text, w)
			}
		}
		if rep.Offered != int64(offered) || rep.Installed != int64(installed) || rep.Failed != int64(failed) || rep.Downloading != int64(downloading) {
			t.Errorf("report %+v, want %d offered, %d installed, %d failed, %d downloading", rep.CohortCounts, offered, installed, failed, downloading)
		}
		if page.State != string(rollout.RolloutRunning) || rep.State != rollout.RolloutRunning {
			t.Errorf("state: page %q, report %q, want running", page.State, rep.State)
		}
		screenshot(t, opA, "rollout.png")
	})

	t.Run("operator pauses with a reason", func(t *testing.T) {
		if err := chromedp.Do(opA.ctx, chromedp.Navigate(rolloutURL)); err != nil {
			t.Fatal(err)
		}
		if n := actionControls(t, opA, ro.ID); n == 0 {
			t.Fatal("an operator's page of a running rollout has no action buttons")
		}
		pause := `form[action="/rollouts/` + ro.ID + `/pause"]`
		if err := chromedp.Do(opA.ctx, chromedp.SendKeys(chromedp.CSS(pause+` input[name="reason"]`), pauseReason)); err != nil {
			t.Fatal(err)
		}
		resp, err := chromedp.RunResponse(opA.ctx, chromedp.Click(chromedp.CSS(pause+` button[type="submit"]`)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK || !strings.Contains(bodyText(t, opA), pauseReason) {
			t.Fatalf("pause button: %d, page %q; want the confirmation page quoting the reason", resp.Status, bodyText(t, opA))
		}
		if got := getRollout(t, env, ro.ID); got.State != string(rollout.RolloutRunning) {
			t.Fatalf("before the confirmation the rollout is %s, want still running", got.State)
		}
		resp, err = chromedp.RunResponse(opA.ctx, chromedp.Click(chromedp.CSS(`form.confirm button[type="submit"]`)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK || resp.URL != rolloutURL {
			t.Fatalf("confirm: %d at %s, want back on %s", resp.Status, resp.URL, rolloutURL)
		}
		if got := getRollout(t, env, ro.ID); got.State != string(rollout.RolloutPaused) {
			t.Fatalf("after the confirmed pause the API says %s, want paused", got.State)
		}
		if st := evalJS[string](t, opA, `document.querySelector('[data-rollout-state]').textContent.trim()`); st != "paused" {
			t.Errorf("the rollout page shows state %q, want paused", st)
		}

		if err := chromedp.Do(opA.ctx, chromedp.Navigate(env.URL+"/audit")); err != nil {
			t.Fatal(err)
		}
		rows := evalJS[[][]string](t, opA, `Array.from(document.querySelectorAll('main table tbody tr'),
			tr => Array.from(tr.cells, td => td.textContent.trim()))`)
		found := false
		for _, r := range rows { // #, When, Who, Action, Object, Reason, Detail
			if len(r) >= 6 && r[2] == "op-a" && r[3] == "rollout.pause" && r[4] == ro.ID && r[5] == pauseReason {
				found = true
			}
		}
		if !found {
			t.Errorf("the audit page has no entry by op-a of rollout.pause of %s with reason %q; rows %q", ro.ID, pauseReason, rows)
		}
	})

	t.Run("viewer sees no actions and a forged post is refused", func(t *testing.T) {
		if resp := login(t, env.URL, viewer); resp.Status != http.StatusOK || resp.URL != env.URL+"/" {
			t.Fatalf("viewer login: %d at %s", resp.Status, resp.URL)
		}
		if err := chromedp.Do(viewer.ctx, chromedp.Navigate(rolloutURL)); err != nil {
			t.Fatal(err)
		}
		if n := actionControls(t, viewer, ro.ID); n != 0 {
			t.Errorf("the viewer's rollout page has %d action forms and buttons, want none", n)
		}
		// The control: an admin on the same paused rollout sees resume and
		// abort, so a zero above is not a page that lost its buttons.
		if resp := login(t, env.URL, admin); resp.Status != http.StatusOK {
			t.Fatalf("admin login: %d", resp.Status)
		}
		if err := chromedp.Do(admin.ctx, chromedp.Navigate(rolloutURL)); err != nil {
			t.Fatal(err)
		}
		if n := actionControls(t, admin, ro.ID); n == 0 {
			t.Errorf("the admin's page of the paused rollout has no action buttons")
		}

		type answer struct {
			CSRF   string `json:"csrf"`
			Status int    `json:"status"`
			Text   string `json:"text"`
		}
		// The viewer's page has no action form; its CSRF token is in the
		// logout form. A post with the right token is refused by role.
		got := evalJS[answer](t, viewer, fmt.Sprintf(`(async () => {
			const csrf = document.querySelector('form.logout input[name="csrf"]').value;
			const body = new URLSearchParams({csrf: csrf, reason: "forged by a viewer", confirm: "yes"});
			const res = await fetch("/rollouts/%s/resume", {method: "POST", body: body, credentials: "same-origin", redirect: "manual"});
			return {csrf: csrf, status: res.status, text: await res.text()};
		})()`, ro.ID))
		if got.CSRF == "" {
			t.Fatal("the viewer's page carries no CSRF token")
		}
		if got.Status != http.StatusForbidden || !strings.Contains(got.Text, "Your role (viewer)") {
			t.Errorf("viewer's resume post: %d %q, want 403 naming the viewer's role", got.Status, got.Text)
		}
		if r := getRollout(t, env, ro.ID); r.State != string(rollout.RolloutPaused) {
			t.Errorf("after the viewer's post the rollout is %s, want still paused", r.State)
		}
	})

	t.Run("cross-site post is refused", func(t *testing.T) {
		attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, `<!doctype html><title>prize</title>
<form id="f" method="post" action="%s/resume">
<input type="hidden" name="reason" value="attacker resumes it">
<input type="hidden" name="confirm" value="yes">
<input type="hidden" name="csrf" value="">
<button id="go" type="submit">Claim your prize</button>
</form>`, rolloutURL)
		}))
		defer attacker.Close()
		for _, tc := range []struct{ name, page string }{
			// Another port of 127.0.0.1 is the same site (the session
			// cookie, SameSite=Strict, goes along) but another origin.
			{"same site, other origin", attacker.URL + "/"},
			// localhost is another site than 127.0.0.1: no cookie either.
			{"other site", strings.Replace(attacker.URL, "127.0.0.1", "localhost", 1) + "/"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := chromedp.Do(opA.ctx, chromedp.Navigate(tc.page)); err != nil {
					t.Fatal(err)
				}
				resp, err := chromedp.RunResponse(opA.ctx, chromedp.Click(chromedp.CSS("#go")))
				if err != nil {
					t.Fatal(err)
				}
				// The cross-origin check refuses it, before the session
				// and CSRF checks would.
				if txt := bodyText(t, opA); resp.Status != http.StatusForbidden || resp.URL != rolloutURL+"/resume" ||
					!strings.Contains(txt, "came from another site") {
					t.Errorf("attacker's form post from %s: %d at %s, page %q; want 403 refusing another site's request",
						tc.page, resp.Status, resp.URL, txt)
				}
				if r := getRollout(t, env, ro.ID); r.State != string(rollout.RolloutPaused) {
					t.Fatalf("after the attacker's post the rollout is %s, want still paused", r.State)
				}
			})
		}
	})

	t.Run("logout ends the session", func(t *testing.T) {
		if resp := login(t, env.URL, opB); resp.Status != http.StatusOK {
			t.Fatalf("op-b login: %d", resp.Status)
		}
		old := sessionCookie(t, env.URL, opB)
		if !old.HTTPOnly || old.SameSite != network.CookieSameSiteStrict {
			t.Errorf("session cookie %+v, want HttpOnly and SameSite=Strict", old)
		}
		// The control: the cookie works before the logout.
		if resp := getWithCookie(t, env.URL, "/", old.Value); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET / with op-b's cookie before logout: %d, want 200", resp.StatusCode)
		}
		resp, err := chromedp.RunResponse(opB.ctx, chromedp.Click(chromedp.CSS(`form.logout button[type="submit"]`)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.URL != env.URL+"/login" {
			t.Errorf("after logout the browser is at %s, want %s/login", resp.URL, env.URL)
		}
		after := getWithCookie(t, env.URL, "/", old.Value)
		if loc := after.Header.Get("Location"); after.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/login") {
			t.Errorf("GET / with the logged-out cookie: %d to %q, want a redirect to /login", after.StatusCode, loc)
		}
		// Put the old cookie back into the browser: the server ended the
		// session, so the browser still lands on the login page.
		if _, err := chromedp.Call(opB.ctx, network.SetCookie, network.SetCookieParams{Name: old.Name, Value: old.Value,
			URL: env.URL + "/", HTTPOnly: &old.HTTPOnly, SameSite: old.SameSite}); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(opB.ctx, chromedp.Navigate(env.URL+"/")); err != nil {
			t.Fatal(err)
		}
		if loc := location(t, opB); !strings.HasPrefix(loc, env.URL+"/login") {
			t.Errorf("after logout, / in the browser is %s, want the login page", loc)
		}
		// op-a's session, in its own browser context, lives on.
		if err := chromedp.Do(opA.ctx, chromedp.Navigate(env.URL+"/")); err != nil {
			t.Fatal(err)
		}
		if loc := location(t, opA); loc != env.URL+"/" {
			t.Errorf("op-a after op-b's logout: at %s, want still on the overview", loc)
		}
	})
}
