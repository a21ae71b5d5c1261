package agent_test

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
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/delta"
	"github.com/patchfleet/ota/server/api/wire"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestAgentAppliesDelta: a handset on 7.4.1 is offered the release's
// binary delta from 7.4.1, applies it to its build's image, and hands
// the installer the full image, checked against its signed hash. One
// whose image is not what 7.4.1 shipped gets a result that does not
// match: it reports E_INCREMENTAL_APPLY without installing anything, and
// is offered the full image next.
func TestAgentAppliesDelta(t *testing.T) {
	clk := &apitest.AheadClock{}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	base := randomBytes(1, 96<<10)
	full := append(bytes.Clone(base[:5000]), append([]byte("7.5.0 turns cloud messaging opt-in"), base[5000:]...)...)
	var d bytes.Buffer
	if err := delta.Make(t.Context(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(full), int64(len(full)), &d, nil); err != nil {
		t.Fatal(err)
	}
	const path = "fw/px7-7.5.0.zip"
	custom := apitest.PatchCustom()
	env.Upload(t, path, full)
	incPath := "fw/px7-7.5.0.from-7.4.1.zip"
	env.Upload(t, incPath, d.Bytes())
	draft, err := env.Client().CreateRelease(t.Context(), wire.ReleaseRequest{Path: path, Length: int64(len(full)),
		SHA256: apitest.SHA256Hex(full), Custom: custom, Incrementals: []wire.ReleaseIncremental{{FromBuild: "7.4.1",
			Path: incPath, Length: int64(d.Len()), SHA256: apitest.SHA256Hex(d.Bytes()), Format: manifests.FormatZstdPatch}}})
	if err != nil {
		t.Fatal(err)
	}
	env.MustSign(t, draft.ID, es...)
	env.StartRollout(t, path)

	dir := t.TempDir()
	good, wrong := filepath.Join(dir, "good.img"), filepath.Join(dir, "wrong.img")
	if err := os.WriteFile(good, base, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, randomBytes(2, len(base)), 0o600); err != nil {
		t.Fatal(err)
	}
	type install struct {
		target      string
		content     []byte
		incremental *manifests.Incremental
	}
	run := func(name, image string) (*agent.Agent, *[]install) {
		var got []install
		c, err := client.New(env.URL)
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(agent.Config{Dir: filepath.Join(dir, name), Client: c, Root: env.RootBytes(t, 1),
			Device: agent.Device{Model: "PX-7", Build: "7.4.1", Channel: "stable"}, CurrentImage: image,
			Now: clk.Now, Backoff: func(int) time.Duration { return time.Millisecond },
			Installer: agent.InstallerFunc(func(_ context.Context, u *agent.Update) error {
				b, err := os.ReadFile(u.Path)
				got = append(got, install{target: u.Target, content: b, incremental: u.Incremental})
				return err
			})})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := a.RunUntilIdle(ctx); err != nil {
			t.Fatal(err)
		}
		return a, &got
	}

	a, got := run("good", good)
	if len(*got) != 1 || (*got)[0].target != path || !bytes.Equal((*got)[0].content, full) || (*got)[0].incremental == nil {
		t.Fatalf("installs %+v; want one of the full image %s rebuilt from the delta", *got, path)
	}
	if st := a.Status(); st.Build != "7.5.0" {
		t.Errorf("after the install the agent runs %s, want 7.5.0", st.Build)
	}

	b, got := run("wrong", wrong)
	if len(*got) != 0 {
		t.Fatalf("a delta applied to the wrong image was installed: %+v", *got)
	}
	reps, err := env.App.Fleet.Store.Reports(t.Context(), b.Status().DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	last := reps[len(reps)-1]
	if last.State != "failed" || last.ErrorCode != agent.CodeIncrementalApply || last.Target != incPath {
		t.Fatalf("last report %+v; want failed with %s on %s", last, agent.CodeIncrementalApply, incPath)
	}
	// After the retry backoff the same handset is offered the full image.
	clk.Advance(2 * time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := b.RunUntilIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.Build != "7.5.0" {
		t.Fatalf("after the fallback the agent runs %s, want 7.5.0", st.Build)
	}
	if len(*got) != 1 || (*got)[0].target != path || !bytes.Equal((*got)[0].content, full) || (*got)[0].incremental != nil {
		t.Fatalf("installs after the fallback %+v; want the full image as offered", *got)
	}
}
