package handsetsim_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/server/handsets"
)

// TestReleaseYoungerThanSharedView: handsets share one go-tuf view for
// TUFMaxAge (an hour here). A release published and rolled out after the
// view was made is not in it; the handsets offered it must look again,
// verify and install it, not report it failed (E_TUF_VERIFY), as they did
// when a shared view was trusted for its whole age.
func TestReleaseYoungerThanSharedView(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	publish := func(path, patchID, installs string) {
		content := make([]byte, 4<<10)
		rand.Read(content)
		custom := apitest.PatchCustom()
		custom.PatchID, custom.BuildMax, custom.InstallsBuild = patchID, "7.9.9", installs
		v := env.DraftRelease(t, path, content, custom)
		env.MustSign(t, v.ID, es...)
	}
	publish("cloudmsg/CM-2026-001/update.zip", "CM-2026-001", "7.5.0")
	first := env.StartRollout(t, "cloudmsg/CM-2026-001/update.zip")

	c, err := client.New(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	devs := []handsetsim.Handset{
		handsetsim.NewHandset("PX-7", "7.2.1", "stable", ""),
		handsetsim.NewHandset("PX-7", "7.2.1", "stable", ""),
	}
	results := make(chan struct{}, 16)
	f, err := handsetsim.New(handsetsim.Config{Client: c, Root: env.RootBytes(t, 1), TUFDir: t.TempDir(),
		TUFMaxAge: time.Hour, TimeScale: 0.001, Workers: 2,
		OnResult: func(i, _ int, code string) {
			if code != "" {
				t.Errorf("handset %d: install failed with %s", i, code)
			}
			results <- struct{}{}
		}}, devs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(context.Background(), ctx) }()
	defer func() { stop(); <-done }()

	wait := func(n int) {
		t.Helper()
		for range n {
			select {
			case <-results:
			case <-time.After(time.Minute):
				t.Fatalf("no install result within a minute; counts %+v", f.Counts())
			}
		}
	}
	wait(2)
	if _, err := env.App.Rollouts.Complete(context.Background(), first.ID, "test-operator", "every handset has it"); err != nil {
		t.Fatal(err)
	}
	publish("cloudmsg/CM-2026-002/update.zip", "CM-2026-002", "7.6.0")
	env.StartRollout(t, "cloudmsg/CM-2026-002/update.zip")
	wait(2)
	stop()
	<-done

	c2 := f.Counts()
	if n := c2.Errors["tuf:E_TUF_VERIFY"]; n != 0 {
		t.Errorf("%d offers did not verify: %+v", n, c2.Errors)
	}
	for i, h := range f.Handsets() {
		if len(h.Installed) != 2 || h.Installed[1] != "CM-2026-002" || h.Build != "7.6.0" || h.Result() != handsetsim.ResultInstalled {
			t.Errorf("handset %d runs %v on %s (result %d), want both releases installed, on 7.6.0", i, h.Installed, h.Build, h.Result())
		}
		if !h.Compliant() || h.Messaging != handsets.MessagingOptedOut {
			t.Errorf("handset %d: messaging %s, numbers encrypted %v; want what the signed patch says", i, h.Messaging, h.NumberEncryption)
		}
	}
}
