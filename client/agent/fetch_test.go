package agent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
)

// cutReader passes n bytes, then fails as a dropped connection does.
type cutReader struct {
	r io.ReadCloser
	n int64
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

func (c *cutReader) Close() error { return c.r.Close() }

// TestSlowLinkIsNotGivenUp: a link that drops every download after 8 KiB
// takes 8 attempts for a 64 KiB update, more than MaxFetchAttempts. Each
// attempt resumes where the last stopped and receives bytes, so the agent
// keeps going and installs, where it used to give the update up as
// E_DOWNLOAD after 5 attempts.
func TestSlowLinkIsNotGivenUp(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	content := make([]byte, 64<<10)
	rand.Read(content)
	env.Publish(t, "cloudmsg/CM-2026-001/update.zip", content, es...)
	env.StartRollout(t, "cloudmsg/CM-2026-001/update.zip")

	u, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	var cuts atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.Contains(resp.Request.URL.Path, "/targets/") && resp.StatusCode/100 == 2 {
			cuts.Add(1)
			resp.Body = &cutReader{r: resp.Body, n: 8 << 10}
		}
		return nil
	}
	rp.ErrorLog = nil
	proxy := httptest.NewServer(rp)
	defer proxy.Close()

	cl, err := client.New(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	var installs atomic.Int64
	a, err := agent.New(agent.Config{Dir: t.TempDir(), Client: cl, Root: env.RootBytes(t, 1),
		Device: agent.Device{Model: "PX-7", Build: "7.2.1", Channel: "stable"},
		Installer: agent.InstallerFunc(func(_ context.Context, u *agent.Update) error {
			b, err := os.ReadFile(u.Path)
			if err != nil || len(b) != len(content) {
				t.Errorf("install of %s: %d bytes, %v; want %d", filepath.Base(u.Path), len(b), err, len(content))
			}
			installs.Add(1)
			return nil
		}),
		Backoff: func(int) time.Duration { return time.Millisecond },
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && (a.Status().Build != "7.5.0" || a.Status().Outbox > 0); i++ {
		if _, err := a.Step(context.Background()); err != nil {
			var se *agent.StateError
			if errors.As(err, &se) {
				t.Fatal(err)
			}
		}
	}
	st := a.Status()
	if installs.Load() != 1 || st.Build != "7.5.0" || len(st.InstalledPatches) != 1 {
		t.Fatalf("after %d cut downloads: %d installs, status %+v; want the update installed once", cuts.Load(), installs.Load(), st)
	}
	if n := cuts.Load(); n <= agent.MaxFetchAttempts {
		t.Errorf("%d downloads; the test needs more than MaxFetchAttempts (%d) to mean anything", n, agent.MaxFetchAttempts)
	}
}
