package apitest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// tufjsResult is the JSON line scripts/tufjs/verify.mjs prints.
type tufjsResult struct {
	OK          bool   `json:"ok"`
	Target      string `json:"target"`
	Length      int64  `json:"length"`
	SHA256      string `json:"sha256"`
	RootVersion int64  `json:"root_version"`
	Stage       string `json:"stage"`
	Error       string `json:"error"`
}

// tufjs runs tuf-js against one repository URL, the way a handset built on
// another TUF implementation would.
type tufjs struct {
	script string
	root   []byte // trusted root that bootstraps an empty cache
}

func newTufjs(t *testing.T) *tufjs {
	t.Helper()
	script := os.Getenv("OTA_TEST_TUFJS")
	if script == "" {
		t.Skip("OTA_TEST_TUFJS not set; run ./scripts/test.sh to run the tuf-js tests")
	}
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("OTA_TEST_TUFJS: %v (run scripts/tufjs.sh install)", err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("OTA_TEST_TUFJS is set but node is not on PATH: %v", err)
	}
	return &tufjs{script: script}
}

// fetch refreshes a tuf-js client with its metadata cache in cache and
// downloads target from baseURL. It returns the result line and, on
// success, the verified bytes; err is set when verify.mjs exits non-zero.
func (j *tufjs) fetch(t *testing.T, baseURL, cache, target string) (tufjsResult, []byte, error) {
	t.Helper()
	dir := t.TempDir()
	rootFile, out := filepath.Join(dir, "root.json"), filepath.Join(dir, "target.bin")
	if err := os.WriteFile(rootFile, j.root, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", j.script,
		"--metadata-url", baseURL+"/tuf/", "--targets-url", baseURL+"/targets/",
		"--root", rootFile, "--target", target, "--out", out, "--cache", cache)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res tufjsResult
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
		t.Fatalf("verify.mjs printed no result line (%v): stdout %q stderr %q", runErr, stdout.String(), stderr.String())
	}
	if runErr != nil {
		var ee *exec.ExitError
		if !errors.As(runErr, &ee) {
			t.Fatalf("running node: %v", runErr)
		}
		if res.OK {
			t.Fatalf("verify.mjs exited with %v but printed ok: %s", runErr, stdout.String())
		}
		if !strings.Contains(stderr.String(), res.Stage) {
			t.Errorf("stderr %q does not name the failed stage %q", stderr.String(), res.Stage)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("verify.mjs failed at %s but wrote %s", res.Stage, out)
		}
		return res, nil, runErr
	}
	if !res.OK {
		t.Fatalf("verify.mjs exited 0 without ok: %s", stdout.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return res, data, nil
}

// mustFetch is fetch that fails the test unless tuf-js accepts and the
// bytes are want.
func (j *tufjs) mustFetch(t *testing.T, baseURL, cache, target string, want []byte) tufjsResult {
	t.Helper()
	res, data, err := j.fetch(t, baseURL, cache, target)
	if err != nil {
		t.Fatalf("tuf-js refused the honest repository at %s: %s", res.Stage, res.Error)
	}
	if !bytes.Equal(data, want) {
		t.Fatalf("tuf-js downloaded %d bytes that differ from the published %d", len(data), len(want))
	}
	if res.Length != int64(len(want)) || res.SHA256 != apitest.SHA256Hex(want) || res.Target != target {
		t.Fatalf("result %+v does not describe the published %s (%d bytes, sha256 %s)", res, target, len(want), apitest.SHA256Hex(want))
	}
	return res
}

// mustRefuse fails the test unless tuf-js refuses at stage with an error
// that mentions wantErr.
func (j *tufjs) mustRefuse(t *testing.T, baseURL, cache, target, stage, wantErr string) {
	t.Helper()
	res, data, err := j.fetch(t, baseURL, cache, target)
	if err == nil {
		t.Fatalf("tuf-js accepted the attack (%d bytes)", len(data))
	}
	t.Logf("refused at %s: %s", res.Stage, res.Error)
	if res.Stage != stage || !strings.Contains(res.Error, wantErr) {
		t.Errorf("refused at %s with %q, want at %s with an error mentioning %q", res.Stage, res.Error, stage, wantErr)
	}
}

func getTimestamp(t *testing.T, env *apitest.Env) []byte {
	t.Helper()
	resp, err := http.Get(env.URL + "/tuf/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET timestamp.json: %d %v", resp.StatusCode, err)
	}
	return b
}

// TestTufJSVerifiesRepository has tuf-js, a TUF client written
// independently of go-tuf, fetch the patch from the repository: a
// repository that only go-tuf accepts is not done. It also checks that
// tuf-js refuses what an attacker between it and the server could serve,
// and follows a root rotation from root v1.
func TestTufJSVerifiesRepository(t *testing.T) {
	j := newTufjs(t)
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 4)
	env.Ceremony(t, es[:3], 2)
	j.root = env.RootBytes(t, 1)

	patch := randomBytes(t, 1<<20)
	if v := env.Publish(t, patchPath, patch, es[0], es[1]); v.State != manifests.DraftPublished {
		t.Fatalf("release not published: %+v", v.Thresholds)
	}
	oldTimestamp := getTimestamp(t, env)

	t.Run("fresh client downloads the patch", func(t *testing.T) {
		res := j.mustFetch(t, env.URL, t.TempDir(), patchPath, patch)
		if res.RootVersion != 1 {
			t.Errorf("tuf-js trusts root v%d, want v1", res.RootVersion)
		}
	})

	t.Run("unknown target is not offered", func(t *testing.T) {
		j.mustRefuse(t, env.URL, t.TempDir(), "cloudmsg/not-released.zip", "target-info", "not in the trusted targets")
	})

	// A second release, so that there is an older timestamp to replay.
	patch2 := randomBytes(t, 1<<20)
	env.Publish(t, patchPath, patch2, es[1], es[2])
	proxy := apitest.NewProxy(t, env.URL)

	t.Run("tampered artifact is refused", func(t *testing.T) {
		proxy.Mutate(func(path string, body []byte) []byte {
			if strings.HasPrefix(path, "/targets/") {
				b := bytes.Clone(body)
				b[len(b)/2] ^= 0x01
				return b
			}
			return body
		})
		defer proxy.Mutate(nil)
		j.mustRefuse(t, proxy.URL, t.TempDir(), patchPath, "download", "hash")
	})

	// The handset's cache survives the attacks and the rotation below.
	handset := t.TempDir()
	t.Run("timestamp rollback is refused", func(t *testing.T) {
		proxy.Mutate(nil)
		j.mustFetch(t, proxy.URL, handset, patchPath, patch2)
		proxy.Mutate(func(path string, body []byte) []byte {
			if strings.HasSuffix(path, "/timestamp.json") {
				return oldTimestamp
			}
			return body
		})
		j.mustRefuse(t, proxy.URL, handset, patchPath, "refresh", "less than current version")
		// With the attacker gone, the same cache recovers.
		proxy.Mutate(nil)
		j.mustFetch(t, proxy.URL, handset, patchPath, patch2)
	})

	t.Run("root rotation is followed from root v1", func(t *testing.T) {
		// Replace engineer 3 by engineer 4 in both roles: the new root
		// needs the old root's threshold (engineers 1 and 2) and its own.
		keys := apitest.PublicKeys([]*apitest.Engineer{es[0], es[1], es[3]})
		var d manifests.DraftView
		if err := env.Do("POST", "/repo/root-drafts", wire.RootDraftRequest{RootKeys: keys, RootThreshold: 2,
			TargetsKeys: keys, TargetsThreshold: 2}, &d); err != nil {
			t.Fatal(err)
		}
		if v := env.MustSign(t, d.ID, es[0], es[1]); v.State != manifests.DraftPublished {
			t.Fatalf("rotation not published: %+v", v.Thresholds)
		}
		for name, cache := range map[string]string{"fresh cache": t.TempDir(), "handset cache": handset} {
			res := j.mustFetch(t, env.URL, cache, patchPath, patch2)
			if res.RootVersion != 2 {
				t.Errorf("%s: tuf-js trusts root v%d after the rotation, want v2", name, res.RootVersion)
			}
		}
		// A release signed under the new root, by the new engineer.
		patch3 := randomBytes(t, 64<<10)
		if v := env.Publish(t, patchPath, patch3, es[3], es[0]); v.State != manifests.DraftPublished {
			t.Fatalf("release under root v2 not published: %+v", v.Thresholds)
		}
		j.mustFetch(t, env.URL, t.TempDir(), patchPath, patch3)
		j.mustFetch(t, env.URL, handset, patchPath, patch3)
	})
}
