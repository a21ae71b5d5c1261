package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"strings"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/signing"
)

// exampleServer starts otad on loopback, runs the ceremony with one
// release engineer's key (threshold 1), and returns a client with a
// release engineer's token, the engineer, and what stops the server.
// A real engineer's key stays offline: otactl signs on their machine.
func exampleServer() (*client.Client, *apitest.Engineer, func()) {
	env, stop, err := apitest.Serve(apitest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	key, err := signing.Generate(signing.AlgEd25519)
	if err != nil {
		log.Fatal(err)
	}
	alice := &apitest.Engineer{Name: "alice", Key: key}
	cl, err := client.New(env.URL, client.WithBearer(env.Token))
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	d, err := cl.CreateRootDraft(ctx, wire.RootDraftRequest{RootKeys: apitest.PublicKeys([]*apitest.Engineer{alice}), RootThreshold: 1,
		TargetsKeys: apitest.PublicKeys([]*apitest.Engineer{alice}), TargetsThreshold: 1})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sign(ctx, cl, alice, d); err != nil {
		log.Fatal(err)
	}
	return cl, alice, stop
}

// sign has e sign draft d over its exact bytes and uploads the
// signatures, as otactl release sign does.
func sign(ctx context.Context, cl *client.Client, e *apitest.Engineer, d *manifests.DraftView) (*manifests.DraftView, error) {
	sigs, err := e.Signatures(d)
	if err != nil {
		return nil, err
	}
	return cl.AddSignatures(ctx, d.ID, wire.SignatureUpload{Digest: d.Digest, Signatures: sigs})
}

// release uploads build as path and drafts its release.
func release(ctx context.Context, cl *client.Client, path string, build []byte) (*manifests.DraftView, error) {
	sum := sha256.Sum256(build)
	art, err := cl.UploadArtifact(ctx, client.Upload{Path: path, Body: bytes.NewReader(build),
		Length: int64(len(build)), SHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		return nil, err
	}
	return cl.CreateRelease(ctx, wire.ReleaseRequest{Path: art.Path, Length: art.Length, SHA256: art.SHA256,
		Custom: manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"PX-7"}, InstallsBuild: "7.5.0",
			CloudMessagingDefault: "opt-in", NumberEncryption: "on"}})
}

// A release engineer uploads a build, drafts its release and reads the
// draft back: what it changes, and who still has to sign it.
func ExampleClient_CreateRelease() {
	cl, _, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	d, err := release(ctx, cl, "fw/px7-7.5.0.zip", []byte("the privacy patch"))
	if err != nil {
		log.Fatal(err)
	}
	back, err := cl.Draft(ctx, d.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(back.ID == d.ID, back.Kind, back.State)
	for _, ch := range back.Changes {
		if strings.HasPrefix(ch, "adds ") {
			fmt.Println(ch)
		}
	}
	for _, th := range back.Thresholds {
		fmt.Printf("%s (%s): %d of %d signatures\n", th.Part, th.What, len(th.Signed), th.Threshold)
	}
	// Output:
	// true release pending
	// adds target fw/px7-7.5.0.zip (17 bytes, sha256 4aa5edb8d15f2f7a4a92b524e89fe166f403fa51d3a17c8514641da9dbb297ca): patch CM-2026-001; models PX-7; installs build 7.5.0; cloud messaging opt-in by default; phone number encryption on
	// targets (root v1's targets keys): 0 of 1 signatures
}

// Publishing a release deploys nothing: a rollout offers it, stage by
// stage. A change that widens it past the four-eyes limit is not
// refused: it waits for a second person, and the call says so.
func ExampleClient_CreateRollout() {
	cl, alice, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	d, err := release(ctx, cl, "fw/px7-7.5.0.zip", []byte("the privacy patch"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sign(ctx, cl, alice, d); err != nil {
		log.Fatal(err)
	}
	ch, err := cl.CreateRollout(ctx, wire.RolloutRequest{ID: "ro-privacy", Release: "fw/px7-7.5.0.zip",
		Stages: []float64{10, 50, 100}, Reason: "the privacy patch"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", ch.Rollout.ID, ch.Rollout.State, ch.Rollout.Percent)

	list, err := cl.Rollouts(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range list {
		fmt.Println("listed", r.ID, r.State, r.Release.Target, r.Stages)
	}

	ch, err = cl.AdvanceRollout(ctx, "ro-privacy", "soaked without failures", 100)
	if err != nil {
		log.Fatal(err)
	}
	if a := ch.Pending; a != nil {
		fmt.Println("pending", a.Action, a.ToPercent, a.State)
	}
	// Output:
	// created ro-privacy running 10
	// listed ro-privacy running fw/px7-7.5.0.zip [10 50 100]
	// pending advance 100 pending
}

// An error answer is an *Error: its Code is for programs, its Message
// for people.
func ExampleError() {
	cl, _, stop := exampleServer()
	defer stop()

	_, err := cl.Draft(context.Background(), "d-nope")
	if e := client.AsError(err); e != nil {
		fmt.Println(e.Status, e.Code, client.Temporary(err))
	}
	// Output:
	// 404 not_found false
}
