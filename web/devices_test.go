package web

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// devicesEnv is a dashboard whose fake backend holds dev-42 (PX-8, DE,
// failed CM-1) and n more handsets dev-p000.. of QZ-2 in FR, of which
// the even ones installed CM-1.
func devicesEnv(t *testing.T, n int) *env {
	t.Helper()
	e := newEnv(t)
	now := time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("dev-p%03d", i)
		v := &DeviceView{Device: &handsets.Device{ID: id, Model: "QZ-2", Build: "7.4.1", Channel: "stable", Region: "FR",
			CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, LastSeen: now}}
		if i%2 == 0 {
			v.Patches = []handsets.PatchState{{PatchID: "CM-1", State: handsets.StateInstalled, At: now}}
		}
		e.backend.devices[id] = v
	}
	return e
}

// rowIDs are the handset ids the device list's rows link to, in order.
func rowIDs(body string) []string {
	var ids []string
	for _, m := range regexp.MustCompile(`<a href="/devices/([^"]+)"><code>`).FindAllStringSubmatch(body, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

func TestDevicesFilters(t *testing.T) {
	e := devicesEnv(t, 6)
	for _, tc := range []struct {
		name, path string
		ids        []string
		want       []string
	}{
		{"model and region, kept in the form", "/devices?model=PX-8&region=de", []string{"dev-42"},
			[]string{`name="model" value="PX-8"`, `name="region" value="DE"`, "failed <code>E_NO_SPACE</code>"}},
		{"the newest rollout's patch by default", "/devices?model=QZ-2&state=installed", []string{"dev-p000", "dev-p002", "dev-p004"},
			[]string{`<option selected>CM-1</option>`, `<option value="installed" selected>installed</option>`, "<th>CM-1</th>"}},
		{"id prefix", "/devices?id=dev-p00", []string{"dev-p000", "dev-p001", "dev-p002", "dev-p003", "dev-p004", "dev-p005"},
			[]string{`name="id" value="dev-p00"`}},
		{"no patch", "/devices?patch=&model=QZ-2&build=7.4.1", []string{"dev-p000", "dev-p001", "dev-p002", "dev-p003", "dev-p004", "dev-p005"},
			[]string{`<option value="">none</option><option>CM-1</option>`, `name="build" value="7.4.1"`}},
		{"nothing matches says what was searched", "/devices?id=dev-9&model=PX-8&region=FR&state=rolled_back", nil,
			[]string{"No handset has an id that is or starts with dev-9, model PX-8, region FR, rolled back for CM-1."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := e.do(t, identity.RoleViewer, "GET", tc.path, nil)
			body := rec.Body.String()
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s: %d, want 200\n%s", tc.path, rec.Code, body)
			}
			if got := rowIDs(body); strings.Join(got, " ") != strings.Join(tc.ids, " ") {
				t.Errorf("GET %s: rows %v, want %v", tc.path, got, tc.ids)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("GET %s: page lacks %s", tc.path, w)
				}
			}
			if strings.Contains(body, `rel="next"`) {
				t.Errorf("GET %s: a next link on the only page", tc.path)
			}
		})
	}
}

func TestDevicesBadFilter(t *testing.T) {
	e := devicesEnv(t, 3)
	for _, tc := range []struct{ path, msg, kept string }{
		{"/devices?region=Germany&model=PX-8", "region: want a two-letter ISO 3166-1 code such as DE", `name="model" value="PX-8"`},
		{"/devices?model=%2B4915123456789", "model: want 1-64 letters", `name="model" value="&#43;4915123456789"`},
		{"/devices?patch=&state=failed", "patch: choose the patch whose install state to filter by", `<option value="failed" selected>`},
		{"/devices?state=done", "state: want one of downloading,", ""},
		{"/devices?after=a%20b", "after: want a handset id", ""},
	} {
		rec := e.do(t, identity.RoleViewer, "GET", tc.path, nil)
		body := rec.Body.String()
		if rec.Code != http.StatusBadRequest || !strings.Contains(body, tc.msg) || !strings.Contains(body, tc.kept) {
			t.Errorf("GET %s: %d, want 400 saying %q and keeping %q\n%.3000s", tc.path, rec.Code, tc.msg, tc.kept, body)
		}
		if strings.Contains(body, "<tbody>") {
			t.Errorf("GET %s: a list under a refused filter", tc.path)
		}
	}
}

// TestDevicesNextPage follows the next-page links through 121 handsets:
// 50, 50 and 21 rows, each handset once, the filters kept in the links.
func TestDevicesNextPage(t *testing.T) {
	e := devicesEnv(t, 121)
	next := regexp.MustCompile(`<a rel="next" href="([^"]+)">Next page</a>`)
	path := "/devices?id=dev-p"
	var all []string
	for page := 1; ; page++ {
		rec := e.do(t, identity.RoleViewer, "GET", path, nil)
		body := rec.Body.String()
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d\n%s", path, rec.Code, body)
		}
		ids := rowIDs(body)
		all = append(all, ids...)
		m := next.FindStringSubmatch(body)
		if page < 3 {
			if len(ids) != 50 || m == nil {
				t.Fatalf("page %d (%s): %d rows, next link %v; want 50 and a link", page, path, len(ids), m)
			}
			path = strings.ReplaceAll(m[1], "&amp;", "&")
			if want := "after=" + ids[49]; !strings.Contains(path, want) || !strings.Contains(path, "id=dev-p") || !strings.Contains(path, "patch=CM-1") {
				t.Fatalf("page %d: next link %s, want the filters and %s", page, path, want)
			}
			continue
		}
		if len(ids) != 21 || m != nil || !strings.Contains(body, "First page") {
			t.Fatalf("last page: %d rows, next link %v, want 21 rows, no next link and a first-page link", len(ids), m)
		}
		break
	}
	seen := map[string]bool{}
	for i, id := range all {
		if want := fmt.Sprintf("dev-p%03d", i); id != want || seen[id] {
			t.Fatalf("row %d is %s, want %s once", i, id, want)
		}
		seen[id] = true
	}
	if q := e.backend.listed[len(e.backend.listed)-1]; q.After != "dev-p099" || q.Limit != handsets.DevicePageSize {
		t.Errorf("last query %+v, want after dev-p099, %d a page", q, handsets.DevicePageSize)
	}
}

// TestDevicesOldLookup keeps /devices?id=X, the lookup's address before
// the list: a whole id goes to its handset's page, anything else is a
// prefix search; /devices/X is the handset's page.
func TestDevicesOldLookup(t *testing.T) {
	e := devicesEnv(t, 2)
	rec := e.do(t, identity.RoleViewer, "GET", "/devices?id=dev-42", nil)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/devices/dev-42" {
		t.Errorf("GET /devices?id=dev-42: %d to %q, want 303 to /devices/dev-42", rec.Code, rec.Header().Get("Location"))
	}
	rec = e.do(t, identity.RoleViewer, "GET", "/devices?id=dev-4", nil)
	if got := rowIDs(rec.Body.String()); rec.Code != http.StatusOK || len(got) != 1 || got[0] != "dev-42" {
		t.Errorf("GET /devices?id=dev-4: %d, rows %v, want 200 listing dev-42", rec.Code, got)
	}
	rec = e.do(t, identity.RoleViewer, "GET", "/devices/dev-42", nil)
	if body := rec.Body.String(); rec.Code != http.StatusOK || !strings.Contains(body, "E_NO_SPACE") || !strings.Contains(body, `href="/devices?model=PX-8"`) {
		t.Errorf("GET /devices/dev-42: %d\n%.2000s", rec.Code, body)
	}
	rec = e.do(t, identity.RoleViewer, "GET", "/devices/dev-none", nil)
	if rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "No handset has the id dev-none.") {
		t.Errorf("GET /devices/dev-none: %d, want 404", rec.Code)
	}
}
