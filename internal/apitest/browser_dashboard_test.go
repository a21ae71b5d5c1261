package apitest_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// The dashboard as the only view a release manager needs, in a real
// browser: what changes on the server shows on an open page without a
// reload (an approval request, actions that become available), a
// second person approves it right there, stages are counted as people
// count them, and a rollout completed with a held model stays on the
// overview as unfinished. Then every page at a desktop's and a phone's
// width, with no sideways scrolling and a screenshot of each.

// liveEvery is how often the pages refresh in these tests.
const liveEvery = 300 * time.Millisecond

// waitJS polls the boolean expression in u's tab until it holds, failing
// after timeout with what explain returns.
func waitJS(tb testing.TB, u *browserUser, expr string, timeout time.Duration, explain func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if evalJS[bool](tb, u, expr) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s, still not %s: %s", timeout, expr, explain())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// markPage sets a flag on u's page that a reload would clear.
func markPage(tb testing.TB, u *browserUser) {
	tb.Helper()
	evalJS[bool](tb, u, `(window.__notReloaded = true)`)
}

// notReloaded reports whether u's page still carries markPage's flag.
func notReloaded(tb testing.TB, u *browserUser) bool {
	tb.Helper()
	return evalJS[bool](tb, u, `window.__notReloaded === true`)
}

func navigate(tb testing.TB, u *browserUser, url string) {
	tb.Helper()
	if err := chromedp.Do(u.ctx, chromedp.Navigate(url)); err != nil {
		tb.Fatalf("%s opens %s: %v", u.name, url, err)
	}
}

func TestDashboardLive(t *testing.T) {
	bin := chromium(t)
	env := apitest.Start(t, apitest.Options{LiveEvery: liveEvery})
	ctx := t.Context()
	users := map[string]*browserUser{}
	for _, u := range []struct{ name, role string }{{"lead-b", identity.RoleOperator}, {"watch-v", identity.RoleViewer}} {
		pw := "pw-of-" + u.name + "-long-enough"
		if _, err := env.App.Users.Create(ctx, u.name, u.role, pw, false); err != nil {
			t.Fatalf("create user %s: %v", u.name, err)
		}
		users[u.name] = &browserUser{name: u.name, password: pw}
	}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	custom := apitest.PatchCustom()
	custom.Models = []string{"PX-7", "PX-8"}
	env.MustSign(t, env.DraftRelease(t, patchPath, randomBytes(t, 512), custom).ID, es...)
	px7 := enrollFleet(t, env, 40, "PX-7", "7.2.0")
	px8 := enrollFleet(t, env, 40, "PX-8", "7.2.0")
	checkInAll(t, append(px7, px8...))
	ro := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10, 100}, Reason: "first 10%"})
	rolloutURL := env.URL + "/rollouts/" + ro.ID

	browser := startBrowser(t, bin)
	lead, watcher := users["lead-b"], users["watch-v"]
	for _, u := range []*browserUser{lead, watcher} {
		newSession(t, browser, u)
		if resp := login(t, env.URL, u); resp.Status != http.StatusOK {
			t.Fatalf("%s logs in: %d", u.name, resp.Status)
		}
	}

	t.Run("stages are counted from 1", func(t *testing.T) {
		navigate(t, lead, rolloutURL)
		if got := evalJS[string](t, lead, `document.querySelector('[data-stage]').textContent.trim()`); got != "1 of 2" {
			t.Errorf("the stage box says %q, want 1 of 2 (otactl says stage 1 of 2)", got)
		}
		stages := evalJS[string](t, lead, `document.querySelector('[data-stages]').textContent`)
		if !strings.Contains(stages, "1: 10%") || !strings.Contains(stages, "2: 100%") {
			t.Errorf("the stages line says %q, want 1: 10%% → 2: 100%%", stages)
		}
		if txt := bodyText(t, lead); strings.Contains(txt, "Stage 0") || strings.Contains(txt, "0: 10%") {
			t.Errorf("the page still counts stages from 0:\n%s", txt)
		}
	})

	var approvalID string
	t.Run("an approval request appears on open pages without a reload", func(t *testing.T) {
		navigate(t, lead, rolloutURL)
		navigate(t, watcher, env.URL+"/")
		for _, u := range []*browserUser{lead, watcher} {
			markPage(t, u)
			if n := evalJS[int](t, u, `document.querySelectorAll('[data-approval]').length`); n != 0 {
				t.Fatalf("%s's page shows %d approval requests before any was made", u.name, n)
			}
		}
		// lead-b starts typing a pause reason; the refreshes must keep it.
		pauseReason := `form[action="/rollouts/` + ro.ID + `/pause"] input[name="reason"]`
		if err := chromedp.Do(lead.ctx, chromedp.SendKeys(chromedp.CSS(pauseReason), "half typed")); err != nil {
			t.Fatal(err)
		}
		// The release engineer asks to widen to 100%: four eyes hold it.
		var ap wire.Approval
		if err := env.Do("POST", "/rollouts/"+ro.ID+"/advance", wire.RolloutAdvanceRequest{Reason: "10% healthy, go wide", Percent: 100}, &ap); err != nil {
			t.Fatal(err)
		}
		if ap.State != string(rollout.ApprovalPending) || ap.ID == "" {
			t.Fatalf("the advance to 100%% answered %+v, want a pending approval", ap)
		}
		approvalID = ap.ID
		sel := fmt.Sprintf(`document.querySelector('[data-approval=%q]') !== null`, ap.ID)
		for _, u := range []*browserUser{lead, watcher} {
			waitJS(t, u, sel, 10*time.Second, func() string { return bodyText(t, u) })
			if !notReloaded(t, u) {
				t.Errorf("%s's page was reloaded; the request should have come in through the live refresh", u.name)
			}
		}
		if got := evalJS[string](t, lead, `document.querySelector('`+pauseReason+`').value`); got != "half typed" {
			t.Errorf("the pause reason lead-b was typing reads %q after the refresh, want %q", got, "half typed")
		}
		// The request says who asked, for what; lead-b may decide it, the
		// viewer may not.
		card := evalJS[string](t, lead, fmt.Sprintf(`document.querySelector('[data-approval=%q]').innerText`, ap.ID))
		if !strings.Contains(card, "advance to 100%") || !strings.Contains(card, "10% healthy, go wide") {
			t.Errorf("the approval card says %q", card)
		}
		if n := evalJS[int](t, lead, `document.querySelectorAll('form.decide button.act-approve').length`); n != 1 {
			t.Errorf("lead-b's page has %d approve buttons, want 1", n)
		}
		if n := evalJS[int](t, watcher, `document.querySelectorAll('form.decide').length`); n != 0 {
			t.Errorf("the viewer's overview offers %d decision forms, want none", n)
		}
		screenshot(t, watcher, "overview-approval-1400.png")
	})

	t.Run("the second person approves it there", func(t *testing.T) {
		if approvalID == "" {
			t.Skip("no approval request")
		}
		form := fmt.Sprintf(`[data-approval=%q] form.decide`, approvalID)
		if err := chromedp.Do(lead.ctx, chromedp.SendKeys(chromedp.CSS(form+` input[name="reason"]`), "numbers checked")); err != nil {
			t.Fatal(err)
		}
		resp, err := chromedp.RunResponse(lead.ctx, chromedp.Click(chromedp.CSS(form+` button.act-approve`)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK || !strings.HasPrefix(resp.URL, rolloutURL) {
			t.Fatalf("approve: %d at %s, want the rollout page", resp.Status, resp.URL)
		}
		if txt := bodyText(t, lead); !strings.Contains(txt, "You approved "+approvalID) {
			t.Errorf("after approving, the page does not say so:\n%s", txt)
		}
		r := getRollout(t, env, ro.ID)
		if r.Percent != 100 || r.Stage != 1 {
			t.Fatalf("after the approval the rollout is at stage %d (%g%%), want stage index 1 at 100%%", r.Stage, r.Percent)
		}
		if got := evalJS[string](t, lead, `document.querySelector('[data-stage]').textContent.trim()`); got != "2 of 2" {
			t.Errorf("the stage box says %q, want 2 of 2", got)
		}
		// The overview, still open, drops the request.
		waitJS(t, watcher, `document.querySelectorAll('[data-approval]').length === 0`, 10*time.Second,
			func() string { return bodyText(t, watcher) })
	})

	t.Run("actions that become available appear", func(t *testing.T) {
		navigate(t, lead, rolloutURL)
		markPage(t, lead)
		// A pause from elsewhere: resume appears and pause goes.
		if err := env.Do("POST", "/rollouts/"+ro.ID+"/pause", wire.RolloutActionRequest{Reason: "looking at PX-8"}, nil); err != nil {
			t.Fatal(err)
		}
		resume := `document.querySelector('form[action="/rollouts/` + ro.ID + `/resume"]') !== null && document.querySelector('form[action="/rollouts/` + ro.ID + `/pause"]') === null`
		waitJS(t, lead, resume, 10*time.Second, func() string { return bodyText(t, lead) })
		if !notReloaded(t, lead) {
			t.Error("the page was reloaded")
		}
		// Resuming at 100% needs four eyes again: Widen has them.
		var resumed wire.Rollout
		env.Widen(t, "POST", "/rollouts/"+ro.ID+"/resume", wire.RolloutActionRequest{Reason: "PX-8 checked"}, &resumed)
		if resumed.State != string(rollout.RolloutRunning) {
			t.Fatalf("resumed: %s", resumed.State)
		}
	})

	t.Run("a rollout completed with a held model is unfinished on the overview", func(t *testing.T) {
		navigate(t, watcher, env.URL+"/")
		markPage(t, watcher)
		checkInAll(t, append(px7, px8...)) // everyone is offered at 100%
		if err := env.Do("POST", "/rollouts/"+ro.ID+"/holds", wire.RolloutHoldRequest{Model: "PX-8", Reason: "PX-8 battery reports"}, nil); err != nil {
			t.Fatal(err)
		}
		if err := env.Do("POST", "/rollouts/"+ro.ID+"/complete", wire.RolloutActionRequest{Reason: "the others are done"}, nil); err != nil {
			t.Fatal(err)
		}
		var rep server.RolloutReport
		if err := env.Do("GET", "/rollouts/"+ro.ID+"/report", nil, &rep); err != nil {
			t.Fatal(err)
		}
		var heldEligible int64
		for _, m := range rep.ByModel {
			if m.Model == "PX-8" {
				heldEligible = m.Eligible
			}
		}
		if rep.State != rollout.RolloutCompleted || heldEligible == 0 {
			t.Fatalf("report: state %s, PX-8 eligible %d; want completed with PX-8 handsets left", rep.State, heldEligible)
		}
		row := fmt.Sprintf(`Array.from(document.querySelectorAll('main table tbody tr')).find(tr => tr.querySelector('a[href="/rollouts/%s"]'))`, ro.ID)
		waitJS(t, watcher, row+`?.innerText.includes('completed, unfinished') ?? false`, 10*time.Second,
			func() string { return bodyText(t, watcher) })
		text := evalJS[string](t, watcher, row+`.innerText`)
		if want := "PX-8 held: " + strconv.FormatInt(heldEligible, 10) + " handsets get no offer"; !strings.Contains(text, want) {
			t.Errorf("the overview's row says %q, want %q", text, want)
		}
		if txt := bodyText(t, watcher); strings.Contains(txt, "No rollout is running") || !strings.Contains(txt, "PX-8 held") {
			t.Errorf("the overview hides the unfinished rollout:\n%s", txt)
		}
		if !notReloaded(t, watcher) {
			t.Error("the overview was reloaded")
		}
		navigate(t, lead, rolloutURL)
		if txt := bodyText(t, lead); !strings.Contains(txt, "unfinished") || strings.Contains(txt, "\npause\n") {
			t.Errorf("the completed rollout's page hides that it is unfinished, or still offers pause:\n%s", txt)
		}
		if n := evalJS[int](t, lead, `document.querySelectorAll('form[action$="/pause"]').length`); n != 0 {
			t.Errorf("a completed rollout still offers pause (%d forms)", n)
		}
		screenshot(t, watcher, "overview-unfinished-1400.png")
	})
}

// pageWidths are the widths every page is shown at: a desktop window,
// a common phone and the narrowest the pages are made for.
var pageWidths = []int64{1400, 390, 360}

// TestDashboardPagesFit opens every page as an admin at 1,400, 390 and
// 360 CSS pixels wide: none scrolls sideways, and each is kept as a
// screenshot (PAGE-WIDTH.png in OTA_TEST_ARTIFACTS).
func TestDashboardPagesFit(t *testing.T) {
	bin := chromium(t)
	env := apitest.Start(t, apitest.Options{LiveEvery: time.Hour})
	ctx := t.Context()
	admin := &browserUser{name: "admin-fit", password: "pw-of-admin-fit-long-enough"}
	if _, err := env.App.Users.Create(ctx, admin.name, identity.RoleAdmin, admin.password, false); err != nil {
		t.Fatal(err)
	}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 512), es...)
	ro := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10, 50, 100}, Reason: "first 10% of a rather long stage list to see wrapping"})
	_, _, _, _ = seedFleet(t, env, 200)
	hs := enrollFleet(t, env, 1, "PX-9", "7.3.1")
	var ap wire.Approval
	if err := env.Do("POST", "/rollouts/"+ro.ID+"/advance", wire.RolloutAdvanceRequest{Reason: "go wide", Percent: 100}, &ap); err != nil {
		t.Fatal(err)
	}
	browser := startBrowser(t, bin)
	newSession(t, browser, admin)
	if resp := login(t, env.URL, admin); resp.Status != http.StatusOK {
		t.Fatalf("login: %d", resp.Status)
	}
	pages := []struct{ name, path, want string }{
		{"overview", "/", "Needs you now"},
		{"rollouts", "/rollouts", ro.ID},
		{"rollout", "/rollouts/" + ro.ID, "Approval waiting"},
		{"rollout-new", "/rollouts/new", "Create rollout"},
		{"releases", "/releases", patchPath},
		{"devices", "/devices", "Device"},
		{"device", "/devices?id=" + hs[0].id, hs[0].id},
		{"audit", "/audit", "Audit log"},
		{"users", "/users", admin.name},
		{"tokens", "/tokens", "Mint token"},
	}
	for _, w := range pageWidths {
		if err := chromedp.Do(admin.ctx, chromedp.EmulateViewport(w, 900)); err != nil {
			t.Fatal(err)
		}
		for _, pg := range pages {
			t.Run(fmt.Sprintf("%s at %d px", pg.name, w), func(t *testing.T) {
				navigate(t, admin, env.URL+pg.path)
				if txt := bodyText(t, admin); !strings.Contains(txt, pg.want) {
					t.Fatalf("%s lacks %q:\n%s", pg.path, pg.want, txt)
				}
				type fit struct {
					Page, Window    int
					Widest, Spilled string
				}
				got := evalJS[fit](t, admin, `(() => {
					const w = window.innerWidth;
					let widest = "";
					for (const el of document.body.querySelectorAll('*')) {
						const r = el.getBoundingClientRect();
						if (r.right > w + 1 && !el.closest('.scroll, header') && getComputedStyle(el).position !== 'fixed') {
							widest = el.tagName + '.' + el.className + ' ' + Math.round(r.right) + 'px: ' + (el.textContent || '').trim().slice(0, 60);
							break;
						}
					}
					// A cell whose text runs out of it overlaps the next one.
					let spilled = "";
					for (const td of document.querySelectorAll('main td, main th')) {
						if (td.scrollWidth > td.clientWidth + 1) {
							spilled = td.textContent.trim().slice(0, 60) + ' (' + td.scrollWidth + ' in ' + td.clientWidth + ' px)';
							break;
						}
					}
					return {Page: document.documentElement.scrollWidth, Window: w, Widest: widest, Spilled: spilled};
				})()`)
				if got.Page > got.Window {
					t.Errorf("%s at %d px scrolls sideways: the page is %d px wide (%s)", pg.path, w, got.Page, got.Widest)
				}
				if got.Spilled != "" {
					t.Errorf("%s at %d px: a table cell's text runs over the next: %s", pg.path, w, got.Spilled)
				}
				screenshot(t, admin, fmt.Sprintf("%s-%d.png", pg.name, w))
			})
		}
	}
	// The numbers at the narrowest width are the report's: a layout for
	// phones must not drop any.
	var rep map[string]json.RawMessage
	if err := env.Do("GET", "/rollouts/"+ro.ID+"/report", nil, &rep); err != nil {
		t.Fatal(err)
	}
	navigate(t, admin, env.URL+"/rollouts/"+ro.ID)
	for _, name := range []string{"eligible", "target", "offered", "pending", "downloading", "installed", "failed", "rolled_back"} {
		shown := evalJS[string](t, admin, fmt.Sprintf(`document.querySelector('[data-count=%q]')?.textContent.trim() ?? ""`, name))
		if strings.ReplaceAll(shown, ",", "") != string(rep[name]) {
			t.Errorf("at 360 px the page shows %s %q, the report %s", name, shown, rep[name])
		}
	}
}
