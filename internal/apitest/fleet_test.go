package apitest_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// send makes one request with body as it is (nil for none) and returns
// the status and the answer's bytes.
func send(tb testing.TB, method, url, token string, body []byte) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, answer
}

// keyedHandset is a handset with an ed25519 device key.
type keyedHandset struct {
	key ed25519.PrivateKey
	pub string
}

func newKeyedHandset(tb testing.TB) *keyedHandset {
	tb.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return &keyedHandset{key: key, pub: hex.EncodeToString(key.Public().(ed25519.PublicKey))}
}

// enrollBody signs an enrollment of model at ts, as a handset does, and
// returns the body's bytes: what an attacker on the path captures.
func (h *keyedHandset) enrollBody(tb testing.TB, model string, ts time.Time) []byte {
	tb.Helper()
	req := server.EnrollRequest{Model: model, Build: "7.2.0", Channel: "stable", Region: "DE", DeviceKey: h.pub, Timestamp: ts}
	sig := ed25519.Sign(h.key, server.EnrollMessage(req))
	b, err := json.Marshal(wire.EnrollBody{Model: model, Build: "7.2.0", Channel: "stable", Region: "DE",
		DeviceKey: h.pub, Signature: hex.EncodeToString(sig), Timestamp: &ts})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func enrollRaw(tb testing.TB, env *apitest.Env, body []byte) (int, wire.EnrollAnswer, wire.ErrorBody) {
	tb.Helper()
	code, answer := send(tb, http.MethodPost, env.URL+"/api/v1/devices", "", body)
	var a wire.EnrollAnswer
	var e wire.ErrorBody
	if code < 300 {
		if err := json.Unmarshal(answer, &a); err != nil {
			tb.Fatalf("enrollment answer %s: %v", answer, err)
		}
	} else if err := json.Unmarshal(answer, &e); err != nil {
		tb.Fatalf("enrollment error %s: %v", answer, err)
	}
	return code, a, e
}

func checkInRaw(tb testing.TB, env *apitest.Env, token, model string) (int, []byte) {
	tb.Helper()
	f := false
	body, err := json.Marshal(wire.CheckInBody{Build: "7.2.0", Model: model, Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: &f})
	if err != nil {
		tb.Fatal(err)
	}
	return send(tb, http.MethodPost, env.URL+"/api/v1/checkin", token, body)
}

// TestEnrollmentReplay captures a signed enrollment and replays it, as is
// and with other fields under the old signature: every replay is
// refused, the real handset's token keeps working, and the handset's own
// later enrollment still passes.
func TestEnrollmentReplay(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	h := newKeyedHandset(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	captured := h.enrollBody(t, "PX-7", now)
	code, real, _ := enrollRaw(t, env, captured)
	if code != http.StatusCreated {
		t.Fatalf("enrollment: got %d, want 201", code)
	}
	stillChecksIn := func(what string) {
		t.Helper()
		if code, answer := checkInRaw(t, env, real.Token, "PX-7"); code != http.StatusOK {
			t.Fatalf("after %s: the real handset's check-in got %d %s, want 200", what, code, answer)
		}
	}
	stillChecksIn("enrolling")

	// The captured body, replayed within the 10 minutes it is valid for.
	code, replayed, e := enrollRaw(t, env, captured)
	if code != http.StatusConflict || e.Error.Code != "conflict" ||
		!strings.Contains(e.Error.Message, "enrollment timestamp not newer than the last accepted for this key") {
		t.Fatalf("replay: got %d %+v (token %q), want 409 conflict naming the timestamp", code, e.Error, replayed.Token)
	}
	stillChecksIn("the replay")

	// The same signature over other fields: each is a 400 on the
	// signature, the device unchanged.
	var fields map[string]any
	if err := json.Unmarshal(captured, &fields); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ field, value string }{
		{"model", "PX-9"},
		{"build", "6.0.0"},
		{"channel", "beta"},
		{"region", "FR"},
		{"timestamp", now.Add(time.Second).Format(time.RFC3339Nano)},
	} {
		t.Run("changed "+tc.field, func(t *testing.T) {
			changed := map[string]any{}
			for k, v := range fields {
				changed[k] = v
			}
			changed[tc.field] = tc.value
			body, err := json.Marshal(changed)
			if err != nil {
				t.Fatal(err)
			}
			code, _, e := enrollRaw(t, env, body)
			if code != http.StatusBadRequest || e.Error.Field != "signature" {
				t.Fatalf("got %d %+v, want 400 naming signature", code, e.Error)
			}
			stillChecksIn("a changed " + tc.field)
		})
	}
	d, err := env.DB.Devices().DeviceByToken(t.Context(), identity.HashToken(real.Token))
	if err != nil || d.Model != "PX-7" || d.Build != "7.2.0" || d.Region != "DE" {
		t.Fatalf("device after the replays: %+v, %v, want PX-7 7.2.0 DE", d, err)
	}

	// A signature over the version 1 message is refused.
	v1 := server.EnrollRequest{Model: "PX-7", Build: "7.2.0", Channel: "stable", Region: "DE", DeviceKey: h.pub, Timestamp: now.Add(time.Second)}
	old := ed25519.Sign(h.key, []byte("otad-enroll-v1:"+h.pub+":"+v1.Timestamp.Format(time.RFC3339)))
	body, err := json.Marshal(wire.EnrollBody{Model: v1.Model, Build: v1.Build, Channel: v1.Channel, Region: v1.Region,
		DeviceKey: h.pub, Signature: hex.EncodeToString(old), Timestamp: &v1.Timestamp})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, e := enrollRaw(t, env, body); code != http.StatusBadRequest || e.Error.Field != "signature" {
		t.Fatalf("version 1 signature: got %d %+v, want 400 naming signature", code, e.Error)
	}
	stillChecksIn("a version 1 enrollment")

	// The handset's own later enrollment (after a factory reset): same
	// device, new token, the old one refused; its body cannot be
	// replayed either.
	later := h.enrollBody(t, "PX-7", now.Add(time.Millisecond))
	code, again, _ := enrollRaw(t, env, later)
	if code != http.StatusOK || again.DeviceID != real.DeviceID {
		t.Fatalf("re-enrollment: got %d %s, want 200 for %s", code, again.DeviceID, real.DeviceID)
	}
	if code, _ := checkInRaw(t, env, again.Token, "PX-7"); code != http.StatusOK {
		t.Fatalf("new token: check-in got %d, want 200", code)
	}
	if code, _ := checkInRaw(t, env, real.Token, "PX-7"); code != http.StatusUnauthorized {
		t.Fatalf("replaced token: check-in got %d, want 401", code)
	}
	for _, b := range [][]byte{captured, later} {
		if code, _, _ := enrollRaw(t, env, b); code != http.StatusConflict {
			t.Fatalf("replay after the re-enrollment: got %d, want 409", code)
		}
	}
	if code, _ := checkInRaw(t, env, again.Token, "PX-7"); code != http.StatusOK {
		t.Fatalf("new token after the replays: check-in got %d, want 200", code)
	}
}

// TestDeviceTokenAnswer sends every kind of bad device token to every
// handset call on the real store: malformed, unknown, erased and
// replaced by a re-enrollment all get one and the same 401.
func TestDeviceTokenAnswer(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	erased := enrollHandset(t, env, "PX-7", "7.2.0")
	if code, _ := send(t, http.MethodDelete, env.URL+"/api/v1/devices/self", erased.token, nil); code != http.StatusNoContent {
		t.Fatalf("erase: got %d, want 204", code)
	}
	h := newKeyedHandset(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	_, replaced, _ := enrollRaw(t, env, h.enrollBody(t, "PX-7", now))
	if code, _, _ := enrollRaw(t, env, h.enrollBody(t, "PX-7", now.Add(time.Millisecond))); code != http.StatusOK {
		t.Fatalf("re-enrollment: got %d, want 200", code)
	}
	var unknown [32]byte
	if _, err := rand.Read(unknown[:]); err != nil {
		t.Fatal(err)
	}
	tokens := []struct{ name, token string }{
		{"malformed", "nonsense"},
		{"unknown", "otadev_" + hex.EncodeToString(unknown[:])},
		{"erased", erased.token},
		{"replaced", replaced.Token},
	}
	f := false
	checkIn, _ := json.Marshal(wire.CheckInBody{Build: "7.2.0", Model: "PX-7", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: &f})
	at := now
	report, _ := json.Marshal(wire.ReportBody{ReportID: "r-1", PatchID: "CM-2026-001", State: handsets.StateDownloading, At: &at})
	calls := []struct {
		method, path string
		body         []byte
	}{
		{http.MethodPost, "/api/v1/checkin", checkIn},
		{http.MethodPost, "/api/v1/reports", report},
		{http.MethodDelete, "/api/v1/devices/self", nil},
	}
	var first []byte
	for _, c := range calls {
		for _, tok := range tokens {
			code, answer := send(t, c.method, env.URL+c.path, tok.token, c.body)
			if code != http.StatusUnauthorized {
				t.Fatalf("%s %s, %s token: got %d %s, want 401", c.method, c.path, tok.name, code, answer)
			}
			if first == nil {
				first = answer
			} else if !bytes.Equal(answer, first) {
				t.Errorf("%s %s, %s token: answer differs:\n got %s\nwant %s", c.method, c.path, tok.name, answer, first)
			}
		}
	}
}

// TestReportIDReused sends a report, its retry and a report that reuses
// its id with other content, through the API on the real store: 201, 200
// duplicate, 409; the stored report and the state stay the first one's.
func TestReportIDReused(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	env.Publish(t, patchPath, randomBytes(t, 1<<10), es...)
	h := enrollHandset(t, env, "PX-7", "7.2.0")
	at := time.Now().Add(-time.Minute).UTC().Truncate(time.Microsecond)
	body := func(state string) []byte {
		b, err := json.Marshal(wire.ReportBody{ReportID: "r-1", PatchID: "CM-2026-001", State: state,
			Message: "downloading part one", At: &at})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		body   []byte
		status int
		answer string
	}{
		{"first", body(handsets.StateDownloading), http.StatusCreated, `{"duplicate":false}`},
		{"retry", body(handsets.StateDownloading), http.StatusOK, `{"duplicate":true}`},
		{"changed", body(handsets.StateInstalled), http.StatusConflict, `report_id r-1 already used for a different report`},
	} {
		code, answer := send(t, http.MethodPost, env.URL+"/api/v1/reports", h.token, tc.body)
		if code != tc.status || !strings.Contains(string(answer), tc.answer) {
			t.Errorf("%s: got %d %s, want %d with %s", tc.name, code, answer, tc.status, tc.answer)
		}
	}
	states, err := env.DB.Devices().PatchStates(t.Context(), h.id)
	if err != nil || len(states) != 1 || states[0].State != handsets.StateDownloading {
		t.Errorf("state: got %+v, %v, want downloading", states, err)
	}
}

// TestFleetSummaryModels floods the fleet with invented models, as one
// client did with 5,000: the summary lists the most active and one
// handsets.OtherModels row, as many as ?models= asks within its bounds.
func TestFleetSummaryModels(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	for i := range 25 {
		h := enrollHandset(t, env, fmt.Sprintf("FLOOD-%02d", i), "7.2.0")
		h.checkIn(t)
	}
	many := enrollHandset(t, env, "PX-7", "7.2.0")
	many.checkIn(t)
	enrollHandset(t, env, "PX-7", "7.2.0").checkIn(t)
	for _, tc := range []struct {
		query string
		rows  int
		other int64 // models in the (other) row; 0 for no such row
	}{
		{"", handsets.DefaultSummaryModels + 1, 6},
		{"&models=3", 4, 23},
		{"&models=26", 26, 0},
	} {
		var sum handsets.FleetSummary
		if err := env.Do("GET", "/fleet/summary?patch=CM-2026-001"+tc.query, nil, &sum); err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		if len(sum.ByModel) != tc.rows || sum.ByModel[0] != (handsets.ModelSummary{Model: "PX-7", Active: 2}) || sum.Active != 27 {
			t.Errorf("%q: got %d rows, first %+v, %d active, want %d rows, PX-7 with 2 first, 27 active", tc.query, len(sum.ByModel), sum.ByModel[0], sum.Active, tc.rows)
		}
		last := sum.ByModel[len(sum.ByModel)-1]
		if (last.Model == handsets.OtherModels) != (tc.other > 0) || last.Models != tc.other {
			t.Errorf("%q: last row %+v, want %d models summed", tc.query, last, tc.other)
		}
	}
	// Off the contract, which bounds models too.
	for _, q := range []string{"0", "201", "many"} {
		err := env.DoOffContract("GET", "/fleet/summary?patch=CM-2026-001&models="+q, nil, nil)
		if err == nil || !strings.Contains(err.Error(), "models") {
			t.Errorf("models=%s: got %v, want a 400 naming models", q, err)
		}
	}
}
