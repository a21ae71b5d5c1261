package main

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
)

// TestRolloutAgainstRealAPI runs handsets against the real handset API
// (server/api, SQLite) and the real TUF repository, then checks the
// server's own view of the fleet.
func TestRolloutAgainstRealAPI(t *testing.T) {
	r := startRepo(t)
	env := r.env
	fleet := &server.Fleet{Store: env.DB.Devices(), Eligibility: &server.NewestRelease{Source: env.Repo},
		Catalog:      &server.PublishedPatches{Source: env.Repo},
		PollInterval: 10 * time.Second}
	srv := httptest.NewServer(api.New(api.Config{Repo: env.Repo, Blobs: env.Blobs,
		Tokens: server.Tokens{Store: env.DB.Tokens()}, Fleet: fleet}))
	t.Cleanup(srv.Close)

	const n = 20
	f := &fakeServer{URL: srv.URL}
	res, _ := rollout(t, f, "--count", "20", "--concurrency", "4", "--root", r.rootFile, "--fail-rate", "0.25",
		"--fail-codes", "E_DISK_FULL")
	if !res.Complete || res.Installed+res.Failed != n || res.Installed != res.Compliant || res.Dropped != 0 ||
		len(res.Errors) != 0 {
		t.Fatalf("result %+v, want %d installed or failed, no errors", res, n)
	}
	sum, err := fleet.Summary(context.Background(), testPatchID, 1, server.DefaultSummaryModels)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Enrolled != n || sum.Patched != int64(res.Installed) || sum.Compliant != int64(res.Installed) {
		t.Errorf("server summary %+v, want %d enrolled, %d patched and compliant", sum, n, res.Installed)
	}
	if got := sum.States["failed"]; got != int64(res.Failed) {
		t.Errorf("server counts %d failed, handsets %d", got, res.Failed)
	}
}
