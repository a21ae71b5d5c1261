package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/sqlstore"
)

// TestAcknowledgedReportsSurviveSIGKILL has handsets send install reports
// to the real otad binary while it is SIGKILLed at a random moment, many
// times over; after each kill, every report that was answered 2xx must be
// in the database. A 2xx is the server's promise that a report is durable.
func TestAcknowledgedReportsSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the otad binary")
	}
	t.Setenv("OTAD_REPORT_RATE", "0") // the handsets here report far faster than real ones
	bin := buildOtad(t)
	dir := t.TempDir()
	// A request only bounds a hang: a sender whose request times out
	// stops as if the server were gone.
	hc := &http.Client{Timeout: time.Minute}
	const rounds, senders = 25, 4
	total := 0
	for round := range rounds {
		p := startOtad(t, bin, dir)
		base := "http://" + p.addr
		if round == 0 {
			publishPatch(t, bin, dir, base) // reports must name a published patch
		}
		srv, err := client.New(base, client.WithHTTPClient(hc))
		if err != nil {
			t.Fatal(err)
		}
		// Enrolled without a device key (client.Enroll always signs with
		// one), through Do.
		var enrolled wire.EnrollAnswer
		if _, err := srv.Do(context.Background(), http.MethodPost, wire.APIPrefix+"/devices",
			wire.EnrollBody{Model: "PX-7", Build: "7.1.0", Channel: "stable"}, &enrolled); err != nil {
			t.Fatal(err)
		}
		handset := srv.WithToken(enrolled.Token)

		var mu sync.Mutex
		acked := map[string]bool{}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					id := fmt.Sprintf("r%d-%d-%d", round, s, i)
					_, err := handset.Report(context.Background(),
						wire.ReportBody{ReportID: id, PatchID: "CM-2026-001", State: "downloading", At: ptr(time.Now())})
					var badAnswer *client.BadAnswerError
					switch {
					case err == nil, errors.As(err, &badAnswer): // a 2xx answer, the server's promise
						mu.Lock()
						acked[id] = true
						mu.Unlock()
					case client.AsError(err) == nil:
						return // the server is gone
					}
				}
			})
		}
		// Kill at a random moment once reports are flowing: waiting for
		// the first acknowledgement keeps a slow start from leaving the
		// round with nothing to check. On a loaded machine the first can
		// take seconds; the limit only bounds a hang.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
		p.kill()
		close(stop)
		wg.Wait()

		db, err := sqlstore.Open(context.Background(), "sqlite:"+filepath.Join(dir, "otad.db"), sqlstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		stored, err := db.Devices().Reports(context.Background(), enrolled.DeviceID)
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, r := range stored {
			have[r.ID] = true
		}
		for id := range acked {
			if !have[id] {
				t.Fatalf("round %d: report %s was acknowledged but is not in the database after SIGKILL", round, id)
			}
		}
		if len(acked) == 0 {
			t.Fatalf("round %d: no report was acknowledged before the kill", round)
		}
		total += len(acked)
	}
	t.Logf("%d SIGKILLs, %d acknowledged reports, all found afterwards", rounds, total)
}

func ptr[T any](v T) *T { return &v }

// publishPatch runs the key ceremony on the otad serving base from dataDir
// and publishes apitest.PatchCustom's patch.
func publishPatch(tb testing.TB, bin, dataDir, base string) {
	tb.Helper()
	out, err := exec.Command(bin, "token", "create", "--name", "durability-test", "--role", "release-engineer",
		"--data-dir", dataDir, "--log-format", "json").Output()
	if err != nil {
		tb.Fatalf("otad token create: %v", err)
	}
	env := &apitest.Env{URL: base, Token: strings.TrimSpace(string(out))}
	es := apitest.NewEngineers(tb, 2)
	env.Ceremony(tb, es, 2)
	env.Publish(tb, "cloudmsg/CM-2026-001/update.zip", bytes.Repeat([]byte("patch"), 1000), es...)
}
