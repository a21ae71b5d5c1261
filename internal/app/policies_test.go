package app_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/sqlstore"
)

// leaseReplica is an App of the deployment of env on db, counting the
// passes of its background jobs and of the jobs under the lease.
type leaseReplica struct {
	name     string
	app      *app.App
	passes   atomic.Int64
	policies atomic.Int64
}

func startLeaseReplica(tb testing.TB, env *apitest.Env, db *sqlstore.DB, clk *clock, name string) *leaseReplica {
	tb.Helper()
	r := &leaseReplica{name: name}
	a, err := app.New(tb.Context(), app.Config{DB: db, Blobs: env.Blobs, Online: env.Online, Now: clk.Now,
		RefreshInterval: 10 * time.Millisecond, Holder: name,
		AfterPass: func() { r.passes.Add(1) }, AfterPolicies: func() { r.policies.Add(1) }})
	if err != nil {
		tb.Fatal(err)
	}
	r.app = a
	a.Run(tb.Context())
	tb.Cleanup(a.Close)
	return r
}

// waitFor polls cond until it holds, failing after 30 s.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("no %s within 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitPasses waits until each replica has made n more passes.
func waitPasses(tb testing.TB, n int64, rs ...*leaseReplica) {
	tb.Helper()
	for _, r := range rs {
		want := r.passes.Load() + n
		waitFor(tb, r.name+" pass", func() bool { return r.passes.Load() >= want })
	}
}

func scrape(tb testing.TB, a *app.App) string {
	tb.Helper()
	rec := httptest.NewRecorder()
	a.API.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET /metrics: %d %s", rec.Code, b)
	}
	return string(b)
}

// failingRollout stores a running rollout ro_test with 50 results in
// the last minute, 20% of them failed: the next policy pass halts it.
func failingRollout(tb testing.TB, env *apitest.Env, now time.Time) {
	tb.Helper()
	ctx := tb.Context()
	store := env.DB.Rollouts()
	r, ev, err := rollout.NewRollout(rollout.Rollout{ID: "ro_test",
		Release: rollout.RolloutRelease{Target: "patches/cm-2026-001.zip", PatchID: "CM-2026-001", InstallsBuild: "7.5.0"},
		Stages:  []float64{10, 100}, Policy: rollout.DefaultPolicy()}, "alice", now.Add(-time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	if err := store.CreateRollout(ctx, r, 0, ev); err != nil {
		tb.Fatal(err)
	}
	if ev, err = r.Start("alice", "go", now.Add(-time.Hour)); err != nil {
		tb.Fatal(err)
	}
	if err := store.UpdateRollout(ctx, r, r.Version, []rollout.Event{ev}); err != nil {
		tb.Fatal(err)
	}
	for i := range 50 {
		e, err := env.Fleet.Enroll(ctx, server.EnrollRequest{Model: "Pixel-8", Build: "7.4.0", Channel: "stable"})
		if err != nil {
			tb.Fatal(err)
		}
		state := handsets.StateInstalled
		if i%5 == 0 {
			state = handsets.StateFailed
		}
		at := now.Add(-time.Minute)
		if err := store.PutDeviceRollout(ctx, &handsets.DeviceRollout{RolloutID: "ro_test", DeviceID: e.DeviceID,
			Model: "Pixel-8", StartingBuild: "7.4.0", OfferedAt: at, LastOfferedAt: at, State: state, Attempts: 1,
			ResultAt: at}); err != nil {
			tb.Fatal(err)
		}
	}
}

// TestPoliciesRunOnOneReplica runs two replicas on one database: while
// a crashed replica's lease lasts, neither runs the rollout policies;
// once it expires exactly one takes it, halts the failing rollout and
// runs every pass while the other runs none; when that one closes, the
// other takes over.
func TestPoliciesRunOnOneReplica(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
			opts := apitest.Options{Now: clk.Now}
			var dsn string
			if backend == "postgres" {
				dsn = apitest.PostgresDSN(t)
				opts.DB = apitest.OpenPostgres(t, dsn)
			}
			env := apitest.Start(t, opts)
			// SQLite serves one otad per file: the replicas share env's
			// DB. On PostgreSQL each has its own pool, as processes do.
			db := func() *sqlstore.DB {
				if dsn == "" {
					return env.DB
				}
				return apitest.OpenPostgres(t, dsn)
			}
			ctx := t.Context()
			// env's own App took the lease at Start, for 3 of its 1 h
			// passes: let it expire, and have a replica that then
			// crashed hold it for a minute.
			clk.Advance(4 * time.Hour)
			if ok, err := env.DB.Lease(app.PoliciesLease).Acquire(ctx, "crashed", time.Minute, clk.Now()); err != nil || !ok {
				t.Fatalf("crashed replica takes the lease: %v, %v", ok, err)
			}
			failingRollout(t, env, clk.Now())

			a, b := startLeaseReplica(t, env, db(), clk, "replica-a"), startLeaseReplica(t, env, db(), clk, "replica-b")
			waitPasses(t, 3, a, b)
			if na, nb := a.policies.Load(), b.policies.Load(); na != 0 || nb != 0 {
				t.Fatalf("policy passes while another replica holds the lease: a %d, b %d; want none", na, nb)
			}
			if r, err := env.DB.Rollouts().Rollout(ctx, "ro_test"); err != nil || r.State != rollout.RolloutRunning {
				t.Fatalf("rollout under the crashed replica's lease: %v, %v; want it still running", r.State, err)
			}

			clk.Advance(time.Minute + time.Second)
			waitFor(t, "policy pass after the lease expired", func() bool { return a.policies.Load()+b.policies.Load() > 0 })
			waitPasses(t, 5, a, b)
			leader, follower := a, b
			if b.policies.Load() > 0 {
				leader, follower = b, a
			}
			if n := follower.policies.Load(); n != 0 {
				t.Fatalf("both replicas ran the policies: %s %d passes, %s %d", leader.name, leader.policies.Load(), follower.name, n)
			}
			if n := leader.policies.Load(); n < 5 {
				t.Errorf("%s ran the policies %d times in its last 5 passes or more, want every pass", leader.name, n)
			}
			r, err := env.DB.Rollouts().Rollout(ctx, "ro_test")
			if err != nil {
				t.Fatal(err)
			}
			if r.State != rollout.RolloutPaused || r.Halt == nil || r.Halt.Failed != 10 || r.Halt.Installed != 40 {
				t.Fatalf("rollout %s, halt %+v; want paused by a halt on 10 of 50 failed", r.State, r.Halt)
			}
			evs, err := env.DB.Rollouts().RolloutEvents(ctx, "ro_test", 0)
			if err != nil {
				t.Fatal(err)
			}
			if last := evs[len(evs)-1]; len(evs) != 3 || last.Action != rollout.ActionHalt || last.Actor != audit.SystemActor {
				t.Errorf("%d events, the last %s by %s; want create, start, one halt by the system", len(evs), last.Action, last.Actor)
			}
			// The leader counted the halt; both show the rollout halted.
			for _, rep := range []*leaseReplica{leader, follower} {
				m := scrape(t, rep.app)
				want := map[*leaseReplica]string{leader: "1", follower: "0"}[rep]
				for _, line := range []string{
					`otad_rollout_auto_halts_total{rollout="ro_test",scope="rollout"} ` + want,
					`otad_rollout_halted{rollout="ro_test"} 1`,
					`otad_rollout_state{rollout="ro_test",state="paused"} 1`,
				} {
					if !strings.Contains(m, line+"\n") {
						t.Errorf("%s /metrics has no line %q", rep.name, line)
					}
				}
			}

			// Closing releases the lease: the other takes over at its next
			// pass, with the clock still where it was.
			before := follower.policies.Load()
			leader.app.Close()
			waitFor(t, follower.name+" policy pass after "+leader.name+" closed", func() bool { return follower.policies.Load() > before })
		})
	}
}
