package apitest_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/signing"
)

// TestReplicasShareOneRepository runs two otad replicas on one PostgreSQL
// database and one blob store: concurrent signatures publish once,
// concurrent re-signing writes one timestamp, and each replica serves what
// the other published once it refreshes.
func TestReplicasShareOneRepository(t *testing.T) {
	dsn := apitest.PostgresDSN(t)
	blobs, err := fsstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	online, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	start := func() *apitest.Env {
		return apitest.Start(t, apitest.Options{DB: apitest.OpenPostgres(t, dsn), Blobs: blobs, Online: online, Now: clk.Now})
	}
	a, b := start(), start()
	es := apitest.NewEngineers(t, 2)
	a.Ceremony(t, es, 2)

	// Both engineers sign at once, through different replicas: whichever
	// completes the threshold publishes, exactly once.
	d := a.DraftRelease(t, patchPath, randomBytes(t, 4096), apitest.PatchCustom())
	var wg sync.WaitGroup
	for i, env := range []*apitest.Env{a, b} {
		wg.Go(func() {
			if _, err := env.Sign(t, es[i], d.ID); err != nil {
				t.Errorf("replica %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	ctx := context.Background()
	for _, env := range []*apitest.Env{a, b} {
		if err := env.Repo.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	sa, _ := a.Repo.Status(ctx)
	sb, _ := b.Repo.Status(ctx)
	if len(sa.Targets) != 1 || len(sb.Targets) != 1 {
		t.Fatalf("targets after the release: replica a %d, b %d; want 1 each", len(sa.Targets), len(sb.Targets))
	}
	if v := version(sa, "snapshot"); v != 2 {
		t.Errorf("snapshot v%d after ceremony and one release, want v2 (published once)", v)
	}

	// Past half the timestamp's life, both replicas try to re-sign many
	// times at once: one timestamp is written.
	before := version(sa, "timestamp")
	clk.Advance(manifests.DefaultExpiry().Timestamp/2 + time.Minute)
	var writes atomic.Int64
	for range 8 {
		for _, env := range []*apitest.Env{a, b} {
			wg.Go(func() {
				wrote, err := env.Repo.Resign(ctx)
				if err != nil {
					t.Error(err)
				}
				if wrote {
					writes.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if n := writes.Load(); n != 1 {
		t.Errorf("16 concurrent re-signs wrote %d timestamps, want 1", n)
	}
	b.Repo.Refresh(ctx)
	sb, _ = b.Repo.Status(ctx)
	if got := version(sb, "timestamp"); got != before+1 {
		t.Errorf("timestamp v%d, want v%d", got, before+1)
	}
	root := a.RootBytes(t, 1)
	for _, env := range []*apitest.Env{a, b} {
		if _, err := download(t, env, root, patchPath); err != nil {
			t.Errorf("client through %s: %v", env.URL, err)
		}
	}
}

func version(s *manifests.Status, role string) int64 {
	for _, r := range s.Roles {
		if r.Role == role {
			return r.Version
		}
	}
	return 0
}
