package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/delta"
)

func TestIncrementalPath(t *testing.T) {
	for name, want := range map[string]string{
		"cm/2026.1/update.zip": "cm/2026.1/update.from-7.4.1.zip",
		"fw/image":             "fw/image.from-7.4.1",
		"a.b/image":            "a.b/image.from-7.4.1",
	} {
		if got := incrementalPath(name, "7.4.1"); got != want {
			t.Errorf("incrementalPath(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestReleaseWithIncrementals: otactl delta make writes a delta that
// rebuilds the new image from the old; release create uploads it and a
// maker's package as incrementals (telling their formats apart by the
// delta's magic), and once signed the release lists them.
func TestReleaseWithIncrementals(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	initRepo(t, srv, alice)
	env := alice.env(srv)

	oldFile := randomFile(t, 1<<20)
	old, err := os.ReadFile(oldFile)
	if err != nil {
		t.Fatal(err)
	}
	next := append(bytes.Clone(old[:4096]), append([]byte("7.5.0: cloud messaging opt-in"), old[4096:]...)...)
	dir := t.TempDir()
	newFile, deltaFile := filepath.Join(dir, "full.zip"), filepath.Join(dir, "from-741.patch")
	if err := os.WriteFile(newFile, next, 0o600); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, env, "delta", "make", "--from", oldFile, "--to", newFile, "--out", deltaFile)
	wantContains(t, "delta make", r.stdout, "wrote "+deltaFile)
	d, err := os.ReadFile(deltaFile)
	if err != nil {
		t.Fatal(err)
	}
	var rebuilt bytes.Buffer
	if _, err := delta.Apply(bytes.NewReader(old), int64(len(old)), bytes.NewReader(d), &rebuilt); err != nil || !bytes.Equal(rebuilt.Bytes(), next) {
		t.Fatalf("the delta does not rebuild the new image (%v)", err)
	}
	if len(d) > 16<<10 {
		t.Errorf("delta of a 1 MiB image with one insertion is %d bytes", len(d))
	}
	pkg := randomFile(t, 8192)

	r = mustRun(t, env, "release", "create", newFile, "--name", "fw/u.zip", "--patch-id", "CM-1", "--installs-build", "7.5.0",
		"--incremental-from", "7.4.1="+deltaFile, "--incremental-from", "7.4.2="+pkg)
	wantContains(t, "release create", r.stdout, "uploaded fw/u.from-7.4.1.zip", "uploaded fw/u.from-7.4.2.zip",
		"incremental from 7.4.1 (zstd-patch)", "incremental from 7.4.2 (package)")
	r = mustRun(t, env, "release", "sign", draftID(t, r), "--key", alice.key, "--yes")
	// What the engineer signs says which payload is which.
	wantContains(t, "release sign", r.stdout, "incrementals=7.4.1:fw/u.from-7.4.1.zip,7.4.2:fw/u.from-7.4.2.zip",
		"incremental=zstd-patch payload of fw/u.zip for build 7.4.1", "incremental=package payload of fw/u.zip for build 7.4.2")
	st := repoStatus(t, srv)
	customs := map[string]manifests.TargetCustom{}
	for _, tg := range st.Targets {
		var c manifests.TargetCustom
		if err := json.Unmarshal(tg.Custom, &c); err != nil {
			t.Fatal(err)
		}
		customs[tg.Path] = c
	}
	if got := customs["fw/u.zip"].Incrementals; got["7.4.1"] != "fw/u.from-7.4.1.zip" || got["7.4.2"] != "fw/u.from-7.4.2.zip" {
		t.Errorf("release incrementals %v", got)
	}
	if inc := customs["fw/u.from-7.4.1.zip"].Incremental; inc == nil || inc.Format != manifests.FormatZstdPatch || inc.Of != "fw/u.zip" {
		t.Errorf("7.4.1 payload: %+v", inc)
	}
	if inc := customs["fw/u.from-7.4.2.zip"].Incremental; inc == nil || inc.Format != manifests.FormatPackage {
		t.Errorf("7.4.2 payload: %+v", inc)
	}

	for _, args := range [][]string{{"--incremental-from", "7.4.1"}, {"--incremental-from", "=x"}} {
		r = otactl(t, env, append([]string{"release", "create", newFile, "--name", "fw/v.zip", "--patch-id", "CM-1"}, args...)...)
		if r.code != exitUsage {
			t.Errorf("release create %v: exit %d, want %d", args, r.code, exitUsage)
		}
	}
	if r = otactl(t, env, "delta", "make", "--from", oldFile); r.code != exitUsage {
		t.Errorf("delta make without --to: exit %d, want %d", r.code, exitUsage)
	}
}
