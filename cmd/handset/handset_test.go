package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
)

var installFlow = []string{"downloading", "downloaded", "verified", "installing", "installed"}

// TestRolloutHappyPath: 50 handsets enroll, are offered the patch, verify
// it with go-tuf and install it; reports arrive in order and the next
// check-in carries the patch with messaging opt-in and numbers encrypted.
func TestRolloutHappyPath(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	const n, concurrency = 50, 8
	res, _ := rollout(t, f, "--count", "50", "--concurrency", "8", "--root", r.rootFile)

	if !res.Complete || res.Installed != n || res.Compliant != n || res.Failed != 0 || res.Pending != 0 ||
		res.Enrolled != n || res.EnrolledNew != n {
		t.Fatalf("result %+v, want %d enrolled, installed and compliant", res, n)
	}
	if res.Reports != n*int64(len(installFlow)) || res.Duplicates != 0 || res.Dropped != 0 {
		t.Errorf("reports %d (dup %d, dropped %d), want %d", res.Reports, res.Duplicates, res.Dropped, n*len(installFlow))
	}
	devs := f.snapshot()
	if len(devs) != n {
		t.Fatalf("server has %d devices, want %d", len(devs), n)
	}
	for id, d := range devs {
		if got := reportStates(d.reports); !slices.Equal(got, installFlow) {
			t.Errorf("%s reports %v, want %v", id, got, installFlow)
		}
		ids := map[string]bool{}
		var last time.Time
		for _, rep := range d.reports {
			if ids[rep.ReportID] {
				t.Errorf("%s: report id %s used twice", id, rep.ReportID)
			}
			ids[rep.ReportID] = true
			at, _ := time.Parse(time.RFC3339Nano, rep.At)
			if !at.After(last) {
				t.Errorf("%s: report %s at %s is not after the previous one", id, rep.State, rep.At)
			}
			last = at
			if rep.PatchID != testPatchID || rep.Target != testPatchPath {
				t.Errorf("%s: report %+v names the wrong patch or target", id, rep)
			}
		}
		if len(d.checkIns) < 2 {
			t.Fatalf("%s checked in %d times, want at least 2", id, len(d.checkIns))
		}
		first, lastCI := d.checkIns[0].body, d.checkIns[len(d.checkIns)-1].body
		if len(first.InstalledPatches) != 0 || first.CloudMessaging != "auto_enabled" || first.NumberEncryption {
			t.Errorf("%s first check-in %+v, want unpatched, auto_enabled, no encryption", id, first)
		}
		if !slices.Equal(lastCI.InstalledPatches, []string{testPatchID}) || lastCI.CloudMessaging != "opted_out" || !lastCI.NumberEncryption {
			t.Errorf("%s check-in after install %+v, want the patch, opted_out, encryption on", id, lastCI)
		}
		if first.Model != testModel || first.Build != testBuild || first.Channel != "stable" {
			t.Errorf("%s check-in %+v, want model/build/channel from the flags", id, first)
		}
	}
	if m := f.maxInflight.Load(); m > concurrency {
		t.Errorf("%d requests in flight at once, want at most --concurrency %d", m, concurrency)
	}
	// One verified download serves every handset; metadata is refreshed
	// once per view, not once per handset.
	if got := f.targetGets.Load(); got != 1 {
		t.Errorf("artifact downloaded %d times, want 1", got)
	}
	if got := f.timestampGets.Load(); got > 2 {
		t.Errorf("timestamp.json fetched %d times for %d handsets, want a shared view", got, n)
	}
}

// TestRolloutFailRate: with --fail-rate 1 every install fails with one of
// --fail-codes, and no handset reports the patch.
func TestRolloutFailRate(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	const n = 20
	codes := []string{"E_DISK_FULL", "E_VERIFY"}
	res, _ := rollout(t, f, "--count", "20", "--root", r.rootFile, "--fail-rate", "1", "--fail-codes", strings.Join(codes, ","))
	if !res.Complete || res.Failed != n || res.Installed != 0 || res.Compliant != 0 {
		t.Fatalf("result %+v, want all %d failed", res, n)
	}
	sum := 0
	for code, c := range res.FailedByCode {
		if !slices.Contains(codes, code) {
			t.Errorf("failed with code %s, want one of %v", code, codes)
		}
		sum += c
	}
	if sum != n {
		t.Errorf("failed_by_code %v sums to %d, want %d", res.FailedByCode, sum, n)
	}
	for id, d := range f.snapshot() {
		got := reportStates(d.reports)
		want := installFlow[:4]
		if len(got) != 5 || !slices.Equal(got[:4], want) || !strings.HasPrefix(got[4], "failed:") ||
			!slices.Contains(codes, strings.TrimPrefix(got[4], "failed:")) {
			t.Errorf("%s reports %v, want %v then failed with one of %v", id, got, want, codes)
		}
		for _, ci := range d.checkIns {
			if len(ci.body.InstalledPatches) != 0 || ci.body.CloudMessaging != "auto_enabled" || ci.body.NumberEncryption {
				t.Errorf("%s: check-in %+v after a failed install, want it unpatched", id, ci.body)
			}
		}
	}
}

// TestRolloutTamperedArtifact: a mirror flipping a byte of the artifact
// makes every handset report E_TUF_VERIFY and install nothing.
func TestRolloutTamperedArtifact(t *testing.T) {
	r := startRepo(t)
	proxy := apitest.NewProxy(t, r.env.URL)
	proxy.Mutate(func(path string, body []byte) []byte {
		if strings.HasPrefix(path, "/targets/") && len(body) > 0 {
			body = append([]byte(nil), body...)
			body[len(body)/2] ^= 0x01
		}
		return body
	})
	f := newFakeServer(t, r, proxy.URL)
	const n = 10
	res, _ := rollout(t, f, "--count", "10", "--root", r.rootFile)
	if !res.Complete || res.Failed != n || res.FailedByCode[agent.CodeVerify] != n || res.Installed != 0 {
		t.Fatalf("result %+v, want all %d failed with %s", res, n, agent.CodeVerify)
	}
	for id, d := range f.snapshot() {
		if got, want := reportStates(d.reports), []string{"downloading", "failed:" + agent.CodeVerify}; !slices.Equal(got, want) {
			t.Errorf("%s reports %v, want %v", id, got, want)
		}
		for _, ci := range d.checkIns {
			if len(ci.body.InstalledPatches) != 0 || ci.body.NumberEncryption {
				t.Errorf("%s: check-in %+v, want it unpatched", id, ci.body)
			}
		}
	}
}

// TestRolloutRetryAfter: a 429 with Retry-After: 1 holds the handset back
// for a second.
func TestRolloutRetryAfter(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.checkIn429 = 1
	res, _ := rollout(t, f, "--count", "5", "--root", r.rootFile)
	if res.Installed != 5 || res.Errors["checkin:rate_limited"] != 5 {
		t.Fatalf("result %+v, want 5 installed after 5 rate-limited check-ins", res)
	}
	for id, d := range f.snapshot() {
		if len(d.rejected) != 1 || len(d.checkIns) == 0 {
			t.Fatalf("%s: %d rejected, %d accepted check-ins", id, len(d.rejected), len(d.checkIns))
		}
		if wait := d.checkIns[0].at.Sub(d.rejected[0]); wait < 950*time.Millisecond {
			t.Errorf("%s retried %v after a 429 with Retry-After: 1", id, wait)
		}
	}
}

// TestRolloutReportRetry: a report answered 503 is retried with the same
// report id; one stored but whose answer was lost comes back as a
// duplicate and is stored once.
func TestRolloutReportRetry(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.reportFault = func(rep reportBody, attempt int) (bool, int) {
		switch {
		case rep.State == "downloaded" && attempt == 1:
			return false, 503 // not stored
		case rep.State == "verified" && attempt == 1:
			return true, 503 // stored, answer lost
		}
		return true, 0
	}
	const n = 5
	res, _ := rollout(t, f, "--count", "5", "--root", r.rootFile)
	if res.Installed != n || res.Retries != 2*n || res.Duplicates != n || res.Dropped != 0 {
		t.Fatalf("result %+v, want %d installed, %d retries, %d duplicates", res, n, 2*n, n)
	}
	for id, d := range f.snapshot() {
		if got := reportStates(d.reports); !slices.Equal(got, installFlow) {
			t.Errorf("%s stored reports %v, want %v once each", id, got, installFlow)
		}
		byState := map[string][]string{}
		for _, a := range d.attempts {
			byState[a.State] = append(byState[a.State], a.ReportID)
		}
		for _, state := range []string{"downloaded", "verified"} {
			ids := byState[state]
			if len(ids) != 2 || ids[0] != ids[1] {
				t.Errorf("%s: %s sent with report ids %v, want the same id twice", id, state, ids)
			}
		}
	}
}

// TestRolloutStateFile: a second run with --state-file re-enrolls the same
// devices, which remember the patch and are not offered it again.
func TestRolloutStateFile(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	state := filepath.Join(t.TempDir(), "handsets.json")
	res, _ := rollout(t, f, "--count", "5", "--root", r.rootFile, "--state-file", state)
	if res.Installed != 5 || res.EnrolledNew != 5 {
		t.Fatalf("first run %+v, want 5 new devices installed", res)
	}
	fi, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600 (it holds device keys)", fi.Mode().Perm())
	}
	var sf stateFile
	data, _ := os.ReadFile(state)
	if err := json.Unmarshal(data, &sf); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range sf.Devices {
		ids = append(ids, d.DeviceID)
		if !slices.Equal(d.InstalledPatches, []string{testPatchID}) || d.CloudMessaging != "opted_out" || !d.NumberEncryption {
			t.Errorf("state %+v, want the patch installed", d)
		}
	}
	res, _ = rollout(t, f, "--count", "5", "--root", r.rootFile, "--state-file", state)
	if res.Enrolled != 5 || res.EnrolledNew != 0 || res.Reenrolled != 5 || res.UpToDate != 5 || res.Installed != 0 || !res.Complete {
		t.Fatalf("second run %+v, want 5 re-enrolled, up to date", res)
	}
	devs := f.snapshot()
	if len(devs) != 5 {
		t.Fatalf("server has %d devices after two runs, want 5", len(devs))
	}
	for _, id := range ids {
		d, ok := devs[id]
		if !ok || d.enrolls != 2 {
			t.Errorf("device %s: present %v, enrolled %d times; want the same device enrolled twice", id, ok, d.enrolls)
		}
	}
	// A third run with more handsets keeps the five and adds new ones.
	res, _ = rollout(t, f, "--count", "7", "--root", r.rootFile, "--state-file", state)
	if res.Reenrolled != 5 || res.EnrolledNew != 2 || res.Installed != 2 || res.UpToDate != 5 {
		t.Fatalf("third run %+v, want 5 re-enrolled up to date, 2 new installed", res)
	}
}

// TestRolloutReenrollOn401: a handset whose token is revoked re-enrolls
// with its key, keeps its id and carries on.
func TestRolloutReenrollOn401(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.unauthorizeOne = true
	res, _ := rollout(t, f, "--count", "4", "--root", r.rootFile)
	if res.Installed != 4 || res.Reenrolled != 4 || res.Errors["checkin:http_401"] != 4 {
		t.Fatalf("result %+v, want 4 re-enrolled after a 401 and installed", res)
	}
	if devs := f.snapshot(); len(devs) != 4 {
		t.Fatalf("server has %d devices, want 4 (re-enrollment keeps the id)", len(devs))
	}
}

// TestEnrollmentSecret: the secret comes from the environment; a wrong
// one makes every handset give up and the run exit 1 with the reason.
func TestEnrollmentSecret(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.secret = "s3cret"
	args := []string{"--server", f.URL, "--model", testModel, "--build", testBuild, "--count", "3", "--root", r.rootFile,
		"--poll-scale", "0.01", "--progress", "0"}
	code, stdout, stderr := runHandset(t, map[string]string{"HANDSET_ENROLLMENT_SECRET": "wrong"}, args...)
	if code != exitFailed || !strings.Contains(stderr, "3 of 3 handsets gave up") || !strings.Contains(stderr, "HTTP 401") ||
		!strings.Contains(stdout, "gave up") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 naming the 401", code, stdout, stderr)
	}
	code, stdout, stderr = runHandset(t, map[string]string{"HANDSET_ENROLLMENT_SECRET": "s3cret"}, args...)
	if code != 0 || !strings.Contains(stdout, "installed    3") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 3 installed", code, stdout, stderr)
	}
}

// TestRolloutTrustOnFirstUse: without --root, root v1 comes from the
// server with a warning.
func TestRolloutTrustOnFirstUse(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	res, stderr := rollout(t, f, "--count", "3")
	if res.Installed != 3 {
		t.Fatalf("result %+v, want 3 installed", res)
	}
	if !strings.Contains(stderr, "trusting root v1") {
		t.Errorf("stderr %q, want a trust-on-first-use warning", stderr)
	}
}

// TestRolloutNotApplicable: a handset refuses a patch whose signed
// metadata excludes its build, whatever the server offers.
func TestRolloutNotApplicable(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	args := []string{"--server", f.URL, "--model", testModel, "--build", "8.0.0", "--count", "3", "--root", r.rootFile,
		"--poll-scale", "0.01", "--progress", "0", "--json"}
	code, stdout, stderr := runHandset(t, nil, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res rolloutResult
	json.Unmarshal([]byte(stdout), &res)
	if res.FailedByCode[agent.CodeNotApplicable] != 3 {
		t.Fatalf("result %+v, want 3 failed with %s", res, agent.CodeNotApplicable)
	}
}

// TestRolloutOfferMismatch: an offer whose patch id disagrees with the
// signed metadata is refused as E_TUF_VERIFY.
func TestRolloutOfferMismatch(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.offerPatch = "CM-2026-999"
	res, _ := rollout(t, f, "--count", "2", "--root", r.rootFile)
	if res.FailedByCode[agent.CodeVerify] != 2 || res.Installed != 0 {
		t.Fatalf("result %+v, want 2 failed with %s", res, agent.CodeVerify)
	}
}

// TestRolloutTimeout: handsets never offered anything time out, exit 1
// and still print the summary; why nothing was offered (no_offer) is
// printed once when first seen and counted in the summary.
func TestRolloutTimeout(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.noOffer = true
	code, stdout, stderr := runHandset(t, nil, "--server", f.URL, "--model", testModel, "--build", testBuild,
		"--count", "2", "--root", r.rootFile, "--poll-scale", "0.01", "--timeout", "500ms", "--progress", "0")
	if code != exitFailed || !strings.Contains(stderr, "timed out") || !strings.Contains(stdout, "pending      2") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1, a timeout and 2 pending", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "handset: no_offer: not_selected ") {
		t.Errorf("stderr %q, want the no_offer reason once, then the timeout", stderr)
	}
	// Every check-in the run counted was answered no_offer.
	var checkIns int
	if m := regexp.MustCompile(`(?m)^check-ins +(\d+) `).FindStringSubmatch(stdout); m != nil {
		checkIns, _ = strconv.Atoi(m[1])
	}
	if want := fmt.Sprintf("no offer     not_selected %d\n", checkIns); checkIns < 2 || !strings.Contains(stdout, want) {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
}

// TestLoadMode: --duration checks in as fast as --concurrency allows and
// prints throughput and latency.
func TestLoadMode(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, "")
	code, stdout, stderr := runHandset(t, nil, "--server", f.URL, "--model", testModel, "--build", testBuild,
		"--count", "20", "--concurrency", "4", "--duration", "1s", "--progress", "0", "--json", "--erase")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res loadResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%q: %v", stdout, err)
	}
	l := res.Latency
	if res.Mode != "load" || res.Enrolled != 20 || res.CheckIns < 1 || res.CheckInsPerSecond <= 0 ||
		l.Count != uint64(res.CheckIns) || !(l.P50 <= l.P95 && l.P95 <= l.P99 && l.P99 <= l.Max) || l.Max <= 0 {
		t.Fatalf("result %+v", res)
	}
	if res.DurationSeconds < 1 || res.DurationSeconds > 10 {
		t.Errorf("ran %vs, want about 1s", res.DurationSeconds)
	}
	if m := f.maxInflight.Load(); m > 4 {
		t.Errorf("%d requests in flight, want at most 4", m)
	}
	if res.Erased == nil || *res.Erased != 20 || len(f.snapshot()) != 0 {
		t.Errorf("erased %v, server keeps %d devices; want all 20 erased", res.Erased, len(f.snapshot()))
	}
	// Text output.
	code, stdout, _ = runHandset(t, nil, "--server", f.URL, "--model", testModel, "--build", testBuild,
		"--count", "2", "--duration", "200ms", "--progress", "0")
	if code != 0 || !strings.Contains(stdout, "check-ins") || !strings.Contains(stdout, "p99") {
		t.Errorf("exit %d, text output %q", code, stdout)
	}
}

// TestManyHandsetsFewGoroutines: goroutines scale with --concurrency, not
// with the number of handsets.
func TestManyHandsetsFewGoroutines(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.pollAfter = 3600 // settled handsets would poll again in 36s: never in this run
	base := runtime.NumGoroutine()
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				if n := int64(runtime.NumGoroutine()); n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	})
	const n, concurrency = 2000, 16
	res, _ := rollout(t, f, "--count", "2000", "--concurrency", "16", "--root", r.rootFile)
	close(stop)
	wg.Wait()
	if res.Installed != n {
		t.Fatalf("result %+v, want %d installed", res, n)
	}
	// Workers, plus client and (in this process) server goroutines per
	// connection: a goroutine per handset would be thousands.
	if limit := int64(base + 6*concurrency + 50); peak.Load() > limit {
		t.Errorf("peak %d goroutines for %d handsets, want at most %d", peak.Load(), n, limit)
	}
	t.Logf("peak goroutines %d (base %d) for %d handsets", peak.Load(), base, n)
}

// TestTUFViewRefresh: with a short --tuf-max-age handsets refresh the
// metadata again, each new updater starting from what the previous one
// trusted, while the verified artifact is still downloaded once.
func TestTUFViewRefresh(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	res, _ := rollout(t, f, "--count", "10", "--concurrency", "2", "--root", r.rootFile, "--tuf-max-age", "1ns")
	if res.Installed != 10 {
		t.Fatalf("result %+v, want 10 installed", res)
	}
	if got := f.timestampGets.Load(); got < 2 {
		t.Errorf("timestamp.json fetched %d times, want a refresh per handset", got)
	}
	if got := f.targetGets.Load(); got != 1 {
		t.Errorf("artifact downloaded %d times, want 1 (verified copy keyed by sha256)", got)
	}
}

// TestDownloadRetry: an artifact download failing on the server (503) is
// retried, not reported as a verification failure.
func TestDownloadRetry(t *testing.T) {
	r := startRepo(t)
	f := newFakeServer(t, r, r.env.URL)
	f.targetFailures.Store(2)
	res, _ := rollout(t, f, "--count", "3", "--root", r.rootFile)
	if res.Installed != 3 || res.Errors["tuf:"+agent.CodeDownload] == 0 {
		t.Fatalf("result %+v, want 3 installed after download retries", res)
	}
	// All 503s exhausted: a download that never succeeds ends in E_DOWNLOAD.
	f2 := newFakeServer(t, r, r.env.URL)
	f2.targetFailures.Store(1 << 30)
	res, _ = rollout(t, f2, "--count", "2", "--root", r.rootFile)
	if res.FailedByCode[agent.CodeDownload] != 2 {
		t.Fatalf("result %+v, want 2 failed with %s", res, agent.CodeDownload)
	}
}
