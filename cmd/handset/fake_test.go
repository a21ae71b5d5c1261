package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
)

const (
	testPatchPath = "cloudmsg/CM-2026-001/update.zip"
	testPatchID   = "CM-2026-001"
	testModel     = "PX-7"
	testBuild     = "7.2.1"
)

// repo is a real TUF repository served by apitest, with the privacy
// patch published by two of three engineers.
type repo struct {
	env      *apitest.Env
	patch    []byte
	rootFile string
	custom   json.RawMessage
}

func startRepo(tb testing.TB) *repo {
	tb.Helper()
	env := apitest.Start(tb, apitest.Options{})
	es := apitest.NewEngineers(tb, 3)
	env.Ceremony(tb, es, 2)
	patch := make([]byte, 32<<10)
	rand.Read(patch)
	env.Publish(tb, testPatchPath, patch, es[0], es[1])
	rootFile := filepath.Join(tb.TempDir(), "root.json")
	if err := os.WriteFile(rootFile, env.RootBytes(tb, 1), 0o644); err != nil {
		tb.Fatal(err)
	}
	custom, err := json.Marshal(apitest.PatchCustom())
	if err != nil {
		tb.Fatal(err)
	}
	return &repo{env: env, patch: patch, rootFile: rootFile, custom: custom}
}

// fakeServer implements the handset API contract in front of a TUF
// backend (the apitest server, or a proxy in front of it). It records
// everything the handsets send.
type fakeServer struct {
	URL       string
	repo      *repo
	pollAfter float64 // poll_after_seconds of every check-in answer

	// Faults, set before the run.
	checkIn429     int  // the first N check-ins of each device answer 429, Retry-After: 1
	unauthorizeOne bool // the first check-in of each device answers 401 and forgets the token
	// reportFault decides an answer to a report attempt: store it or not,
	// and the status to answer (0 = normal).
	reportFault func(r reportBody, attempt int) (store bool, status int)
	// offerPatch overrides the offered patch id (default: the real one).
	offerPatch string
	// secret, when set, is the enrollment secret handsets must present.
	secret string
	// noOffer makes every check-in answer offer null: a rollout that has
	// not started.
	noOffer bool

	// targetFailures answers that many artifact downloads 503.
	targetFailures atomic.Int64

	inflight, maxInflight atomic.Int64
	targetGets            atomic.Int64
	timestampGets         atomic.Int64

	mu      sync.Mutex
	devices map[string]*fakeDevice
	tokens  map[string]string // token -> device id
}

type fakeDevice struct {
	id         string
	enrolls    int
	checkIns   []checkInRecord // accepted check-ins
	rejected   []time.Time     // check-ins answered 429
	reports    []reportBody    // stored, once each
	attempts   []reportBody    // every report POST
	reportSeen map[string]bool
}

type checkInRecord struct {
	at   time.Time
	body checkInBody
}

func newFakeServer(tb testing.TB, r *repo, tufBackend string) *fakeServer {
	tb.Helper()
	f := &fakeServer{repo: r, pollAfter: 1, devices: map[string]*fakeDevice{}, tokens: map[string]string{}}
	mux := http.NewServeMux()
	if tufBackend != "" {
		u, err := url.Parse(tufBackend)
		if err != nil {
			tb.Fatal(err)
		}
		rp := httputil.NewSingleHostReverseProxy(u)
		mux.Handle("/tuf/", rp)
		mux.Handle("/targets/", rp)
	}
	mux.HandleFunc("POST /api/v1/devices", f.enroll)
	mux.HandleFunc("POST /api/v1/checkin", f.checkIn)
	mux.HandleFunc("POST /api/v1/reports", f.report)
	mux.HandleFunc("DELETE /api/v1/devices/self", f.erase)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		for {
			m := f.maxInflight.Load()
			if n <= m || f.maxInflight.CompareAndSwap(m, n) {
				break
			}
		}
		switch {
		case strings.HasPrefix(req.URL.Path, "/targets/"):
			f.targetGets.Add(1)
			if f.targetFailures.Add(-1) >= 0 {
				writeError(w, 503, "unavailable", "injected fault")
				return
			}
		case req.URL.Path == "/tuf/timestamp.json":
			f.timestampGets.Add(1)
		}
		mux.ServeHTTP(w, req)
	}))
	tb.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// decodeStrict refuses unknown fields, as the server does.
func decodeStrict(req *http.Request, v any) bool {
	dec := json.NewDecoder(req.Body)
	dec.DisallowUnknownFields()
	return dec.Decode(v) == nil
}

func (f *fakeServer) enroll(w http.ResponseWriter, req *http.Request) {
	var b enrollBody
	if !decodeStrict(req, &b) {
		writeError(w, 400, "invalid", "bad body")
		return
	}
	if f.secret != "" && b.EnrollmentSecret != f.secret {
		writeError(w, 401, "unauthorized", "enrollment secret does not match")
		return
	}
	if err := handsets.ValidateDeviceInfo(b.Model, b.Build, b.Channel, b.Region); err != nil {
		writeError(w, 400, "invalid", err.Error())
		return
	}
	pub, err := hex.DecodeString(b.DeviceKey)
	ts, terr := time.Parse(time.RFC3339Nano, b.Timestamp)
	sig, serr := hex.DecodeString(b.Signature)
	signed := server.EnrollRequest{Model: b.Model, Build: b.Build, Channel: b.Channel, Region: b.Region,
		DeviceKey: b.DeviceKey, Timestamp: ts}
	if err != nil || terr != nil || serr != nil || len(pub) != ed25519.PublicKeySize ||
		!ed25519.Verify(pub, server.EnrollMessage(signed), sig) {
		writeError(w, 400, "invalid", "bad device key signature")
		return
	}
	fp := sha256.Sum256(pub)
	id := "dev_" + hex.EncodeToString(fp[:16])
	var tok [16]byte
	rand.Read(tok[:])
	token := "otadev_" + hex.EncodeToString(tok[:])
	f.mu.Lock()
	d, ok := f.devices[id]
	if !ok {
		d = &fakeDevice{id: id, reportSeen: map[string]bool{}}
		f.devices[id] = d
	}
	for t, did := range f.tokens {
		if did == id {
			delete(f.tokens, t)
		}
	}
	f.tokens[token] = id
	d.enrolls++
	f.mu.Unlock()
	status := http.StatusCreated
	if ok {
		status = http.StatusOK
	}
	writeJSON(w, status, enrollAnswer{DeviceID: id, Token: token})
}

// device returns the device of the bearer token; the caller holds f.mu.
func (f *fakeServer) device(req *http.Request) *fakeDevice {
	tok, _ := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	id, ok := f.tokens[tok]
	if !ok {
		return nil
	}
	return f.devices[id]
}

func (f *fakeServer) checkIn(w http.ResponseWriter, req *http.Request) {
	var b checkInBody
	if !decodeStrict(req, &b) {
		writeError(w, 400, "invalid", "bad body")
		return
	}
	f.mu.Lock()
	d := f.device(req)
	if d == nil {
		f.mu.Unlock()
		writeError(w, 401, "unauthorized", "unknown device token")
		return
	}
	if len(d.rejected) < f.checkIn429 {
		d.rejected = append(d.rejected, time.Now())
		f.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		writeError(w, 429, "rate_limited", "slow down")
		return
	}
	if f.unauthorizeOne && d.enrolls == 1 {
		for t, did := range f.tokens {
			if did == d.id {
				delete(f.tokens, t)
			}
		}
		f.mu.Unlock()
		writeError(w, 401, "unauthorized", "token revoked")
		return
	}
	d.checkIns = append(d.checkIns, checkInRecord{at: time.Now(), body: b})
	f.mu.Unlock()
	ans := map[string]any{"poll_after_seconds": f.pollAfter, "offer": nil}
	if f.noOffer {
		ans["no_offer"] = "not_selected" // as otad answers while no rollout runs
	}
	patch := f.offerPatch
	if patch == "" {
		patch = testPatchID
	}
	if !f.noOffer && !slices.Contains(b.InstalledPatches, patch) {
		ans["offer"] = map[string]any{
			"target": testPatchPath, "length": len(f.repo.patch), "sha256": apitest.SHA256Hex(f.repo.patch),
			"patch_id": patch, "rollout_id": "newest",
			"metadata_url": f.URL + "/tuf/", "targets_url": f.URL + "/targets/",
			"custom": f.repo.custom,
		}
	}
	writeJSON(w, http.StatusOK, ans)
}

func (f *fakeServer) report(w http.ResponseWriter, req *http.Request) {
	var b reportBody
	if !decodeStrict(req, &b) {
		writeError(w, 400, "invalid", "bad body")
		return
	}
	if _, err := time.Parse(time.RFC3339, b.At); err != nil || b.ReportID == "" {
		writeError(w, 400, "invalid", "bad at or report_id")
		return
	}
	f.mu.Lock()
	d := f.device(req)
	if d == nil {
		f.mu.Unlock()
		writeError(w, 401, "unauthorized", "unknown device token")
		return
	}
	d.attempts = append(d.attempts, b)
	attempt := 0
	for _, a := range d.attempts {
		if a.ReportID == b.ReportID {
			attempt++
		}
	}
	store, status := true, 0
	if f.reportFault != nil {
		store, status = f.reportFault(b, attempt)
	}
	dup := d.reportSeen[b.ReportID]
	if store && !dup {
		d.reportSeen[b.ReportID] = true
		d.reports = append(d.reports, b)
	}
	f.mu.Unlock()
	switch {
	case status != 0:
		writeError(w, status, "unavailable", "injected fault")
	case dup:
		writeJSON(w, http.StatusOK, map[string]bool{"duplicate": true})
	default:
		writeJSON(w, http.StatusCreated, map[string]bool{"duplicate": false})
	}
}

func (f *fakeServer) erase(w http.ResponseWriter, req *http.Request) {
	f.mu.Lock()
	d := f.device(req)
	if d == nil {
		f.mu.Unlock()
		writeError(w, 401, "unauthorized", "unknown device token")
		return
	}
	delete(f.devices, d.id)
	for t, did := range f.tokens {
		if did == d.id {
			delete(f.tokens, t)
		}
	}
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// snapshot returns the recorded devices; call it after the run.
func (f *fakeServer) snapshot() map[string]*fakeDevice {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]*fakeDevice, len(f.devices))
	for k, v := range f.devices {
		out[k] = v
	}
	return out
}

// runHandset runs the command in-process and returns its exit code,
// stdout and stderr. Its deadline is a backstop above the longest
// --timeout a test passes (TestFleetEndToEnd's 3m), so that a run ends
// on its own --timeout and reports what was pending, not interrupted.
func runHandset(tb testing.TB, env map[string]string, args ...string) (int, string, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// rollout runs handset without --duration, with --json, and decodes the
// result.
func rollout(tb testing.TB, f *fakeServer, extra ...string) (*rolloutResult, string) {
	tb.Helper()
	args := append([]string{"--server", f.URL, "--model", testModel, "--build", testBuild,
		"--poll-scale", "0.01", "--timeout", "60s", "--progress", "0", "--json"}, extra...)
	code, stdout, stderr := runHandset(tb, nil, args...)
	if code != 0 {
		tb.Fatalf("exit %d, stderr: %s\nstdout: %s", code, stderr, stdout)
	}
	var r rolloutResult
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		tb.Fatalf("result %q: %v", stdout, err)
	}
	return &r, stderr
}

func reportStates(rs []reportBody) []string {
	var out []string
	for _, r := range rs {
		s := r.State
		if r.ErrorCode != "" {
			s += ":" + r.ErrorCode
		}
		out = append(out, s)
	}
	return out
}

// The fake server decodes the handset's requests into its own copies of
// the bodies, as the handset's wire format (RFC 3339 strings, a plain
// bool) and not through package client's types: a change of the bodies
// the handset sends shows here.

// enrollBody is the body of POST /api/v1/devices.
type enrollBody struct {
	Model            string `json:"model"`
	Build            string `json:"build"`
	Channel          string `json:"channel"`
	Region           string `json:"region,omitempty"`
	EnrollmentSecret string `json:"enrollment_secret,omitempty"`
	DeviceKey        string `json:"device_key,omitempty"`
	Signature        string `json:"signature,omitempty"`
	Timestamp        string `json:"timestamp,omitempty"`
}

type enrollAnswer struct {
	DeviceID         string  `json:"device_id"`
	Token            string  `json:"token"`
	PollAfterSeconds float64 `json:"poll_after_seconds"`
}

// checkInBody is the body of POST /api/v1/checkin.
type checkInBody struct {
	Build            string   `json:"build"`
	Model            string   `json:"model"`
	Channel          string   `json:"channel"`
	InstalledPatches []string `json:"installed_patches"`
	CloudMessaging   string   `json:"cloud_messaging"`
	NumberEncryption bool     `json:"number_encryption"`
	UTCOffsetMinutes *int     `json:"utc_offset_minutes,omitempty"`
}

// reportBody is the body of POST /api/v1/reports.
type reportBody struct {
	ReportID  string `json:"report_id"`
	PatchID   string `json:"patch_id"`
	RolloutID string `json:"rollout_id,omitempty"`
	Target    string `json:"target,omitempty"`
	State     string `json:"state"`
	ErrorCode string `json:"error_code,omitempty"`
	Message   string `json:"message,omitempty"`
	At        string `json:"at"`
}
