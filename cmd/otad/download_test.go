package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/blobtest"
	"github.com/patchfleet/ota/server/identity"
)

// TestDownloadStallTimeoutFlag: --download-stall-timeout (or its
// variable) reaches the artifact downloads: a client that stops reading is
// disconnected after it, long before the 60 s default or the write timeout
// would, and a value that is not positive names the setting.
func TestDownloadStallTimeoutFlag(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantFlag string
	}{
		{"flag", []string{"--download-stall-timeout", "1s", "--write-timeout", "30s"}, nil, ""},
		{"environment", nil, map[string]string{"OTAD_DOWNLOAD_STALL_TIMEOUT": "1s", "OTAD_WRITE_TIMEOUT": "30s"}, ""},
		{"zero", []string{"--download-stall-timeout", "0s"}, nil, "download-stall-timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serveConfig(t, tc.args, tc.env)
			if tc.wantFlag != "" {
				wantSettingError(t, cfg, tc.wantFlag)
				return
			}
			m, logs := startMain(t, cfg)
			const size = 20 << 20
			content, err := io.ReadAll(io.LimitReader(blobtest.NewReader(1), size))
			if err != nil {
				t.Fatal(err)
			}
			// /targets/ serves published targets only.
			_, secret, err := identity.Tokens{Store: m.DB.Tokens(), Users: m.DB.Users()}.Create(t.Context(), "download-test", identity.RoleReleaseEngineer)
			if err != nil {
				t.Fatal(err)
			}
			env := &apitest.Env{URL: "http://" + m.Addr(), Token: secret}
			es := apitest.NewEngineers(t, 1)
			env.Ceremony(t, es, 1)
			env.Publish(t, "big.bin", content, es...)
			// A 64 KiB receive buffer keeps the kernel from taking in the
			// whole artifact for the client that stopped reading.
			d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
				})
				return errors.Join(err, serr)
			}}
			client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
			resp, err := client.Get(env.URL + "/" + manifests.TargetKey("big.bin", apitest.SHA256Hex(content)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
				t.Fatal(err)
			}
			stopped := time.Now()
			for !strings.Contains(logs.String(), `"download ended early"`) {
				if time.Since(stopped) > 2*time.Minute { // only bounds a hang
					t.Fatalf("the stalled download was not closed 2 minutes after the client stopped reading:\n%s", grepLines(logs.String(), "targets"))
				}
				time.Sleep(50 * time.Millisecond)
			}
			if n, err := io.Copy(io.Discard, resp.Body); err == nil || 1<<20+n >= size {
				t.Errorf("after the stall: read %d more bytes, error %v; want the connection closed before the end", n, err)
			}
		})
	}
}
