package apitest

import (
	"net/http"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// NewClient returns a go-tuf updater for the server at baseURL, trusting
// root, with its own HTTP client (go-tuf's default fetcher has no timeout
// and would share the process-wide client) and caches in t.TempDir().
func NewClient(tb testing.TB, baseURL string, root []byte) *updater.Updater {
	tb.Helper()
	return NewClientAt(tb, baseURL, root, tb.TempDir())
}

// NewClientAt is NewClient with its metadata cache in dir, so that a new
// client picks up what an earlier one trusted, as a handset does across
// polls. go-tuf's updater refreshes once per instance.
func NewClientAt(tb testing.TB, baseURL string, root []byte, dir string) *updater.Updater {
	tb.Helper()
	cfg, err := config.New(baseURL+"/tuf/", root)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.RemoteTargetsURL = baseURL + "/targets/"
	cfg.LocalMetadataDir = dir
	cfg.LocalTargetsDir = tb.TempDir()
	if err := cfg.SetDefaultFetcherHTTPClient(&http.Client{Timeout: 10 * time.Second}); err != nil {
		tb.Fatal(err)
	}
	up, err := updater.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return up
}
