package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// otadBinary is the otad binary built for this test process.
var otadBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// buildOtad builds the otad binary once per test process (without -race:
// the tests drive it from outside) and returns its path. TestMain removes
// it.
func buildOtad(tb testing.TB) string {
	tb.Helper()
	otadBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "otad-bin-")
		if err != nil {
			otadBinary.err = err
			return
		}
		otadBinary.dir = dir
		bin := filepath.Join(dir, "otad")
		if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			otadBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		otadBinary.path = bin
	})
	if otadBinary.err != nil {
		tb.Fatal(otadBinary.err)
	}
	return otadBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if otadBinary.dir != "" {
		os.RemoveAll(otadBinary.dir)
	}
	os.Exit(code)
}

// otadProcess is an otad binary serving on a data dir.
type otadProcess struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}

	mu      sync.Mutex
	logs    []string         // the last stderr lines, keepLogLines at least
	startup []map[string]any // the JSON records logged before "otad serving"
}

// keepLogLines is how many of its last log lines an otadProcess keeps.
const keepLogLines = 1000

// startOtad runs "otad serve" on dataDir and waits until it serves.
func startOtad(tb testing.TB, bin, dataDir string) *otadProcess {
	tb.Helper()
	p := &otadProcess{exited: make(chan struct{})}
	p.cmd = exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	serving := make(chan string, 1)
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		up := false
		for sc.Scan() {
			line := sc.Text()
			var rec map[string]any
			if !up {
				json.Unmarshal([]byte(line), &rec)
			}
			p.mu.Lock()
			// The tail is enough (logTail): a benchmark's otad logs a
			// line for each of its 100,000s of reports.
			if len(p.logs) >= 2*keepLogLines {
				p.logs = append(p.logs[:0], p.logs[len(p.logs)-keepLogLines:]...)
			}
			p.logs = append(p.logs, line)
			if !up && rec != nil {
				p.startup = append(p.startup, rec)
			}
			p.mu.Unlock()
			if !up && rec["msg"] == "otad serving" {
				up = true
				addr, _ := rec["addr"].(string)
				serving <- addr
			}
		}
		p.cmd.Wait()
	}()
	tb.Cleanup(p.kill)
	select {
	case p.addr = <-serving:
	case <-p.exited:
		tb.Fatalf("otad exited before serving:\n%s", p.logTail(40))
	case <-time.After(2 * time.Minute): // only bounds a hang: a loaded machine starts otad slowly
		p.kill()
		tb.Fatalf("otad did not log \"otad serving\" within 2 minutes:\n%s", p.logTail(40))
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *otadProcess) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *otadProcess) logTail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs[max(0, len(p.logs)-n):], "\n")
}

// startupRecords returns the records logged before "otad serving" whose
// msg is msg (all with msg "").
func (p *otadProcess) startupRecords(level, msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, r := range p.startup {
		if (level == "" || r["level"] == level) && (msg == "" || r["msg"] == msg) {
			out = append(out, r)
		}
	}
	return out
}

// Where a SIGKILL landed relative to the signature upload that publishes.
const (
	killBeforeUpload = "before the upload"
	killDuringUpload = "during the upload (no answer)"
	killAfterAnswer  = "after the 200"
)

// What the restarted server holds for the round's draft.
const (
	outcomeNotSigned    = "signature not stored: pending, 1 of 2"
	outcomeResumed      = "stored, publish finished by the restart"
	outcomeReplyLost    = "published before the kill, answer lost"
	outcomeAcknowledged = "published and acknowledged"
)

// TestCrashDuringPublish SIGKILLs the real otad binary while the signature
// that completes a release's threshold is being uploaded (the upload
// publishes), at random points spread over the publish window, and
// restarts it on the same data dir each time. After every restart go-tuf
// clients, one with a cache kept across all rounds and a fresh one, must
// refresh without error and see either the state before the release (the
// target absent) or after it (the target downloads and verifies to exactly
// the round's bytes), never anything in between; a fully signed draft must
// be published by the restart, and an acknowledged publish must survive.
func TestCrashDuringPublish(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the otad binary and kills it 60 times")
	}
	const (
		calibrationRounds = 5
		killRounds        = 60
		beforeUploadShare = 8 // one kill round in 8 kills before the upload starts
	)
	begin := time.Now()
	bin := buildOtad(t)
	built := time.Since(begin)
	dataDir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0x6f7461))
	t.Logf("otad built in %v; data dir %s; seed %d", built.Round(time.Millisecond), dataDir, seed)

	proc := startOtad(t, bin, dataDir)
	out, err := exec.Command(bin, "token", "create", "--name", "crash-test", "--role", "release-engineer",
		"--data-dir", dataDir, "--log-format", "json").Output()
	if err != nil {
		t.Fatalf("otad token create: %v", err)
	}
	env := &apitest.Env{URL: "http://" + proc.addr, Token: strings.TrimSpace(string(out))}
	es := apitest.NewEngineers(t, 3)
	a, b := es[0], es[1]
	env.Ceremony(t, es, 2)
	root1 := env.RootBytes(t, 1)
	handsetCache := t.TempDir() // the go-tuf cache that lives through every round
	published := map[string][]byte{}
	httpc := &http.Client{Timeout: 30 * time.Second}

	// upload posts engineer b's signature over draft v (which publishes)
	// to the server at env.URL, not failing the test if the server dies
	// under it. It signs and encodes first, so that the timed part is the
	// request alone.
	upload := func(v *manifests.DraftView) func() (*manifests.DraftView, error) {
		body, err := json.Marshal(wire.SignatureUpload{Digest: v.Digest, Signatures: b.SignatureFor(t, v)})
		if err != nil {
			t.Fatal(err)
		}
		admin, err := client.New(env.URL, client.WithHTTPClient(httpc), client.WithBearer(env.Token))
		if err != nil {
			t.Fatal(err)
		}
		return func() (*manifests.DraftView, error) { return postSignatures(admin, v.ID, body) }
	}
	release := func(name string) (string, []byte, *manifests.DraftView) {
		path := "crash/" + name + "/update.zip"
		content := make([]byte, 16<<10+rng.IntN(48<<10))
		for i := range content {
			content[i] = byte(rng.Uint32())
		}
		d := env.DraftRelease(t, path, content, apitest.PatchCustom())
		return path, content, env.MustSign(t, d.ID, a)
	}

	path, content, v := release("first")
	if done, err := upload(v)(); err != nil || done.State != manifests.DraftPublished {
		t.Fatalf("first release: %v", err)
	}
	published[path] = content

	// The first rounds kill only once the upload is answered: they measure
	// the window the later kills are spread over (the upload that
	// publishes, as the engineer's machine sees it), on a server just
	// restarted like in every other round.
	var window time.Duration
	var samples []time.Duration
	kills := map[string]int{}
	outcomes := map[string]int{}
	delays := map[string]int{} // where in the window the timed kills fell
	var restarts []time.Duration
	for round := range killRounds {
		path, content, v := release(fmt.Sprintf("round-%02d", round))
		post := upload(v)
		when := killBeforeUpload
		var answer *manifests.DraftView
		var uploadErr error
		switch {
		case round < calibrationRounds:
			start := time.Now()
			answer, uploadErr = post()
			samples = append(samples, time.Since(start))
			if uploadErr != nil || answer.State != manifests.DraftPublished {
				t.Fatalf("calibration round %d: %v", round, uploadErr)
			}
			proc.kill()
			when = killAfterAnswer
			if round == calibrationRounds-1 {
				// The second slowest: fsync times vary, and the kills
				// must reach the end of slow publishes too, but one
				// outlier on a busy machine must not stretch the
				// window so far that most kills land after the answer.
				sorted := slices.Sorted(slices.Values(samples))
				window = sorted[len(sorted)-2]
				t.Logf("a publish takes %v (second slowest of %v); kills drawn uniformly from 0 to %v", window, samples, window*3/2)
			}
		case rng.IntN(beforeUploadShare) == 0:
			proc.kill()
		default:
			delay := time.Duration(rng.Int64N(int64(window * 3 / 2)))
			delays[fmt.Sprintf("%.1f-%.1f", float64(delay*2/window)/2, float64(delay*2/window+1)/2)]++
			res := make(chan error, 1)
			start := time.Now()
			go func() {
				var err error
				answer, err = post()
				res <- err
			}()
			time.Sleep(time.Until(start.Add(delay)))
			proc.kill()
			uploadErr = <-res
			when = killDuringUpload
			if uploadErr == nil {
				when = killAfterAnswer
			}
		}
		kills[when]++
		if when == killAfterAnswer && answer.State != manifests.DraftPublished {
			t.Errorf("round %d: the signature that completes the threshold was answered with state %s, want published", round, answer.State)
		}

		start := time.Now()
		proc = startOtad(t, bin, dataDir)
		restarts = append(restarts, time.Since(start))
		env.URL = "http://" + proc.addr
		for _, r := range proc.startupRecords("ERROR", "") {
			t.Errorf("round %d (kill %s): restart logged an error: %v", round, when, r)
		}

		var got manifests.DraftView
		if err := env.Do("GET", "/drafts/"+v.ID, nil, &got); err != nil {
			t.Fatalf("round %d: draft %s after restart: %v", round, v.ID, err)
		}
		resumed := false
		for _, r := range proc.startupRecords("INFO", "draft published") {
			resumed = resumed || r["draft"] == v.ID
		}
		newState := false
		switch {
		case got.State == manifests.DraftPublished:
			newState = true
			switch {
			case resumed:
				outcomes[outcomeResumed]++
			case uploadErr == nil && when == killAfterAnswer:
				outcomes[outcomeAcknowledged]++
			default:
				outcomes[outcomeReplyLost]++
			}
		case got.State == manifests.DraftPending && signedCount(got) < 2:
			outcomes[outcomeNotSigned]++
			if when == killAfterAnswer {
				t.Errorf("round %d: the server answered %s for draft %s, but after the restart it is pending", round, answer.State, v.ID)
			}
			if err := env.Do("DELETE", "/drafts/"+v.ID, nil, nil); err != nil {
				t.Fatalf("round %d: discarding the leftover draft: %v", round, err)
			}
		default:
			t.Errorf("round %d (kill %s): draft %s is %s with %d signatures after the restart; want published, or pending with fewer than 2\n%s",
				round, when, v.ID, got.State, signedCount(got), proc.logTail(20))
		}
		if newState {
			published[path] = content
		}

		for _, c := range []struct {
			name string
			up   *updater.Updater
		}{
			{"handset cache", apitest.NewClientAt(t, env.URL, root1, handsetCache)},
			{"fresh client", apitest.NewClient(t, env.URL, root1)},
		} {
			if err := checkClient(c.up, path, content, newState, published); err != nil {
				t.Errorf("round %d (kill %s, draft %s): %s: %v", round, when, got.State, c.name, err)
			}
		}
		if t.Failed() {
			t.Fatalf("stopping after round %d; otad log:\n%s", round, proc.logTail(30))
		}
	}

	slices.Sort(restarts)
	t.Logf("%d kills in %d rounds (%d calibrating), over %v:", killRounds, killRounds, calibrationRounds, time.Since(begin).Round(time.Millisecond))
	for _, k := range []string{killBeforeUpload, killDuringUpload, killAfterAnswer} {
		t.Logf("  kill %-30s %3d", k, kills[k])
	}
	t.Logf("  timed kills by delay, in publish windows: %v", delays)
	t.Logf("what the restarted server held:")
	for _, o := range []string{outcomeNotSigned, outcomeResumed, outcomeReplyLost, outcomeAcknowledged} {
		t.Logf("  %-42s %3d", o, outcomes[o])
	}
	t.Logf("restart to serving: median %v, max %v; %d releases published",
		restarts[len(restarts)/2].Round(time.Millisecond), restarts[len(restarts)-1].Round(time.Millisecond), len(published))
}

// signedCount is how many keys have signed the targets part of v.
func signedCount(v manifests.DraftView) int {
	for _, th := range v.Thresholds {
		if th.Part == manifests.PartTargets {
			return len(th.Signed)
		}
	}
	return 0
}

// checkClient refreshes up and checks what it trusts: exactly the
// published targets, and path present with content (newState) or absent.
func checkClient(up *updater.Updater, path string, content []byte, newState bool, published map[string][]byte) error {
	if err := up.Refresh(); err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	targets := up.GetTrustedMetadataSet().Targets[metadata.TARGETS]
	var got, want []string
	for p := range targets.Signed.Targets {
		got = append(got, p)
	}
	for p := range published {
		want = append(want, p)
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("trusts targets %v, want %v", got, want)
	}
	info, err := up.GetTargetInfo(path)
	if !newState {
		if err == nil {
			return fmt.Errorf("%s is offered, but its draft was not published", path)
		}
		if !strings.Contains(err.Error(), "not found") {
			return fmt.Errorf("looking up %s: %w", path, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s: %w", path, err)
	}
	_, data, err := up.DownloadTarget(info, "", "")
	if err != nil {
		return fmt.Errorf("download %s: %w", path, err)
	}
	if !bytes.Equal(data, content) {
		return errors.New("downloaded bytes differ from the round's release")
	}
	return nil
}

// postSignatures uploads body, an encoded wire.SignatureUpload, for
// draft id as admin (client.AddSignatures would encode it in the timed
// part) and returns the draft the server answered 200 with.
func postSignatures(admin *client.Client, id string, body []byte) (*manifests.DraftView, error) {
	req, err := admin.NewRequest(context.Background(), http.MethodPost,
		wire.AdminPrefix+"/drafts/"+url.PathEscape(id)+"/signatures", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	var out manifests.DraftView
	status, err := admin.Send(req, &out)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("POST %s: %d, want 200", req.URL.Path, status)
	}
	return &out, nil
}
