package sqlstore_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
	"github.com/patchfleet/ota/web"
)

// BenchmarkPages measures the dashboard's two heaviest pages, the
// overview (exposure report, the running rollout's report, repository
// status) and the rollout page, and the device list, as full HTTP requests through the App's
// handler with a logged-in session, over the million handsets the
// report benchmarks seed:
//
//	OTA_BENCH_1M=1 go test ./server/sqlstore -run '^$' -bench 'Pages' -benchtime 20x
func BenchmarkPages(b *testing.B) {
	for _, name := range sqlstore.BenchBackends {
		b.Run(name, func(b *testing.B) {
			db, ro := sqlstore.BenchFleet(b, name)
			h, cookie := benchDashboard(b, db)
			for _, pg := range []struct{ name, path, want string }{
				{"overview", "/", "Exposure burn-down"},
				{"rollout", "/rollouts/" + ro.ID, "By starting build"},
				// The device list (each page has a next one): unfiltered,
				// by model and region, by install state, by id prefix, and
				// a deep page, 900,000 handsets in.
				{"devices", "/devices", `rel="next"`},
				{"devices-model-region", "/devices?model=PX-8&region=DE", `rel="next"`},
				{"devices-state", "/devices?patch=" + ro.Release.PatchID + "&state=failed", `rel="next"`},
				{"devices-id-prefix", "/devices?id=dev_bench0012", `rel="next"`},
				{"devices-deep", "/devices?after=dev_bench00900000", `rel="next"`},
			} {
				b.Run(pg.name, func(b *testing.B) {
					for b.Loop() {
						req := httptest.NewRequest("GET", pg.path, nil)
						req.AddCookie(cookie)
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, req)
						if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), pg.want) {
							b.Fatalf("GET %s: %d\n%.800s", pg.path, rec.Code, rec.Body)
						}
					}
				})
			}
		})
	}
}

// benchDashboard builds an App over db, clocked at the seeded fleet's
// present, and logs a viewer in.
func benchDashboard(b *testing.B, db *sqlstore.DB) (http.Handler, *http.Cookie) {
	b.Helper()
	ctx := context.Background()
	blobs, err := fsstore.New(filepath.Join(b.TempDir(), "blobs"))
	if err != nil {
		b.Fatal(err)
	}
	key, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		b.Fatal(err)
	}
	now := func() time.Time { return sqlstore.BenchNow }
	a, err := app.New(ctx, app.Config{DB: db, Blobs: blobs, Online: key.Signer(), Now: now})
	if err != nil {
		b.Fatal(err)
	}
	u, _, err := a.Users.Store.UserByName(ctx, "bench-viewer")
	if err != nil {
		if u, err = a.Users.Create(ctx, "bench-viewer", identity.RoleViewer, "bench password 123", false); err != nil {
			b.Fatal(err)
		}
	}
	// The App's clock, so that the session is fresh at the seeded present.
	secret, _, err := a.Sessions.Start(ctx, u)
	if err != nil {
		b.Fatal(err)
	}
	return a.API, &http.Cookie{Name: web.CookieName, Value: secret}
}
