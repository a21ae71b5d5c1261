package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/sqlstore"
)

// The end-to-end tests run the real otad and ota-agent binaries, with a
// small reverse proxy of the test between them (the agent's server URL
// and otad's --public-url), which can stall a download or hold a report's
// answer while the test SIGKILLs the agent.

var binaries struct {
	once             sync.Once
	dir, otad, agent string
	err              error
}

// buildBinaries builds otad and ota-agent once per test process (without
// -race: the tests drive them from outside).
func buildBinaries(tb testing.TB) (otad, agent string) {
	tb.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "ota-agent-e2e-")
		if err != nil {
			binaries.err = err
			return
		}
		binaries.dir = dir
		for _, b := range []struct{ out, pkg string }{{"otad", "../otad"}, {"ota-agent", "."}} {
			if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg).CombinedOutput(); err != nil {
				binaries.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
		binaries.otad, binaries.agent = filepath.Join(dir, "otad"), filepath.Join(dir, "ota-agent")
	})
	if binaries.err != nil {
		tb.Fatal(binaries.err)
	}
	return binaries.otad, binaries.agent
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// proc is a running binary whose stderr the test keeps.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	code   int

	mu    sync.Mutex
	lines []string
}

func start(tb testing.TB, bin string, args ...string) *proc {
	tb.Helper()
	p := &proc{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
	}()
	tb.Cleanup(func() { p.signal(syscall.SIGKILL) })
	return p
}

// signal sends sig and waits for the process to be gone.
func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	<-p.exited
}

// wait waits for the process to exit by itself, within limit (which only
// bounds a hang).
func (p *proc) wait(tb testing.TB, limit time.Duration) int {
	tb.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(limit):
		p.signal(syscall.SIGKILL)
		tb.Fatalf("%s did not exit within %v:\n%s", p.cmd.Path, limit, p.tail(40))
	}
	return -1
}

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
}

// records returns the JSON log records whose msg is msg.
func (p *proc) records(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.lines {
		var r map[string]any
		if json.Unmarshal([]byte(l), &r) == nil && r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// waitFor polls cond until it holds; limit only bounds a hang.
func waitFor(tb testing.TB, what string, limit time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exchange is one request the proxy passed on.
type exchange struct {
	method, path, rangeHeader string
	status                    int
	sent                      int64 // body bytes passed to the agent
	reportID                  string
	answer                    string
}

// proxy passes the agent's requests to otad, recording them; it can
// stall target downloads after a first chunk, and hold the answer to a
// report, each until the agent's connection goes away.
type proxy struct {
	srv      *httptest.Server
	upstream string

	mu            sync.Mutex
	log           []exchange
	stallTargets  bool
	holdReport    string               // the report state whose answer is held
	held          chan wire.ReportBody // receives the held report
	stalledAnswer chan struct{}        // closed once a download stalled
}

func newProxy(tb testing.TB) *proxy {
	p := &proxy{held: make(chan wire.ReportBody, 1), stalledAnswer: make(chan struct{})}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	tb.Cleanup(p.srv.Close)
	return p
}

// set changes the proxy's settings under its lock.
func (p *proxy) set(f func(*proxy)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *proxy) exchanges() []exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]exchange(nil), p.log...)
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	upstream := p.upstream
	p.mu.Unlock()
	req, err := http.NewRequestWithContext(r.Context(), r.Method, upstream+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	ex := exchange{method: r.Method, path: r.URL.Path, rangeHeader: r.Header.Get("Range"), status: resp.StatusCode}
	p.mu.Lock()
	stall, hold := p.stallTargets && strings.HasPrefix(r.URL.Path, "/targets/"), p.holdReport
	p.mu.Unlock()
	var rb wire.ReportBody
	if r.URL.Path == wire.APIPrefix+"/reports" {
		json.Unmarshal(body, &rb)
		ex.reportID = rb.ReportID
	}
	record := func() {
		p.mu.Lock()
		p.log = append(p.log, ex)
		p.mu.Unlock()
	}
	if hold != "" && rb.State == hold {
		// otad has stored the report; its answer never reaches the agent.
		ex.answer = "held"
		record()
		p.mu.Lock()
		p.holdReport = ""
		p.mu.Unlock()
		p.held <- rb
		<-r.Context().Done()
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if stall {
		n, _ := io.CopyN(w, resp.Body, 1<<20)
		ex.sent = n
		record()
		w.(http.Flusher).Flush()
		close(p.stalledAnswer)
		<-r.Context().Done() // until the agent is killed
		return
	}
	var buf bytes.Buffer
	n, _ := io.Copy(io.MultiWriter(w, &buf), resp.Body)
	ex.sent = n
	if r.URL.Path == wire.APIPrefix+"/reports" {
		ex.answer = strings.TrimSpace(buf.String())
	}
	record()
}

// e2e is an otad with a published release rolled out to every handset,
// a proxy in front of it and an agent's config.
type e2e struct {
	otadBin, agentBin string
	dataDir           string
	otad              *proc
	proxy             *proxy
	content           []byte
	sha256            string
	stateDir, outDir  string
	config            string
}

const (
	targetPath = "px7/cm-2026-001.bin"
	patchID    = "CM-2026-001"
)

func setup(t *testing.T, size int) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the otad and ota-agent binaries")
	}
	e := &e2e{dataDir: t.TempDir(), stateDir: filepath.Join(t.TempDir(), "state"), outDir: t.TempDir()}
	e.otadBin, e.agentBin = buildBinaries(t)
	e.proxy = newProxy(t)
	e.otad = start(t, e.otadBin, "serve", "--listen", "127.0.0.1:0", "--data-dir", e.dataDir, "--log-format", "json",
		"--public-url", e.proxy.srv.URL)
	var addr string
	waitFor(t, "otad serving", 2*time.Minute, func() bool {
		select {
		case <-e.otad.exited:
			t.Fatalf("otad exited:\n%s", e.otad.tail(30))
		default:
		}
		if rs := e.otad.records("otad serving"); len(rs) > 0 {
			addr, _ = rs[0]["addr"].(string)
			return true
		}
		return false
	})
	e.proxy.set(func(p *proxy) { p.upstream = "http://" + addr })
	token := func(name, role string) string {
		out, err := exec.Command(e.otadBin, "token", "create", name, "--role", role, "--data-dir", e.dataDir,
			"--log-format", "json").Output()
		if err != nil {
			t.Fatalf("otad token create %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	env := &apitest.Env{URL: "http://" + addr, Token: token("agent-e2e", "release-engineer")}
	approver := token("agent-e2e-approver", "operator")
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	rng := rand.New(rand.NewPCG(uint64(size), 16))
	e.content = make([]byte, size)
	for i := range e.content {
		e.content[i] = byte(rng.Uint32())
	}
	e.sha256 = apitest.SHA256Hex(e.content)
	env.Publish(t, targetPath, e.content, es[0])
	startRollout(t, env, approver)

	root := filepath.Join(t.TempDir(), "1.root.json")
	if err := os.WriteFile(root, env.RootBytes(t, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(e.outDir, "install.sh")
	script := fmt.Sprintf("#!/bin/sh\nset -e\ncp \"$1\" %q\necho \"$OTA_SHA256 $OTA_PATCH_ID $OTA_TARGET $OTA_INSTALLS_BUILD\" >> %q\n",
		filepath.Join(e.outDir, "installed.bin"), filepath.Join(e.outDir, "hook.log"))
	if err := os.WriteFile(hook, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(config{Server: e.proxy.srv.URL, StateDir: e.stateDir, Model: "PX-7", Build: "7.4.0",
		Channel: "stable", Region: "DE", Root: root, InstallHook: []string{"/bin/sh", hook}})
	e.config = filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(e.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// startRollout starts a rollout of the release to every handset at 100%,
// approved by a second person as four eyes want.
func startRollout(tb testing.TB, env *apitest.Env, approver string) {
	tb.Helper()
	var raw json.RawMessage
	if err := env.Do("POST", "/rollouts", wire.RolloutRequest{Release: targetPath, Stages: []float64{100},
		Reason: "agent end-to-end test"}, &raw); err != nil {
		tb.Fatalf("create rollout: %v", err)
	}
	var ap wire.Approval
	if err := json.Unmarshal(raw, &ap); err == nil && ap.State == string(rollout.ApprovalPending) && ap.RolloutID != "" {
		second := &apitest.Env{URL: env.URL, Token: approver}
		if err := second.Do("POST", "/rollouts/"+ap.RolloutID+"/approvals/"+ap.ID+"/approve",
			wire.RolloutActionRequest{Reason: "second pair of eyes"}, nil); err != nil {
			tb.Fatalf("approve rollout %s: %v", ap.RolloutID, err)
		}
	}
}

func (e *e2e) startAgent(tb testing.TB) *proc {
	return start(tb, e.agentBin, "--config", e.config, "--once", "--log-format", "json")
}

// checkInstalledOnce checks that the hook ran once, with the release's
// bytes, and that otad, stopped, holds each report of the device once.
func (e *e2e) checkInstalledOnce(t *testing.T) {
	t.Helper()
	hookLog, err := os.ReadFile(filepath.Join(e.outDir, "hook.log"))
	if err != nil {
		t.Fatalf("the install hook never ran: %v", err)
	}
	want := e.sha256 + " " + patchID + " " + targetPath + " 7.5.0"
	if got := strings.TrimSpace(string(hookLog)); got != want {
		t.Errorf("install hook runs:\n%s\nwant one: %s", got, want)
	}
	installed, err := os.ReadFile(filepath.Join(e.outDir, "installed.bin"))
	if err != nil || apitest.SHA256Hex(installed) != e.sha256 {
		t.Errorf("the hook got %d bytes (%v), not the release's %d", len(installed), err, len(e.content))
	}
	var st struct {
		DeviceID string `json:"device_id"`
		Build    string `json:"build"`
	}
	data, err := os.ReadFile(filepath.Join(e.stateDir, "state.json"))
	if err != nil || json.Unmarshal(data, &st) != nil || st.DeviceID == "" {
		t.Fatalf("agent state: %v %s", err, data)
	}
	if st.Build != "7.5.0" {
		t.Errorf("agent runs build %q after the install, want 7.5.0 (installs_build)", st.Build)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.stateDir, "outbox")); len(ents) != 0 {
		t.Errorf("outbox holds %d reports after the agent finished, want none", len(ents))
	}
	e.otad.signal(syscall.SIGTERM)
	db, err := sqlstore.Open(context.Background(), "sqlite:"+filepath.Join(e.dataDir, "otad.db"), sqlstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reports, err := db.Devices().Reports(context.Background(), st.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, r := range reports {
		states = append(states, r.State)
	}
	if got, want := strings.Join(states, ","), "downloading,downloaded,verified,installing,installed"; got != want {
		t.Errorf("otad holds the reports %s for the device, want %s, each once", got, want)
	}
}

// TestAgentResumesDownloadAfterKill SIGKILLs the agent in the middle of
// a 20 MiB download, restarts it, and checks that it asks only for the
// rest (Range + If-Range, answered 206), installs once with the right
// bytes, and that otad holds each of its reports once.
func TestAgentResumesDownloadAfterKill(t *testing.T) {
	const size = 20 << 20
	e := setup(t, size)
	e.proxy.set(func(p *proxy) { p.stallTargets = true })
	part := filepath.Join(e.stateDir, "download", e.sha256+".part")
	first := e.startAgent(t)
	select {
	case <-e.proxy.stalledAnswer:
	case <-first.exited:
		t.Fatalf("the agent exited before downloading:\n%s", first.tail(30))
	case <-time.After(2 * time.Minute): // only bounds a hang
		t.Fatalf("the agent never downloaded:\n%s", first.tail(30))
	}
	var partial int64
	waitFor(t, "partial download on disk", time.Minute, func() bool {
		fi, err := os.Stat(part)
		if err == nil {
			partial = fi.Size()
		}
		return partial > 0
	})
	first.signal(syscall.SIGKILL)
	if fi, err := os.Stat(part); err != nil || fi.Size() == 0 || fi.Size() >= size {
		t.Fatalf("after the kill, the partial file is %v (%v); want between 0 and %d bytes", fi, err, size)
	}
	fi, _ := os.Stat(part)
	partial = fi.Size()
	before := len(e.proxy.exchanges())
	e.proxy.set(func(p *proxy) { p.stallTargets = false })

	second := e.startAgent(t)
	if code := second.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("second run exited %d:\n%s", code, second.tail(30))
	}
	var received int64
	var resumed bool
	for _, ex := range e.proxy.exchanges()[before:] {
		if !strings.HasPrefix(ex.path, "/targets/") {
			continue
		}
		received += ex.sent
		if ex.rangeHeader == fmt.Sprintf("bytes=%d-", partial) && ex.status == http.StatusPartialContent {
			resumed = true
		}
	}
	if !resumed || received != size-partial {
		t.Errorf("second run: resumed with a 206 to bytes=%d-: %v; received %d bytes, want %d (the rest of %d)\n%v",
			partial, resumed, received, size-partial, size, e.proxy.exchanges()[before:])
	}
	served206 := false
	for _, r := range e.otad.records("request") {
		served206 = served206 || (r["route"] == "/targets/*" && r["status"] == float64(http.StatusPartialContent))
	}
	if !served206 {
		t.Errorf("otad's request log shows no 206 answer on /targets/")
	}
	if v := second.records("update verified"); len(v) != 1 || v[0]["resumed_at"] != float64(partial) {
		t.Errorf("agent log of the verified update: %v, want resumed_at %d", v, partial)
	}
	e.checkInstalledOnce(t)
}

// TestAgentOutboxSurvivesKill SIGKILLs the agent after otad stored its
// "installed" report but before the answer reached the agent, restarts
// it, and checks that it sends the same report again, that otad answers
// it as a duplicate, and that otad holds it once.
func TestAgentOutboxSurvivesKill(t *testing.T) {
	e := setup(t, 256<<10)
	e.proxy.set(func(p *proxy) { p.holdReport = "installed" })
	first := e.startAgent(t)
	var held wire.ReportBody
	select {
	case held = <-e.proxy.held:
	case <-first.exited:
		t.Fatalf("the agent exited before reporting the install:\n%s", first.tail(30))
	case <-time.After(2 * time.Minute): // only bounds a hang
		t.Fatalf("the agent never reported the install:\n%s", first.tail(30))
	}
	first.signal(syscall.SIGKILL)
	ents, _ := os.ReadDir(filepath.Join(e.stateDir, "outbox"))
	if len(ents) != 1 || !strings.Contains(ents[0].Name(), held.ReportID) {
		t.Fatalf("outbox after the kill: %v, want the held report %s alone", ents, held.ReportID)
	}

	second := e.startAgent(t)
	if code := second.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("second run exited %d:\n%s", code, second.tail(30))
	}
	var sends []exchange
	for _, ex := range e.proxy.exchanges() {
		if ex.reportID == held.ReportID {
			sends = append(sends, ex)
		}
	}
	if len(sends) != 2 || sends[0].answer != "held" || sends[1].status != http.StatusOK || sends[1].answer != `{"duplicate":true}` {
		t.Errorf("sends of report %s: %+v; want the held one, then a resend answered 200 duplicate", held.ReportID, sends)
	}
	e.checkInstalledOnce(t)
}
