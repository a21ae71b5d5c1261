package main

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/handsets"
)

// TestFleetEndToEnd is the handset issue's end-to-end run: a published
// patch rolled out to 100% and 1000 simulated handsets against the full
// server, on the embedded defaults (SQLite, filesystem) and on PostgreSQL
// with MinIO. The server's fleet summary must agree with what the
// handsets did: 1000 enrolled, the patch on those whose install did not
// fail, every one of them compliant, failures counted by their codes.
func TestFleetEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 handsets")
	}
	t.Run("sqlite+filesystem", func(t *testing.T) { fleetEndToEnd(t, apitest.Options{}) })
	t.Run("postgres+minio", func(t *testing.T) {
		dsn := apitest.PostgresDSN(t)
		fleetEndToEnd(t, apitest.Options{DB: apitest.OpenPostgresPool(t, dsn, 32), Blobs: apitest.MinIOStore(t)})
	})
}

func fleetEndToEnd(t *testing.T, opts apitest.Options) {
	env := apitest.Start(t, opts)
	es := apitest.NewEngineers(t, 3)
	env.Ceremony(t, es, 2)
	patch := make([]byte, 256<<10)
	rand.Read(patch)
	env.Publish(t, testPatchPath, patch, es[0], es[2])
	ro := rollOutToAll(t, env)
	root := filepath.Join(t.TempDir(), "root.json")
	if err := os.WriteFile(root, env.RootBytes(t, 1), 0o644); err != nil {
		t.Fatal(err)
	}

	const n = 1000
	res, _ := rollout(t, &fakeServer{URL: env.URL}, "--count", "1000", "--concurrency", "32", "--root", root,
		"--fail-rate", "0.1", "--fail-codes", "E_DISK_FULL,E_BATTERY_LOW", "--timeout", "10m")
	if !res.Complete || res.Installed+res.Failed != n || res.Installed != res.Compliant || len(res.Errors) != 0 || res.Dropped != 0 {
		t.Fatalf("handsets: %+v, want all %d installed or failed without errors", res, n)
	}
	if res.Failed == 0 || res.Installed == 0 {
		t.Fatalf("handsets: %d installed, %d failed; want both at a 10%% failure rate", res.Installed, res.Failed)
	}
	sum, err := env.Fleet.Summary(context.Background(), testPatchID, 1, handsets.DefaultSummaryModels)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Enrolled != n || sum.Active != n || sum.Patched != int64(res.Installed) || sum.Compliant != int64(res.Installed) {
		t.Errorf("summary: enrolled %d active %d patched %d compliant %d; handsets installed %d of %d",
			sum.Enrolled, sum.Active, sum.Patched, sum.Compliant, res.Installed, n)
	}
	got := map[string]int{}
	for _, f := range sum.Failures {
		got[f.ErrorCode] = int(f.Count)
	}
	for code, want := range res.FailedByCode {
		if got[code] != want {
			t.Errorf("failures %s: server counts %d, handsets reported %d", code, got[code], want)
		}
	}
	if len(got) != len(res.FailedByCode) {
		t.Errorf("failure codes: server %v, handsets %v", got, res.FailedByCode)
	}
	checkRolloutResults(t, env, ro, res)
	t.Logf("%d handsets: %d installed and compliant, %d failed %v, %d check-ins, %.1fs",
		n, res.Installed, res.Failed, res.FailedByCode, res.CheckIns, res.ElapsedSeconds)
}
