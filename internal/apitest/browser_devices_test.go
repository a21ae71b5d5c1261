package apitest_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/identity"
)

// TestDevicesInBrowser searches the device list as a release manager
// would, in headless Chromium: handsets of two models enrolled through
// the handset API, a search by model and one by the start of an id
// typed into the form, a row followed to the handset's page, and the
// list at 1400 and 390 pixels wide, the narrow one without horizontal
// scrolling.
func TestDevicesInBrowser(t *testing.T) {
	bin := chromium(t)
	env := apitest.Start(t, apitest.Options{})
	u := &browserUser{name: "viewer-d", password: "pw-of-viewer-d-long-enough"}
	if _, err := env.App.Users.Create(t.Context(), u.name, identity.RoleViewer, u.password, false); err != nil {
		t.Fatal(err)
	}
	ids := func(hs []*handset) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.id)
		}
		slices.Sort(out)
		return out
	}
	px := ids(enrollFleet(t, env, 4, "PX-8", "7.4.1"))
	qz := ids(enrollFleet(t, env, 3, "QZ-2", "7.1.0"))
	all := slices.Sorted(slices.Values(append(slices.Clone(px), qz...)))

	browser := startBrowser(t, bin)
	newSession(t, browser, u)
	if resp := login(t, env.URL, u); resp.Status != http.StatusOK {
		t.Fatalf("login: %d", resp.Status)
	}
	// rows are the handset ids the list's rows link to, in order.
	rows := func(t *testing.T) []string {
		t.Helper()
		return evalJS[[]string](t, u, `Array.from(document.querySelectorAll('main table tbody tr td:first-child a'),
			a => new URL(a.href).pathname.replace('/devices/', ''))`)
	}
	// search fills the list's form afresh with field=value and submits it.
	search := func(t *testing.T, field, value string) {
		t.Helper()
		input := `form.filters input[name="` + field + `"]`
		if err := chromedp.Do(u.ctx, chromedp.Navigate(env.URL+"/devices")); err != nil {
			t.Fatal(err)
		}
		// chromedp waits for a missing element until the test's deadline.
		if !evalJS[bool](t, u, `!!document.querySelector('`+input+`')`) {
			t.Fatalf("the device list has no %s field", field)
		}
		if err := chromedp.Do(u.ctx, chromedp.SendKeys(chromedp.CSS(input), value)); err != nil {
			t.Fatal(err)
		}
		resp, err := chromedp.RunResponse(u.ctx, chromedp.Click(chromedp.CSS(`form.filters button[type="submit"]`)))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK {
			t.Fatalf("search %s=%s: %d", field, value, resp.Status)
		}
		if got := evalJS[string](t, u, `document.querySelector('form.filters input[name="`+field+`"]').value`); got != value {
			t.Errorf("after the search the %s field holds %q, want %q", field, got, value)
		}
	}
	// noSideScroll fails t when the page is wider than the window.
	noSideScroll := func(t *testing.T, what string) {
		t.Helper()
		type widths struct{ Scroll, Inner int }
		w := evalJS[widths](t, u, `({Scroll: document.documentElement.scrollWidth, Inner: window.innerWidth})`)
		if w.Inner != 390 || w.Scroll > w.Inner {
			t.Errorf("%s at 390 px: page %d px wide in a window of %d", what, w.Scroll, w.Inner)
		}
	}

	t.Run("the list at 1400 px", func(t *testing.T) {
		if err := chromedp.Do(u.ctx, chromedp.EmulateViewport(1400, 900), chromedp.Navigate(env.URL+"/devices")); err != nil {
			t.Fatal(err)
		}
		if got := rows(t); !slices.Equal(got, all) {
			t.Errorf("rows %v, want every handset in id order %v", got, all)
		}
		screenshot(t, u, "devices-1400.png")
	})

	t.Run("search by model", func(t *testing.T) {
		search(t, "model", "QZ-2")
		if got := rows(t); !slices.Equal(got, qz) {
			t.Errorf("model QZ-2: rows %v, want %v", got, qz)
		}
	})

	target := px[1]
	t.Run("search by the start of an id", func(t *testing.T) {
		prefix := target[:len("dev_")+4]
		var want []string
		for _, id := range all {
			if strings.HasPrefix(id, prefix) {
				want = append(want, id)
			}
		}
		search(t, "id", prefix)
		if got := rows(t); !slices.Equal(got, want) {
			t.Errorf("id prefix %s: rows %v, want %v", prefix, got, want)
		}
	})

	t.Run("a row leads to its handset", func(t *testing.T) {
		link := `main table a[href="/devices/` + target + `"]`
		if !evalJS[bool](t, u, `!!document.querySelector('`+link+`')`) {
			t.Fatalf("the list does not link %s", target)
		}
		resp, err := chromedp.RunResponse(u.ctx, chromedp.Click(chromedp.CSS(link)))
		if err != nil {
			t.Fatal(err)
		}
		text := bodyText(t, u)
		if resp.Status != http.StatusOK || resp.URL != env.URL+"/devices/"+target ||
			!strings.Contains(text, target) || !strings.Contains(text, "PX-8") || !strings.Contains(text, "Install state by patch") {
			t.Fatalf("row link: %d at %s, want the page of %s\n%s", resp.Status, resp.URL, target, text)
		}
	})

	t.Run("the list and a handset at 390 px", func(t *testing.T) {
		if err := chromedp.Do(u.ctx, chromedp.EmulateViewport(390, 900), chromedp.Navigate(env.URL+"/devices/"+target)); err != nil {
			t.Fatal(err)
		}
		noSideScroll(t, "the handset page")
		if err := chromedp.Do(u.ctx, chromedp.Navigate(env.URL+"/devices")); err != nil {
			t.Fatal(err)
		}
		if got := rows(t); !slices.Equal(got, all) {
			t.Errorf("rows %v, want %v", got, all)
		}
		noSideScroll(t, "the device list")
		screenshot(t, u, "devices-390.png")
	})
}
