package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/signing"
)

// patchedServer starts otad on loopback with the privacy patch released
// (one release engineer's key, threshold 1) and rolled out to every PX-7
// at once, approved by a second person. It returns the server's URL, its
// root v1 (what a device ships with) and what stops it.
func patchedServer(build []byte) (string, []byte, func()) {
	env, stop, err := apitest.Serve(apitest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	key, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		log.Fatal(err)
	}
	alice := &apitest.Engineer{Name: "alice", Key: key}
	cl, err := client.New(env.URL, client.WithBearer(env.Token))
	if err != nil {
		log.Fatal(err)
	}
	sign := func(d *manifests.DraftView) {
		sigs, err := alice.Signatures(d)
		if err == nil {
			_, err = cl.AddSignatures(ctx, d.ID, wire.SignatureUpload{Digest: d.Digest, Signatures: sigs})
		}
		if err != nil {
			log.Fatal(err)
		}
	}
	keys := apitest.PublicKeys([]*apitest.Engineer{alice})
	d, err := cl.CreateRootDraft(ctx, wire.RootDraftRequest{RootKeys: keys, RootThreshold: 1, TargetsKeys: keys, TargetsThreshold: 1})
	if err != nil {
		log.Fatal(err)
	}
	sign(d)
	sum := sha256.Sum256(build)
	art, err := cl.UploadArtifact(ctx, client.Upload{Path: "fw/px7-7.5.0.zip", Body: bytes.NewReader(build),
		Length: int64(len(build)), SHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		log.Fatal(err)
	}
	d, err = cl.CreateRelease(ctx, wire.ReleaseRequest{Path: art.Path, Length: art.Length, SHA256: art.SHA256,
		Custom: manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7"}, InstallsBuild: "7.5.0",
			CloudMessagingDefault: "opt-in", NumberEncryption: "on"}})
	if err != nil {
		log.Fatal(err)
	}
	sign(d)
	ch, err := cl.CreateRollout(ctx, wire.RolloutRequest{Release: art.Path, Stages: []float64{100}, Reason: "the privacy patch"})
	if err != nil {
		log.Fatal(err)
	}
	if a := ch.Pending; a != nil {
		_, bob, err := env.App.Tokens.Create(ctx, "bob", identity.RoleOperator)
		if err == nil {
			_, err = cl.WithToken(bob).Approve(ctx, a.RolloutID, a.ID, "second pair of eyes")
		}
		if err != nil {
			log.Fatal(err)
		}
	}
	root, err := cl.FirstRoot(ctx)
	if err != nil {
		log.Fatal(err)
	}
	return env.URL, root, stop
}

// A device embeds the agent: a state folder, the root it shipped with,
// who it is, and an installer. Each Step does what is due (enroll, check
// in, verify, download, install, send a report); a device runs them in a
// loop (Run), waiting as long as each returns. The last report, installed,
// leaves the outbox once the server has acknowledged it.
func Example() {
	build := []byte("the privacy patch, build 7.5.0")
	url, root, stop := patchedServer(build)
	defer stop()
	dir, err := os.MkdirTemp("", "agent-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	cl, err := client.New(url, client.WithUserAgent("example-device/1"))
	if err != nil {
		log.Fatal(err)
	}
	installed := make(chan *agent.Update, 1)
	a, err := agent.New(agent.Config{
		Dir:    dir,
		Client: cl,
		Root:   root,
		Device: agent.Device{Model: "PX-7", Build: "7.4.2", Channel: "stable", CloudMessaging: "auto_enabled"},
		Installer: agent.InstallerFunc(func(ctx context.Context, u *agent.Update) error {
			b, err := os.ReadFile(u.Path) // verified against the signed length and sha256
			if err != nil {
				return err
			}
			fmt.Printf("installing %s (%s): %q\n", u.Target, u.PatchID, b)
			installed <- u
			return nil
		}),
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 20 && (a.Status().Build != "7.5.0" || a.Status().Outbox > 0); i++ {
		if _, err := a.Step(ctx); err != nil {
			log.Fatal(err)
		}
	}
	select {
	case <-installed:
	case <-time.After(time.Second):
		log.Fatal("nothing installed")
	}
	st := a.Status()
	fmt.Println("now on", st.Build, "with", st.InstalledPatches, "and", st.Outbox, "reports unacknowledged")
	// Output:
	// installing fw/px7-7.5.0.zip (CM-2026-001): "the privacy patch, build 7.5.0"
	// now on 7.5.0 with [CM-2026-001] and 0 reports unacknowledged
}
