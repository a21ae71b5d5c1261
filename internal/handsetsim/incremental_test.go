package handsetsim_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/delta"
	"github.com/patchfleet/ota/server/api/wire"
)

// image is a build's full image: seeded random bytes, each build the
// one before with a few changes, as builds of one phone are.
func image(prev []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	if prev == nil {
		b := make([]byte, 192<<10)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	next := append([]byte(nil), prev...)
	for range 40 {
		next[r.IntN(len(next))] = byte(r.Uint32())
	}
	return append(next[:1000], append([]byte("a module of the new build"), next[1000:]...)...)
}

// TestIncrementalPayloads is the incremental payloads' end-to-end run:
// handsets on three starting builds, a release with incrementals for two
// of them (a binary delta from otactl's delta package for 7.4.1, a
// maker's package for 7.4.2), signed 2 of 3. Each handset gets the
// payload for its build, verified by go-tuf against the signed release;
// the 7.4.1 handsets apply the delta to their build's image and check
// the result's hash. A quarter of the 7.4.2 handsets fail to apply the
// package and are offered the full image next. The rollout report's
// bytes are the sums of the payloads the handsets took.
func TestIncrementalPayloads(t *testing.T) {
	clk := &apitest.AheadClock{}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 3)
	env.Ceremony(t, es, 2)

	v740 := image(nil, 1)
	v741 := image(v740, 2)
	v742 := image(v741, 3)
	full := image(v742, 4)
	dir := t.TempDir()
	images := map[string]string{}
	for build, b := range map[string][]byte{"7.4.0": v740, "7.4.1": v741, "7.4.2": v742} {
		images[build] = filepath.Join(dir, build+".img")
		if err := os.WriteFile(images[build], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var d741 bytes.Buffer
	if err := delta.Make(t.Context(), bytes.NewReader(v741), int64(len(v741)), bytes.NewReader(full), int64(len(full)), &d741, nil); err != nil {
		t.Fatal(err)
	}
	pkg742 := image(nil, 5)[:24<<10] // the maker's package: opaque to the server and the agent
	if d741.Len() > len(full)/20 {
		t.Fatalf("the delta is %d bytes of the full image's %d", d741.Len(), len(full))
	}

	const path = "cloudmsg/CM-2026-001/update.zip"
	custom := apitest.PatchCustom()
	env.Upload(t, path, full)
	req := wire.ReleaseRequest{Path: path, Length: int64(len(full)), SHA256: apitest.SHA256Hex(full), Custom: custom}
	for _, inc := range []struct {
		build, format string
		content       []byte
	}{{"7.4.1", manifests.FormatZstdPatch, d741.Bytes()}, {"7.4.2", manifests.FormatPackage, pkg742}} {
		p := "cloudmsg/CM-2026-001/update.from-" + inc.build + ".zip"
		env.Upload(t, p, inc.content)
		req.Incrementals = append(req.Incrementals, wire.ReleaseIncremental{FromBuild: inc.build, Path: p,
			Length: int64(len(inc.content)), SHA256: apitest.SHA256Hex(inc.content), Format: inc.format})
	}
	draft, err := env.Client().CreateRelease(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if v := env.MustSign(t, draft.ID, es[0], es[2]); v.State != manifests.DraftPublished {
		t.Fatalf("release not published after 2 of 3 signatures: %+v", v.Thresholds)
	}

	c, err := client.New(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	const perBuild = 100
	builds := []string{"7.4.0", "7.4.1", "7.4.2"}
	devs := make([]handsetsim.Handset, 0, 3*perBuild)
	for _, b := range builds {
		for range perBuild {
			devs = append(devs, handsetsim.NewHandset("PX-7", b, "stable", ""))
		}
	}
	enroll, err := handsetsim.New(handsetsim.Config{Client: c, EnrollOnly: true, Workers: 8}, devs)
	if err != nil {
		t.Fatal(err)
	}
	if !enroll.RunUntilSettled(context.Background(), 2*time.Minute) {
		t.Fatalf("enrollment did not finish: %+v", enroll.Counts())
	}
	minResults := int64(10_000) // the failed applies must not halt it
	var r wire.Rollout
	env.Widen(t, "POST", "/rollouts", wire.RolloutRequest{Release: path, Stages: []float64{100}, MinResults: &minResults,
		Backoff: []string{"1m"}, Reason: "privacy patch"}, &r)

	failsToApply := func(i int) bool { return i >= 2*perBuild && i%4 == 0 }
	fleet, err := handsetsim.New(handsetsim.Config{Client: c, Root: env.RootBytes(t, 1), TUFDir: t.TempDir(), Workers: 8,
		TimeScale: 0.001, RetryFailed: true, Images: images,
		Install: func(i int, h *handsetsim.Handset, _ int) handsetsim.Outcome {
			if inc := h.Incremental(); inc != nil && inc.Format == manifests.FormatPackage && failsToApply(i) {
				return handsetsim.Outcome{Code: agent.CodeIncrementalApply, Message: "package does not apply"}
			}
			return handsetsim.Outcome{}
		}}, enroll.Handsets())
	if err != nil {
		t.Fatal(err)
	}
	// The server's clock runs a minute ahead every 100 ms, so that the
	// retry backoff (1 minute at least) ends in the run.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				clk.Advance(time.Minute)
			}
		}
	}()
	if !fleet.RunUntilSettled(context.Background(), 3*time.Minute) {
		t.Fatalf("the fleet did not settle: %+v", fleet.Counts())
	}
	if counts := fleet.Counts(); counts.Installed != int64(len(devs)) {
		t.Fatalf("handsets: %+v; want all %d installed", counts, len(devs))
	}

	// Each handset took the payload for its build, and a failed apply
	// the full image after it.
	payload := map[string]int64{"7.4.0": int64(len(full)), "7.4.1": int64(d741.Len()), "7.4.2": int64(len(pkg742))}
	var offered, fullCost int64
	for i, h := range fleet.Handsets() {
		build := builds[i/perBuild]
		n, got := h.Offers()
		want, wantN := payload[build], 1
		if failsToApply(i) {
			want, wantN = payload[build]+int64(len(full)), 2
		}
		if n != wantN || got != want || h.Build != custom.InstallsBuild {
			t.Fatalf("handset %d on %s: %d offers of %d bytes, now on %s; want %d offers of %d bytes, on %s",
				i, build, n, got, h.Build, wantN, want, custom.InstallsBuild)
		}
		offered += got
		fullCost += int64(n) * int64(len(full))
	}

	rep, err := env.Client().RolloutReport(t.Context(), r.ID)
	if err != nil {
		t.Fatal(err)
	}
	b := rep.Bytes
	if b.Offered != offered || b.Full != fullCost || b.Saved != fullCost-offered {
		t.Errorf("report bytes: offered %d, full %d, saved %d; the handsets took %d, full images would be %d",
			b.Offered, b.Full, b.Saved, offered, fullCost)
	}
	failed := int64(perBuild / 4)
	wantRows := map[string][2]int64{
		"":      {perBuild + failed, (perBuild + failed) * int64(len(full))},
		"7.4.1": {perBuild, perBuild * payload["7.4.1"]},
		"7.4.2": {perBuild, perBuild * payload["7.4.2"]},
	}
	if len(b.ByPayload) != len(wantRows) {
		t.Fatalf("by payload: %+v; want %d rows", b.ByPayload, len(wantRows))
	}
	for _, row := range b.ByPayload {
		if w := wantRows[row.FromBuild]; row.Offers != w[0] || row.Bytes != w[1] {
			t.Errorf("payload from %q: %d offers, %d bytes; want %d, %d", row.FromBuild, row.Offers, row.Bytes, w[0], w[1])
		}
	}
	t.Logf("%d handsets: %d bytes offered against %d for full images, %d saved (%.0f%%)", len(devs), b.Offered, b.Full,
		b.Saved, 100*float64(b.Saved)/float64(b.Full))
}
