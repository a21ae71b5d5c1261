package main

import (
	"context"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	srvrollout "github.com/patchfleet/ota/server/rollout"
)

// rollOutToAll starts a rollout of the test patch to every handset, as an
// operator would after publishing, with a failure limit of 50%: the runs
// fail installs on purpose (up to 25%), and the default 5% would halt the
// rollout whenever the background policies happen to run mid-run.
func rollOutToAll(tb testing.TB, env *apitest.Env) *srvrollout.Rollout {
	tb.Helper()
	p := srvrollout.DefaultPolicy()
	p.MaxFailureRate = 0.5
	// A start at 100% waits for a second person.
	ro, err := env.ApprovePending(env.App.Rollouts.Create(context.Background(), srvrollout.RolloutSpec{Release: testPatchPath,
		Stages: []float64{100}, Policy: p, Reason: "handset simulator run"}, "test-operator"))
	if err != nil {
		tb.Fatalf("start rollout: %v", err)
	}
	return ro
}

// checkRolloutResults compares the rollout's results, as the server
// counts them from the reports (the rollout report: the handsets enrolled
// after the rollout started, so they count in no halt, hold or advance),
// with what the handsets did.
func checkRolloutResults(tb testing.TB, env *apitest.Env, ro *srvrollout.Rollout, res *rolloutResult) {
	tb.Helper()
	var rep server.RolloutReport
	if err := env.Do("GET", "/rollouts/"+ro.ID+"/report", nil, &rep); err != nil {
		tb.Fatal(err)
	}
	if rep.Installed != int64(res.Installed) || rep.Failed != int64(res.Failed) {
		tb.Errorf("rollout %s report: %d installed, %d failed; handsets installed %d, failed %d",
			ro.ID, rep.Installed, rep.Failed, res.Installed, res.Failed)
	}
}

// TestRolloutAgainstRealAPI runs handsets against the real handset API
// (server/api, SQLite, wired as otad wires it) and the real TUF
// repository, with the release rolled out to every handset, then checks
// the server's own view of the fleet and of the rollout.
func TestRolloutAgainstRealAPI(t *testing.T) {
	r := startRepo(t)
	env := r.env
	ro := rollOutToAll(t, env)

	const n = 20
	f := &fakeServer{URL: env.URL}
	res, _ := rollout(t, f, "--count", "20", "--concurrency", "4", "--root", r.rootFile, "--fail-rate", "0.25",
		"--fail-codes", "E_DISK_FULL")
	if !res.Complete || res.Installed+res.Failed != n || res.Installed != res.Compliant || res.Dropped != 0 ||
		len(res.Errors) != 0 {
		t.Fatalf("result %+v, want %d installed or failed, no errors", res, n)
	}
	sum, err := env.Fleet.Summary(context.Background(), testPatchID, 1, handsets.DefaultSummaryModels)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Enrolled != n || sum.Patched != int64(res.Installed) || sum.Compliant != int64(res.Installed) {
		t.Errorf("server summary %+v, want %d enrolled, %d patched and compliant", sum, n, res.Installed)
	}
	if got := sum.States["failed"]; got != int64(res.Failed) {
		t.Errorf("server counts %d failed, handsets %d", got, res.Failed)
	}
	checkRolloutResults(t, env, ro, res)
}
