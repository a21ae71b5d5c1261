package app_test

import (
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/server"
)

// TestJobsSampleExposure: every replica's background jobs take the
// exposure sample of the App's clock's minute; two replicas store one
// row per bucket, and the next bucket gets its own.
func TestJobsSampleExposure(t *testing.T) {
	clk := &clock{now: time.Date(2026, 12, 7, 5, 48, 1, 0, time.UTC)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	ctx := t.Context()
	for range 3 {
		if _, err := env.Fleet.Enroll(ctx, server.EnrollRequest{Model: "Pixel-8", Build: "7.4.0", Channel: "stable"}); err != nil {
			t.Fatal(err)
		}
	}
	// The environment's own App sampled at its start, before the
	// enrollments: the next minutes count them.
	clk.Advance(5 * time.Minute)
	a, passesA := replica(t, env, app.Config{Now: clk.Now, RefreshInterval: 10 * time.Millisecond})
	b, passesB := replica(t, env, app.Config{Now: clk.Now, RefreshInterval: 10 * time.Millisecond})
	a.Run(ctx)
	defer a.Close()
	b.Run(ctx)
	defer b.Close()
	waitPass(t, passesA)
	waitPass(t, passesB)
	bucket := time.Date(2026, 12, 7, 5, 53, 0, 0, time.UTC)
	samples := func() []server.ExposureSample {
		t.Helper()
		got, err := env.DB.Reports().ExposureSamples(ctx, bucket, bucket.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := samples(); len(got) != 1 || !got[0].At.Equal(bucket) || got[0].Active != 3 || got[0].Exposed != 3 {
		t.Fatalf("samples after a pass of two replicas: %+v, want one at %v of 3 active, 3 exposed", got, bucket)
	}
	clk.Advance(5 * time.Minute)
	// A pass that starts after the advance: drop the passes recorded so
	// far, then wait for two (the first may have begun before).
	for len(passesA) > 0 {
		<-passesA
	}
	waitPass(t, passesA)
	waitPass(t, passesA)
	if got := samples(); len(got) != 2 || !got[1].At.Equal(bucket.Add(5*time.Minute)) {
		t.Errorf("samples 5 minutes later: %+v, want two, the second at %v", got, bucket.Add(5*time.Minute))
	}
}
