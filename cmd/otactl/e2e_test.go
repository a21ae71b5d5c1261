package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
)

// TestWorkflow runs the release engineers' workflow against a real server:
// the 2-of-3 ceremony, a release, a yank and a root rotation, each
// published only at its thresholds.
func TestWorkflow(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	bob := newEngineer(t, srv, "bob")
	carol := newEngineer(t, srv, "carol", "--alg", "ecdsa-p256")

	t.Run("key files", func(t *testing.T) {
		fi, err := os.Stat(alice.key)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("key file mode %o, want 600", mode)
		}
		for _, f := range []string{alice.key, alice.pub} {
			r := mustRun(t, nil, "key", "show", f)
			wantContains(t, "key show "+f, r.stdout, "key id: "+alice.id, `"keyval"`)
			if strings.Contains(r.stdout, "private") {
				t.Errorf("key show %s prints private material:\n%s", f, r.stdout)
			}
		}
		r := otactl(t, alice.env(srv), "key", "generate", "--out", alice.key)
		if r.code == 0 || !strings.Contains(r.stderr, "exists") {
			t.Errorf("key generate over an existing key: exit %d, stderr %q; want a refusal", r.code, r.stderr)
		}
	})

	a, b, c := alice.env(srv), bob.env(srv), carol.env(srv)
	r := mustRun(t, a, "status")
	wantContains(t, "status before init", r.stdout, "not initialized")

	// The ceremony: root and targets 2 of 3.
	r = mustRun(t, a, "repo", "init",
		"--root-key", alice.pub, "--root-key", bob.pub, "--root-key", carol.key, "--root-threshold", "2",
		"--targets-key", alice.pub, "--targets-key", bob.pub, "--targets-key", carol.pub, "--targets-threshold", "2")
	initID := draftID(t, r)
	wantContains(t, "repo init", r.stdout, "publishes root v1", "root role: 2 of 3 keys")

	r = mustRun(t, a, "repo", "sign", "--key", alice.key, "--yes")
	wantContains(t, "first ceremony signature", r.stdout,
		"root v1", alice.id+" ed25519/ed25519 (your key)", "(the server's online key)", "targets v1",
		"root: 1 of 2 signed", "targets: 1 of 2 signed", "is not published yet")
	if st := repoStatus(t, srv); st.Initialized {
		t.Fatal("initialized after one of two signatures")
	}
	r = mustRun(t, a, "status")
	wantContains(t, "status during the ceremony", r.stdout, "not initialized", "pending draft: "+initID, "root: 1 of 2 signed")

	r = mustRun(t, b, "repo", "sign", "--key", bob.key, "--draft", initID, "--yes")
	wantContains(t, "second ceremony signature", r.stdout, "root: 2 of 2 signed", "targets: 2 of 2 signed", "draft "+initID+" is published")
	st := repoStatus(t, srv)
	if !st.Initialized || roleVersion(st, "root") != 1 || roleVersion(st, "targets") != 1 {
		t.Fatalf("after the ceremony: initialized %v, root v%d, targets v%d; want true, v1, v1",
			st.Initialized, roleVersion(st, "root"), roleVersion(st, "targets"))
	}
	r = otactl(t, a, "repo", "init", "--root-key", alice.pub, "--root-threshold", "1", "--targets-key", alice.pub, "--targets-threshold", "1")
	if r.code != 1 || !strings.Contains(r.stderr, "already initialized: use otactl root rotate") {
		t.Errorf("repo init twice: exit %d, stderr %q; want a refusal naming root rotate", r.code, r.stderr)
	}
	r = mustRun(t, a, "status")
	wantContains(t, "status after the ceremony", r.stdout, "repository: initialized", "root      v1", "targets   v1", "pending draft: none")

	// A release: 3 MiB with custom metadata.
	const target = "cm-privacy/2026.1/update.zip"
	build := randomFile(t, 3<<20)
	data, err := os.ReadFile(build)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	wantSHA := hex.EncodeToString(sum[:])
	wantCustom := manifests.TargetCustom{PatchID: "CM-2026-001", Models: []string{"X100", "X200"}, BuildMin: "100", BuildMax: "199",
		InstallsBuild: "200", CloudMessagingDefault: "opt-in", NumberEncryption: "on", Extra: map[string]string{"channel": "stable"}}
	r = mustRun(t, a, "release", "create", build, "--name", target, "--patch-id", "CM-2026-001",
		"--model", "X100", "--model", "X200", "--build-min", "100", "--build-max", "199", "--installs-build", "200",
		"--messaging-default", "opt-in", "--number-encryption", "on", "--custom", "channel=stable")
	relID := draftID(t, r)
	wantContains(t, "release create", r.stdout, "uploaded "+target+" (3145728 bytes, sha256 "+wantSHA+")", "adds target "+target)
	if n := strings.Count(r.stderr, "uploading "+target); n != 10 {
		t.Errorf("progress: %d lines, want one per 10%% (10) when stderr is not a terminal:\n%s", n, r.stderr)
	}
	wantContains(t, "progress", r.stderr, "3.0 MiB of 3.0 MiB (100%)")

	r = mustRun(t, a, "release", "sign", relID, "--key", alice.key, "--yes")
	wantContains(t, "first release signature", r.stdout,
		target, "3145728 bytes, sha256 "+wantSHA, "patch_id=CM-2026-001", "models=X100,X200", "installs_build=200", "cloud_messaging_default=opt-in",
		"number_encryption=on", `extra.channel="stable"`, "adds "+target, "targets: 1 of 2 signed", "is not published yet")
	if st := repoStatus(t, srv); len(st.Targets) != 0 {
		t.Fatalf("a target is published after one of two signatures: %+v", st.Targets)
	}
	r = mustRun(t, b, "release", "sign", "--key", bob.key, relID, "--yes")
	wantContains(t, "second release signature", r.stdout, "targets: 2 of 2 signed", "is published")
	st = repoStatus(t, srv)
	if len(st.Targets) != 1 {
		t.Fatalf("published targets %+v, want just %s", st.Targets, target)
	}
	got := st.Targets[0]
	if got.Path != target || got.SHA256 != wantSHA || got.Length != int64(len(data)) {
		t.Errorf("published %s %d %s, want %s %d %s", got.Path, got.Length, got.SHA256, target, len(data), wantSHA)
	}
	var gotCustom manifests.TargetCustom
	if err := json.Unmarshal(got.Custom, &gotCustom); err != nil {
		t.Fatal(err)
	}
	wantCustom.Released = gotCustom.Released // the server's clock
	if !reflect.DeepEqual(gotCustom, wantCustom) {
		t.Errorf("published custom metadata %+v, want %+v", gotCustom, wantCustom)
	}
	r = mustRun(t, c, "status")
	wantContains(t, "status after the release", r.stdout, "published targets: 1", target, wantSHA, "patch_id=CM-2026-001")

	// The same build again: the server has it, so nothing is sent.
	r = mustRun(t, c, "release", "create", build, "--name", target, "--patch-id", "CM-2026-001")
	wantContains(t, "release create of a stored artifact", r.stdout, "already stored on the server", "replaces target "+target)
	// otad answers before reading the body, but its bodyLimit middleware
	// replaces the request body in place, which hides "Expect:
	// 100-continue" from net/http: it then waits for the body and discards
	// up to 256 KiB before answering, so how much of the file leaves the
	// machine here depends on timing. TestUploadSkipsStoredArtifact checks
	// otactl's side against a server that honours the header.
	t.Logf("re-upload of a stored artifact:\n%s", r.stderr)
	againID := draftID(t, r)
	// One draft at a time: a second release is refused before its upload.
	r = otactl(t, a, "release", "create", build, "--name", "other.zip", "--patch-id", "CM-2026-001")
	if r.code != 1 || strings.Contains(r.stderr, "hashing") {
		t.Errorf("release create with a draft pending: exit %d, stderr %q; want a refusal before hashing", r.code, r.stderr)
	}
	wantContains(t, "refusal", r.stderr, "draft "+againID+" (release, by carol) is pending", "otactl draft discard "+againID)
	r = mustRun(t, c, "draft", "list")
	wantContains(t, "draft list", r.stdout, againID+"\trelease\tpending\tcarol", relID+"\trelease\tpublished\talice", initID+"\tinit\tpublished")
	r = mustRun(t, c, "release", "show")
	wantContains(t, "release show", r.stdout, "draft "+againID+": release, pending", "created by carol", "targets: 0 of 2 signed",
		"waiting "+alice.id)
	mustRun(t, c, "draft", "discard", againID)
	if st := repoStatus(t, srv); st.Pending != nil {
		t.Fatalf("draft %s still pending after discard", st.Pending.ID)
	}

	// A yank needs two signatures too.
	r = mustRun(t, c, "release", "yank", target)
	yankID := draftID(t, r)
	wantContains(t, "release yank", r.stdout, "removes target "+target)
	r = mustRun(t, c, "release", "sign", yankID, "--key", carol.key, "--yes")
	wantContains(t, "first yank signature", r.stdout, "removes "+target, "targets: 1 of 2 signed")
	if st := repoStatus(t, srv); len(st.Targets) != 1 {
		t.Fatal("target yanked after one signature")
	}
	mustRun(t, a, "release", "sign", yankID, "--key", alice.key, "--yes")
	if st := repoStatus(t, srv); len(st.Targets) != 0 {
		t.Fatalf("targets after the yank: %+v, want none", st.Targets)
	}

	// Root rotation: dave replaces carol. It needs 2 of the old root keys
	// and 2 of the new ones, and the new targets keys re-sign targets.
	dave := newEngineer(t, srv, "dave")
	d := dave.env(srv)
	r = mustRun(t, a, "root", "rotate",
		"--root-key", alice.pub, "--root-key", bob.pub, "--root-key", dave.pub, "--root-threshold", "2",
		"--targets-key", alice.pub, "--targets-key", bob.pub, "--targets-key", dave.pub, "--targets-threshold", "2")
	rotID := draftID(t, r)
	wantContains(t, "root rotate", r.stdout, "publishes root v2", "adds "+dave.id[:12], "removes "+carol.id[:12])

	r = mustRun(t, c, "repo", "sign", "--key", carol.key, "--yes")
	wantContains(t, "carol signs the rotation", r.stdout, "signs: root\n", "root: 1 of 2 signed (root v1's root keys", "root: 0 of 2 signed (new root v2's root keys")
	r = mustRun(t, d, "repo", "sign", "--key", dave.key, "--yes")
	wantContains(t, "dave signs the rotation", r.stdout, "signs: root, targets", "root: 1 of 2 signed (new root v2's root keys", "is not published yet")
	if v := roleVersion(repoStatus(t, srv), "root"); v != 1 {
		t.Fatalf("root v%d published with one old and one new signature", v)
	}
	r = mustRun(t, a, "repo", "sign", "--key", alice.key, "--yes")
	wantContains(t, "alice signs the rotation", r.stdout, "root: 2 of 2 signed (root v1's root keys",
		"root: 2 of 2 signed (new root v2's root keys", "targets: 2 of 2 signed", "draft "+rotID+" is published")
	st = repoStatus(t, srv)
	if roleVersion(st, "root") != 2 || roleVersion(st, "targets") != 4 {
		t.Fatalf("after the rotation: root v%d, targets v%d; want v2, v4", roleVersion(st, "root"), roleVersion(st, "targets"))
	}

	// Carol's key is out: she may sign nothing, and nothing is uploaded.
	r = mustRun(t, d, "release", "create", build, "--name", target, "--patch-id", "CM-2026-002")
	id := draftID(t, r)
	r = otactl(t, c, "release", "sign", id, "--key", carol.key, "--yes")
	if r.code != 1 {
		t.Errorf("carol signs after her key was rotated out: exit %d, want 1", r.code)
	}
	wantContains(t, "refusal", r.stderr, "otactl: key "+carol.id, "may not sign draft "+id, "nothing was uploaded")
	if n := signatureCount(t, srv, id); n != 0 {
		t.Errorf("%d signatures stored after the refusal, want 0", n)
	}
	mustRun(t, d, "release", "sign", id, "--key", dave.key, "--yes")
	mustRun(t, b, "release", "sign", id, "--key", bob.key, "--yes")
	if st := repoStatus(t, srv); len(st.Targets) != 1 || !strings.Contains(string(st.Targets[0].Custom), "CM-2026-002") {
		t.Fatalf("release signed by the new targets keys not published: %+v", st.Targets)
	}
}
