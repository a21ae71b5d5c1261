package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/manifests"
)

// TestHookContract: the hook gets the file as its last argument and the
// update in its environment; exit 0 is installed; another exit is a
// failure whose code is stdout's last line when it is an E_ code (else
// E_INSTALL) and whose message is stderr's last line.
func TestHookContract(t *testing.T) {
	dir := t.TempDir()
	u := &agent.Update{Path: filepath.Join(dir, "update.bin"), Target: "px7/u.bin", SHA256: "ab12", Length: 42, PatchID: "CM-1"}
	u.Custom.InstallsBuild = "7.5.0"
	for _, tc := range []struct {
		name, script string
		code, msg    string // "" code: success
	}{
		{"ok", `[ "$1" = "$OTA_FILE" ] && [ "$OTA_TARGET $OTA_SHA256 $OTA_LENGTH $OTA_PATCH_ID $OTA_INSTALLS_BUILD" = "px7/u.bin ab12 42 CM-1 7.5.0" ]`, "", ""},
		{"code on stdout", "echo checking; echo E_DISK_FULL; echo 'need 2 GB' >&2; exit 3", "E_DISK_FULL", "need 2 GB"},
		{"no code", "echo 'something broke'; exit 1", "E_INSTALL", "install hook exited with 1"},
		{"code not a code", "echo 'E_disk full'; echo oops >&2; exit 1", "E_INSTALL", "oops"},
		{"not incremental", `[ -z "$OTA_INCREMENTAL_FROM$OTA_INCREMENTAL_FORMAT" ]`, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &hookInstaller{argv: []string{"/bin/sh", "-c", tc.script + "\n", "hook"}, timeout: time.Minute}
			err := h.Install(context.Background(), u)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("hook failed: %v", err)
				}
				return
			}
			var ie *agent.InstallError
			if !errors.As(err, &ie) || ie.Code != tc.code || ie.Err == nil || ie.Err.Error() != tc.msg {
				t.Fatalf("error %#v, want code %s and message %q", err, tc.code, tc.msg)
			}
		})
	}
	// A maker's incremental package: the hook hears its starting build,
	// and its E_INCREMENTAL_APPLY is the report's code.
	inc := *u
	inc.Incremental = &manifests.Incremental{Of: "px7/u.bin", FromBuild: "7.4.1", Format: manifests.FormatPackage}
	h := &hookInstaller{argv: []string{"/bin/sh", "-c", `[ "$OTA_INCREMENTAL_FROM $OTA_INCREMENTAL_FORMAT" = "7.4.1 package" ] && echo E_INCREMENTAL_APPLY && exit 1` + "\n", "hook"},
		timeout: time.Minute}
	var ie *agent.InstallError
	if err := h.Install(context.Background(), &inc); !errors.As(err, &ie) || ie.Code != agent.CodeIncrementalApply {
		t.Fatalf("incremental package: %v; want %s from the hook", err, agent.CodeIncrementalApply)
	}
}

func writeConfig(t *testing.T, c map[string]any) string {
	t.Helper()
	b, _ := json.Marshal(c)
	name := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func validConfig(t *testing.T) map[string]any {
	return map[string]any{"server": "http://127.0.0.1:8080", "state_dir": t.TempDir(), "model": "PX-7", "build": "7.4.0",
		"channel": "stable", "root": "/nonexistent/1.root.json", "install_hook": []string{"/bin/true"}}
}

// TestConfigErrorsNameTheKey: a bad config file is refused with the key
// at fault and what it wants, and exit code 2.
func TestConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		key   string
		value any
		want  string
	}{
		{"server", "ota.example.com", `"server": want the otad URL`},
		{"channel", "Stable", `"channel"`},
		{"region", "Germany", `"region"`},
		{"install_hook", []string{}, `"install_hook"`},
		{"hook_timeout", "soon", `"hook_timeout"`},
		{"imei", "867530012345670", `unknown field "imei"`},
	} {
		c := validConfig(t)
		c[tc.key] = tc.value
		var stderr bytes.Buffer
		if code := run([]string{"--config", writeConfig(t, c)}, &stderr); code != exitConfig || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s=%v: exit %d, %q; want %d and %q", tc.key, tc.value, code, stderr.String(), exitConfig, tc.want)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"--config", writeConfig(t, validConfig(t))}, &stderr); code != exitConfig || !strings.Contains(stderr.String(), "1.root.json") {
		t.Errorf("missing root file: exit %d, %q; want %d and a word on the root", code, stderr.String(), exitConfig)
	}
	stderr.Reset()
	if code := run([]string{"--help"}, &stderr); code != exitOK || !strings.Contains(stderr.String(), "install hook") {
		t.Errorf("--help: exit %d, %q", code, stderr.String())
	}
}

// TestAgentStopsOnSIGTERM: the agent, backing off from a server that
// answers 503, stops at once and exits 0 on SIGTERM.
func TestAgentStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the ota-agent binary")
	}
	_, bin := buildBinaries(t)
	enrolls := make(chan struct{}, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enrolls <- struct{}{}
		w.Header().Set("Retry-After", "600")
		http.Error(w, `{"error":{"code":"unavailable","message":"down for maintenance"}}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	root := filepath.Join(t.TempDir(), "1.root.json")
	os.WriteFile(root, []byte(`{"signed":{"_type":"root"},"signatures":[]}`), 0o600)
	c := validConfig(t)
	c["server"], c["root"] = srv.URL, root
	p := start(t, bin, "--config", writeConfig(t, c), "--log-format", "json")
	select {
	case <-enrolls:
	case <-p.exited:
		t.Fatalf("exited early:\n%s", p.tail(20))
	case <-time.After(time.Minute): // only bounds a hang
		t.Fatal("the agent never called the server")
	}
	waitFor(t, "the agent logs the failed step", time.Minute, func() bool { return len(p.records("update agent step failed")) > 0 })
	begin := time.Now()
	p.signal(syscall.SIGTERM)
	if p.code != 0 || len(p.records("ota-agent stopped")) != 1 {
		t.Fatalf("after SIGTERM: exit %d:\n%s", p.code, p.tail(20))
	}
	if waited := time.Since(begin); waited > 30*time.Second {
		t.Errorf("stopping took %v; the agent waits out a 10-minute Retry-After instead of stopping", waited)
	}
	for _, r := range p.records("update agent step failed") {
		if strings.Contains(r["error"].(string), "127.0.0.1") {
			t.Errorf("the agent logged the server's address: %v", r)
		}
	}
}
