package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/openapitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

func newClient(tb testing.TB, base string, opts ...client.Option) *client.Client {
	tb.Helper()
	c, err := client.New(base, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestErrorAnswers checks that the server's error answers come back as
// *client.Error with its status, code, message, field and request id.
func TestErrorAnswers(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	cl := env.Client()
	ctx := context.Background()

	_, err := cl.Draft(ctx, "d-nope")
	e := client.AsError(err)
	if e == nil || e.Status != http.StatusNotFound || e.Code != "not_found" || e.Message == "" || e.RequestID == "" ||
		e.Method != "GET" || e.Path != wire.AdminPrefix+"/drafts/d-nope" || e.RetryAfter != -1 {
		t.Fatalf("unknown draft: %#v, want a 404 not_found *Error with a message and a request id", err)
	}
	if client.Temporary(err) {
		t.Errorf("a 404 is Temporary")
	}

	_, err = cl.CreateRollout(ctx, wire.RolloutRequest{Release: "fw/none.bin", Stages: []float64{10}, Reason: "r", Window: "25:00-26:00"})
	if e := client.AsError(err); e == nil || e.Status != http.StatusBadRequest || e.Code != "invalid" || e.Field != "window" {
		t.Errorf("bad window: %v, want 400 invalid about field window", err)
	}

	// A request without a token breaks the API contract on purpose.
	anon := newClient(t, env.URL).WithHeader(openapitest.OffContractHeader, "no token")
	if _, err := anon.WhoAmI(ctx); !client.HasCode(err, "unauthorized") || client.AsError(err).Status != http.StatusUnauthorized {
		t.Errorf("no token: %v, want 401 unauthorized", err)
	}
	who, err := cl.WhoAmI(ctx)
	if err != nil || who.Role != identity.RoleReleaseEngineer {
		t.Errorf("whoami: %+v, %v; want the release engineer", who, err)
	}
}

// TestAnswersNotFromOtad covers what only something other than otad
// answers (a proxy's error page, a web server at the wrong URL): it is
// still a *client.Error or a *client.BadAnswerError, never a JSON
// decoding error.
func TestAnswersNotFromOtad(t *testing.T) {
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case wire.AdminPrefix + "/whoami":
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>Welcome to nginx!</body></html>")
		case wire.AdminPrefix + "/repo/status":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "<html>\n<h1>503   Service\nUnavailable</h1>\n</html>")
		case wire.AdminPrefix + "/rollouts":
			// A 202 that is not an approval.
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"queued":true}`)
		}
	}))
	defer stub.Close()
	cl := newClient(t, stub.URL, client.WithBearer("otad_x"))
	ctx := context.Background()

	_, err := cl.WhoAmI(ctx)
	var ba *client.BadAnswerError
	if !errors.As(err, &ba) || ba.Path != wire.AdminPrefix+"/whoami" || client.AsError(err) != nil || client.Temporary(err) {
		t.Errorf("HTML with 200: %v, want a *BadAnswerError, not Temporary", err)
	}

	_, err = cl.RepoStatus(ctx)
	e := client.AsError(err)
	if e == nil || e.Status != http.StatusServiceUnavailable || e.Code != "" || e.Message != "<html> <h1>503 Service Unavailable</h1> </html>" {
		t.Fatalf("HTML with 503: %#v, want an *Error with no code and the page on one line", err)
	}
	if d, ok := client.RetryAfter(err); !ok || d != 7*time.Second || !client.Temporary(err) {
		t.Errorf("503 Retry-After 7: RetryAfter %v %v, Temporary %v; want 7s and temporary", d, ok, client.Temporary(err))
	}

	_, err = cl.CreateRollout(ctx, wire.RolloutRequest{Release: "fw/a.bin", Stages: []float64{100}})
	if !errors.As(err, &ba) {
		t.Errorf("a 202 without an approval: %v, want a *BadAnswerError", err)
	}
}

// TestRetryAfterFromServer has the server limit a handset's check-ins
// and reads its Retry-After.
func TestRetryAfterFromServer(t *testing.T) {
	env := apitest.Start(t, apitest.Options{CheckInsPerMinute: 1})
	ctx := context.Background()
	cl := newClient(t, env.URL)
	var a wire.EnrollAnswer
	if _, err := cl.Do(ctx, "POST", wire.APIPrefix+"/devices", wire.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"}, &a); err != nil {
		t.Fatal(err)
	}
	h := cl.WithToken(a.Token)
	f := false
	body := wire.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: &f}
	var err error
	for range 20 { // the burst is 10
		if _, err = h.Do(ctx, "POST", wire.APIPrefix+"/checkin", body, nil); err != nil {
			break
		}
	}
	e := client.AsError(err)
	if e == nil || e.Status != http.StatusTooManyRequests || !client.Temporary(err) {
		t.Fatalf("check-ins past the limit: %v, want 429", err)
	}
	if d, ok := client.RetryAfter(err); !ok || d < time.Second || d > time.Minute {
		t.Errorf("RetryAfter %v %v, want 1s to 1m at one check-in a minute", d, ok)
	}
}

// TestRolloutChanges checks that a change waiting for a second person
// comes back as a value (Change.Pending), and one that does not as the
// rollout.
func TestRolloutChanges(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, "fw/a.bin", randomBytes(t, 1000), es...)
	cl := env.Client()
	ctx := context.Background()

	ch, err := cl.CreateRollout(ctx, wire.RolloutRequest{ID: "ro-wide", Release: "fw/a.bin", Stages: []float64{100}, Reason: "all at once"})
	if err != nil {
		t.Fatalf("create at 100%%: %v, want a pending approval, not an error", err)
	}
	p := ch.Pending
	if ch.Rollout != nil || p == nil || p.RolloutID != "ro-wide" || p.Action != "start" || p.ToPercent != 100 ||
		p.State != string(rollout.ApprovalPending) || p.RequestedBy != "test-engineer" {
		t.Fatalf("create at 100%%: %+v (pending %+v), want only a pending start to 100%%", ch, p)
	}
	if r, err := cl.Rollout(ctx, "ro-wide"); err != nil || r.State != string(rollout.RolloutDraft) {
		t.Errorf("while it waits: %+v, %v; want a draft", r, err)
	}
	d, err := cl.WithToken(env.ApproverToken(t)).Approve(ctx, "ro-wide", p.ID, "looks right")
	if err != nil || d.Rollout == nil || d.Rollout.State != string(rollout.RolloutRunning) || d.Approval.State != string(rollout.ApprovalApproved) {
		t.Fatalf("approve: %+v, %v; want the rollout running", d, err)
	}

	r, err := cl.PauseRollout(ctx, "ro-wide", "a closer look")
	if err != nil || r.State != string(rollout.RolloutPaused) {
		t.Fatalf("pause: %+v, %v; want paused", r, err)
	}
	evs, err := cl.RolloutEvents(ctx, "ro-wide", 0)
	if err != nil || len(evs) == 0 || evs[len(evs)-1].Action != "pause" || evs[len(evs)-1].Reason != "a closer look" {
		t.Errorf("events: %+v, %v; want the pause last, with its reason", evs, err)
	}
	if _, err := cl.PauseRollout(ctx, "ro-nope", "r"); !client.HasCode(err, "not_found") {
		t.Errorf("pause an unknown rollout: %v, want not_found", err)
	}
	list, err := cl.Rollouts(ctx, rollout.RolloutPaused)
	if err != nil || len(list) != 1 || list[0].ID != "ro-wide" {
		t.Errorf("paused rollouts: %+v, %v; want ro-wide", list, err)
	}
}

// TestWithReason checks that the reason reaches the audit log.
func TestWithReason(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	ctx := context.Background()
	cl := env.Client()
	tok, err := cl.WithReason("for the CI job").CreateToken(ctx, wire.TokenRequest{Name: "ci"})
	if err != nil || tok.Secret == "" {
		t.Fatalf("create token: %+v, %v", tok, err)
	}
	es, err := cl.Audit(ctx, client.AuditQuery{Action: "token.create"})
	if err != nil || len(es) != 1 || es[0].Reason != "for the CI job" {
		t.Errorf("audit: %+v, %v; want the token's creation with its reason", es, err)
	}
}

// progressLog records what Upload.Progress reports.
type progressLog struct {
	mu   sync.Mutex
	sent []int64
}

func (p *progressLog) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, n)
}

func (p *progressLog) get() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sent)
}

// TestUploadProgress uploads a build, then the same again: the second
// is answered from the first, before a byte is sent.
func TestUploadProgress(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	cl := env.Client()
	ctx := context.Background()
	build := randomBytes(t, 1<<20)
	sum := apitest.SHA256Hex(build)

	var first progressLog
	art, err := cl.UploadArtifact(ctx, client.Upload{Path: "fw/a.bin", Body: bytes.NewReader(build), Length: int64(len(build)),
		SHA256: sum, Progress: first.add})
	if err != nil || art.Existed || art.Length != int64(len(build)) || art.SHA256 != sum || art.Path != "fw/a.bin" {
		t.Fatalf("upload: %+v, %v", art, err)
	}
	got := first.get()
	if len(got) < 2 || got[len(got)-1] != int64(len(build)) || !slices.IsSorted(got) {
		t.Errorf("progress %v, want several calls rising to %d", got, len(build))
	}

	var again progressLog
	art, err = cl.UploadArtifact(ctx, client.Upload{Path: "fw/a.bin", Body: bytes.NewReader(build), Length: int64(len(build)),
		SHA256: sum, Progress: again.add})
	if err != nil || !art.Existed {
		t.Fatalf("upload again: %+v, %v; want Existed", art, err)
	}
	if got := again.get(); len(got) != 0 {
		t.Errorf("upload again: progress %v, want nothing sent", got)
	}
}

// TestUploadRefused covers uploads whose sha256 is refused: a body that
// does not hash to the declared sum (the client says so, the server
// keeps nothing), and a declared sum that is not one.
func TestUploadRefused(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	cl := env.Client()
	ctx := context.Background()
	build := randomBytes(t, 100<<10)
	other := apitest.SHA256Hex([]byte("another build"))

	_, err := cl.UploadArtifact(ctx, client.Upload{Path: "fw/a.bin", Body: bytes.NewReader(build), Length: int64(len(build)), SHA256: other})
	var ce *client.ChangedError
	if !errors.As(err, &ce) || ce.Declared != other || ce.Sent != apitest.SHA256Hex(build) || ce.Path != "fw/a.bin" {
		t.Fatalf("a body that is not the declared one: %v, want a *ChangedError naming both sums", err)
	}
	// The server refused it too: nothing is stored under either sum.
	art, err := cl.UploadArtifact(ctx, client.Upload{Path: "fw/a.bin", Body: bytes.NewReader(build), Length: int64(len(build)),
		SHA256: apitest.SHA256Hex(build)})
	if err != nil || art.Existed {
		t.Errorf("the right upload after it: %+v, %v; want stored now, not before", art, err)
	}

	var sent progressLog
	// A sum that is not lowercase hex breaks the API contract on purpose.
	_, err = cl.WithHeader(openapitest.OffContractHeader, "bad sha256").UploadArtifact(ctx, client.Upload{Path: "fw/b.bin", Body: bytes.NewReader(build), Length: int64(len(build)),
		SHA256: strings.ToUpper(apitest.SHA256Hex(build)), Progress: sent.add})
	if e := client.AsError(err); e == nil || e.Status != http.StatusBadRequest || e.Code != "invalid" || !strings.Contains(e.Message, wire.HeaderContentSHA256) {
		t.Errorf("an uppercase sha256: %v, want 400 invalid naming %s", err, wire.HeaderContentSHA256)
	}
	if got := sent.get(); len(got) != 0 {
		t.Errorf("refused by its header: progress %v, want nothing sent", got)
	}
}
