package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
)

// TestVerifier runs the exported verifier, which the agent, the demo's
// fleet and the handset simulator share, against a real repository: an
// offer that matches the signed metadata verifies and its bytes download;
// an offer that disagrees with it, or a patch for another model or build,
// is refused with the code a handset reports, not to be retried; a
// refresh that cannot reach the server is worth retrying; and a second
// refresh starts from the root go-tuf kept in the folder.
func TestVerifier(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	content := []byte("the privacy patch")
	env.Publish(t, "px7/patch.bin", content, es[0])
	h := sha256.Sum256(content)
	sum := hex.EncodeToString(h[:])
	custom := apitest.PatchCustom()

	dir := t.TempDir()
	hc := &http.Client{Timeout: 10 * time.Second}
	v := &agent.Verifier{MetadataURL: env.URL + wire.MetadataPrefix, TargetsURL: env.URL + wire.TargetsPrefix,
		Root: env.RootBytes(t, 1), Dir: dir, HTTPClient: hc}
	view, err := v.Refresh()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	offer := wire.OfferAnswer{Target: "px7/patch.bin", Length: int64(len(content)), SHA256: sum, PatchID: custom.PatchID}
	tg, err := view.Check(offer)
	if err != nil {
		t.Fatalf("check of the offer as signed: %v", err)
	}
	if tg.SHA256 != sum || tg.Length != int64(len(content)) || tg.Custom.InstallsBuild != custom.InstallsBuild {
		t.Fatalf("signed target %+v, want sha256 %s, length %d, installs_build %s", tg, sum, len(content), custom.InstallsBuild)
	}
	if err := tg.For("PX-7", "7.4.0"); err != nil {
		t.Errorf("For(PX-7, 7.4.0): %v; want the patch to apply", err)
	}
	for _, mb := range [][2]string{{"PX-8", "7.4.0"}, {"PX-7", "7.5.0"}, {"PX-7", "6.9.0"}} {
		err := tg.For(mb[0], mb[1])
		if err == nil || agent.Code(err) != agent.CodeNotApplicable || agent.Transient(err) {
			t.Errorf("For(%s, %s): %v; want %s, not transient", mb[0], mb[1], err, agent.CodeNotApplicable)
		}
	}
	dst := filepath.Join(t.TempDir(), "patch")
	if _, err := tg.Fetch(t.Context(), dst, agent.FetchOptions{Client: hc}); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if got, err := os.ReadFile(dst); err != nil || string(got) != string(content) {
		t.Fatalf("fetched %q, %v; want the published bytes", got, err)
	}

	for name, o := range map[string]wire.OfferAnswer{
		"longer":        {Target: offer.Target, Length: offer.Length + 1, SHA256: sum, PatchID: offer.PatchID},
		"other sha256":  {Target: offer.Target, Length: offer.Length, SHA256: hex.EncodeToString(make([]byte, 32)), PatchID: offer.PatchID},
		"other patch":   {Target: offer.Target, Length: offer.Length, SHA256: sum, PatchID: "CM-2026-999"},
		"unsigned path": {Target: "px7/other.bin", Length: offer.Length, SHA256: sum, PatchID: offer.PatchID},
	} {
		if _, err := view.Check(o); err == nil || agent.Code(err) != agent.CodeVerify || agent.Transient(err) {
			t.Errorf("check of an offer with %s: %v; want %s, not transient", name, err, agent.CodeVerify)
		}
	}

	// The folder keeps the root go-tuf verified: a refresh starts from
	// it, whatever Root says.
	again := *v
	again.Root = []byte("not a root")
	if _, err := again.Refresh(); err != nil {
		t.Errorf("refresh from the kept root: %v", err)
	}

	// A server that cannot be reached: worth retrying.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "http://" + ln.Addr().String()
	ln.Close()
	down := &agent.Verifier{MetadataURL: gone + wire.MetadataPrefix, TargetsURL: gone + wire.TargetsPrefix,
		Root: env.RootBytes(t, 1), Dir: t.TempDir(), HTTPClient: hc}
	if _, err := down.Refresh(); agent.Code(err) != agent.CodeDownload || !agent.Transient(err) {
		t.Errorf("refresh from a closed port: %v; want %s, transient", err, agent.CodeDownload)
	}
}
