package apitest_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/server/textrule"
)

// identifier is one kind of data the server must never keep, made unique
// per planting (n < 15000) so that a find names the field it came
// through; numbers have a fixed width, so that no value is part of
// another. make
// returns the value to plant and the identifiers in it: the value itself
// but for a sentence.
type identifier struct {
	kind string
	make func(n int) (value string, ids []string)
}

// imei is the n-th planted IMEI's 15 digits.
func imei(n int) string { return fmt.Sprintf("8675302%08d", n) }

func one(f func(n int) string) func(int) (string, []string) {
	return func(n int) (string, []string) { v := f(n); return v, []string{v} }
}

var identifiers = []identifier{
	{"IMEI", one(func(n int) string { return fmt.Sprintf("8675300%08d", n) })},
	{"IMSI", one(func(n int) string { return fmt.Sprintf("26201%010d", n) })},
	{"phone", one(func(n int) string { return fmt.Sprintf("+86138%08d", n) })},
	{"phone with separators", one(func(n int) string { return fmt.Sprintf("+86 138-%04d-%04d", n/10000, n%10000) })},
	{"IMEI with dashes", one(func(n int) string { return fmt.Sprintf("867-530-0%02d-%03d-%03d", n/1000000%100, n/1000%1000, n%1000) })},
	{"IPv4", one(func(n int) string { return fmt.Sprintf("203.0.%d.%d", 100+n/150, 100+n%150) })},
	{"IPv6", one(func(n int) string { return fmt.Sprintf("2001:db8::%x", 0xa000+n) })},
	{"email", one(func(n int) string { return fmt.Sprintf("a.b%d@example.com", n) })},
	// The disguises of issue 13: digits split by letters, commas, runs
	// of separators or characters that show as nothing; emails with a
	// space or a fullwidth "＠"; IPv4 in hex or of 9 digits (which a
	// build took as a version before).
	{"IMEI split by letters", one(func(n int) string { d := imei(n); return "IMEI" + d[:6] + "x" + d[6:12] + "x" + d[12:] })},
	{"IMEI split by commas", one(func(n int) string {
		d := imei(n)
		return d[:3] + "," + d[3:6] + "," + d[6:9] + "," + d[9:12] + "," + d[12:]
	})},
	{"IMEI split by double underscores", one(func(n int) string { d := imei(n); return d[:6] + "__" + d[6:12] + "__" + d[12:] })},
	{"IMEI split by three spaces", one(func(n int) string { d := imei(n); return d[:6] + "   " + d[6:12] + "   " + d[12:] })},
	{"IMEI split by zero-width spaces", one(func(n int) string { d := imei(n); return d[:6] + "\u200b" + d[6:12] + "\u200b" + d[12:] })},
	{"IMEI split by colons", one(func(n int) string { d := imei(n); return d[:6] + ":" + d[6:12] + ":" + d[12:] })},
	{"phone split by underscores", one(func(n int) string { return fmt.Sprintf("+86_138_%04d_%04d", n/10000, n%10000) })},
	{"email with a space", func(n int) (string, []string) {
		local := fmt.Sprintf("alice%05d", n)
		return local + " @example.com", []string{local + " @example.com", local}
	}},
	{"email with a fullwidth at", func(n int) (string, []string) {
		local := fmt.Sprintf("bob%05d", n)
		return local + "\uff20example.com", []string{local + "\uff20example.com", local}
	}},
	{"IPv4 in hex", one(func(n int) string { return fmt.Sprintf("0x%08x", 0xcb007100+n) })},
	{"IPv4 of 9 digits", one(func(n int) string { return fmt.Sprintf("203.%d.%d.%d", n/9000, 100+n%9000/90, 10+n%90) })},
	{"sentence", func(n int) (string, []string) {
		imei, phone, ip := fmt.Sprintf("8675301%08d", n), fmt.Sprintf("+86139%08d", n), fmt.Sprintf("198.51.%d.%d", 100+n/150, 100+n%150)
		return fmt.Sprintf("modem IMEI %s SIM %s ip %s", imei, phone, ip), []string{imei, phone, ip}
	}},
}

// needles are the strings whose presence means an identifier was kept:
// each one, and its digits when there are 7 or more (a store that dropped
// the separators still holds the number).
func needles(ids []string) []string {
	var out []string
	for _, id := range ids {
		out = append(out, id)
		digits := strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' {
				return r
			}
			return -1
		}, id)
		// The digits alone are the value with its separators dropped
		// ("+49 151 ..." stored as 49151...). A hex number has no such
		// form: its digits without its letters ("0xcb007202" gives
		// 0007202) are no identifier, and turn up in any timestamp with
		// those nanoseconds.
		if len(digits) >= 7 && digits != id && !strings.HasPrefix(id, "0x") {
			out = append(out, digits)
		}
	}
	return out
}

// planting is one request carrying a planted identifier.
type planting struct {
	carrier string // where it was planted: "report.message (IMEI)", "X-Request-Id (IPv4)"
	value   string
	ids     []string
	status  int
}

// TestPlantedIdentifiersAreNotStored plants every kind of identifier in
// every string field of every handset body (and in a JSON key, the URL
// path and query, the X-Request-Id and Authorization headers), sends
// each through the whole server (SQLite, filesystem store, debug logs),
// then searches the database file and its WAL, the blob store and the
// log for every planted value. Each field must refuse it or, for a
// report's message, scrub it; found anywhere, the test names the field
// and the place.
func TestPlantedIdentifiersAreNotStored(t *testing.T) {
	dir := t.TempDir()
	logs := &logBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dbPath := filepath.Join(dir, "otad.db")
	db, err := sqlstore.Open(t.Context(), "sqlite:"+dbPath, sqlstore.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	blobDir := filepath.Join(dir, "blobs")
	blobs, err := fsstore.New(blobDir)
	if err != nil {
		t.Fatal(err)
	}
	const secret = "fleet-secret"
	env := apitest.Start(t, apitest.Options{DB: db, Blobs: blobs, Logger: log, EnrollmentSecret: secret})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	env.Publish(t, patchPath, randomBytes(t, 4096), es...)
	// The check-ins are offered the release and the reports move the
	// handset's record of the rollout: those tables are searched too.
	ro := env.StartRollout(t, patchPath)

	client := &http.Client{Timeout: 10 * time.Second}
	// do sends a request; a planted one breaks the API contract on
	// purpose (apitest.OffContract), a baseline one must keep it. When
	// out is set, a 2xx answer is decoded into it.
	do := func(tb testing.TB, planted bool, method, path string, header http.Header, body, out any) int {
		tb.Helper()
		var r io.Reader
		if body != nil {
			b, err := json.Marshal(body)
			if err != nil {
				tb.Fatal(err)
			}
			r = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, env.URL+path, r)
		if err != nil {
			tb.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if planted {
			apitest.OffContract(req)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		if out != nil && resp.StatusCode/100 == 2 {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				tb.Fatal(err)
			}
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	send := func(tb testing.TB, method, path string, header http.Header, body any) int {
		tb.Helper()
		return do(tb, true, method, path, header, body, nil)
	}
	bearer := func(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

	// The bodies every planting starts from; each must be accepted as is,
	// or a refusal of a planted one would prove nothing.
	enrollBody := func() map[string]any {
		return map[string]any{"model": "PX-7", "build": "7.2.0", "channel": "stable", "region": "DE", "enrollment_secret": secret}
	}
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	keyedEnrollBody := func() map[string]any {
		req := server.EnrollRequest{Model: "PX-7", Build: "7.2.0", Channel: "stable",
			DeviceKey: hex.EncodeToString(key.Public().(ed25519.PublicKey)), Timestamp: time.Now().UTC()}
		b := enrollBody()
		b["device_key"], b["timestamp"] = req.DeviceKey, req.Timestamp.Format(time.RFC3339Nano)
		b["signature"] = hex.EncodeToString(ed25519.Sign(key, server.EnrollMessage(req)))
		delete(b, "region")
		return b
	}
	var enrolled wire.EnrollAnswer
	if code := call(t, "POST", env.URL+"/api/v1/devices", "", enrollBody(), &enrolled); code != http.StatusCreated {
		t.Fatalf("baseline enrollment: %d", code)
	}
	token := enrolled.Token
	checkInBody := func() map[string]any {
		return map[string]any{"build": "7.2.0", "model": "PX-7", "channel": "stable", "installed_patches": []string{},
			"cloud_messaging": "auto_enabled", "number_encryption": false, "utc_offset_minutes": 60}
	}
	reports := 0
	reportBody := func() map[string]any {
		reports++
		return map[string]any{"report_id": fmt.Sprintf("rep-%d", reports), "patch_id": "CM-2026-001", "rollout_id": ro.ID,
			"target": patchPath, "state": "installing", "at": time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano)}
	}
	failedReportBody := func() map[string]any {
		b := reportBody()
		b["state"], b["error_code"], b["message"] = "failed", "E_DISK_FULL", "no space left"
		return b
	}
	for name, tc := range map[string]struct {
		path   string
		header http.Header
		body   map[string]any
	}{
		"enrollment":        {"/api/v1/devices", nil, enrollBody()},
		"keyed enrollment":  {"/api/v1/devices", nil, keyedEnrollBody()},
		"check-in":          {"/api/v1/checkin", bearer(token), checkInBody()},
		"report":            {"/api/v1/reports", bearer(token), reportBody()},
		"report of failure": {"/api/v1/reports", bearer(token), failedReportBody()},
	} {
		if code := do(t, false, "POST", tc.path, tc.header, tc.body, nil); code/100 != 2 {
			t.Fatalf("baseline %s: %d, want 2xx", name, code)
		}
	}
	if _, err := os.Stat(dbPath + "-wal"); err != nil {
		t.Fatalf("no WAL next to the database: %v", err)
	}

	type field struct {
		carrier string
		plant   func(v string) int
	}
	inBody := func(carrier, path string, header http.Header, base func() map[string]any, key string, asList bool) field {
		return field{carrier, func(v string) int {
			b := base()
			if asList {
				b[key] = []string{v}
			} else {
				b[key] = v
			}
			return send(t, "POST", path, header, b)
		}}
	}
	var fields []field
	for _, k := range []string{"model", "build", "channel", "region", "enrollment_secret"} {
		fields = append(fields, inBody("enroll."+k, "/api/v1/devices", nil, enrollBody, k, false))
	}
	for _, k := range []string{"device_key", "signature", "timestamp"} {
		fields = append(fields, inBody("enroll."+k, "/api/v1/devices", nil, keyedEnrollBody, k, false))
	}
	for _, k := range []string{"build", "model", "channel", "cloud_messaging", "number_encryption", "utc_offset_minutes"} {
		fields = append(fields, inBody("checkin."+k, "/api/v1/checkin", bearer(token), checkInBody, k, false))
	}
	fields = append(fields, inBody("checkin.installed_patches", "/api/v1/checkin", bearer(token), checkInBody, "installed_patches", true))
	for _, k := range []string{"report_id", "patch_id", "rollout_id", "target", "state", "message", "at"} {
		fields = append(fields, inBody("report."+k, "/api/v1/reports", bearer(token), reportBody, k, false))
	}
	fields = append(fields, inBody("report.error_code", "/api/v1/reports", bearer(token), failedReportBody, "error_code", false),
		inBody("report.message of a failure", "/api/v1/reports", bearer(token), failedReportBody, "message", false),
		field{"report: a JSON key", func(v string) int {
			b := reportBody()
			b[v] = 1
			return send(t, "POST", "/api/v1/reports", bearer(token), b)
		}},
		field{"X-Request-Id", func(v string) int {
			h := bearer(token)
			h.Set("X-Request-Id", v)
			return send(t, "POST", "/api/v1/checkin", h, checkInBody())
		}},
		field{"Authorization", func(v string) int {
			return send(t, "POST", "/api/v1/checkin", bearer("otadev_"+v), checkInBody())
		}},
		field{"URL query", func(v string) int {
			return send(t, "POST", "/api/v1/checkin?imei="+url.QueryEscape(v), bearer(token), checkInBody())
		}},
		field{"URL path /tuf/", func(v string) int {
			return send(t, "GET", "/tuf/"+url.PathEscape(v)+".root.json", nil, nil)
		}},
		field{"URL path /targets/", func(v string) int {
			return send(t, "GET", "/targets/cloudmsg/"+url.PathEscape(v), nil, nil)
		}},
		field{"URL path /api/v1/", func(v string) int {
			return send(t, "POST", "/api/v1/reports/"+url.PathEscape(v), bearer(token), reportBody())
		}},
	)

	// The operators' text fields (issue 13, finding 6): ids and names are
	// refused, reasons are stored scrubbed. Each reason carrier undoes
	// its action with a plain reason, so that the next planting can act
	// again and the drafts do not reach the cap on open rollouts.
	_, adminSecret, err := env.App.Tokens.Create(t.Context(), "planting-admin", identity.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	engineer, admin := bearer(env.Token), bearer(adminSecret)
	admin_ := func(path string) string { return api.AdminPrefix + path }
	// act sends an admin request and, when out is set, decodes a 2xx
	// answer into it.
	act := func(planted bool, method, path string, header http.Header, body any, out any) int {
		t.Helper()
		return do(t, planted, method, admin_(path), header, body, out)
	}
	draft := func(edit func(b map[string]any)) map[string]any {
		b := map[string]any{"release": patchPath, "stages": []float64{1}, "draft": true, "reason": "planting"}
		if edit != nil {
			edit(b)
		}
		return b
	}
	// createAndAbort creates a draft of body and, if it was created,
	// aborts it with reason.
	createAndAbort := func(planted bool, body map[string]any, reason string) int {
		var r wire.Rollout
		code := act(planted, "POST", "/rollouts", engineer, body, &r)
		if code/100 == 2 {
			if c := act(planted, "POST", "/rollouts/"+r.ID+"/abort", engineer, map[string]any{"reason": reason}, nil); c != http.StatusOK {
				t.Fatalf("abort the planted draft %s: %d", r.ID, c)
			}
		}
		return code
	}
	withReason := func(v string) http.Header {
		h := bearer(env.Token)
		h.Set(api.HeaderReason, v)
		return h
	}
	for name, code := range map[string]int{
		"draft with a reason, aborted": createAndAbort(false, draft(nil), "planting done"),
		"hold of PX-7":                 act(false, "POST", "/rollouts/"+ro.ID+"/holds", engineer, map[string]any{"model": "PX-7", "reason": "planting"}, nil),
		"release of PX-7":              act(false, "POST", "/rollouts/"+ro.ID+"/holds/PX-7/release", engineer, map[string]any{"reason": "planting done"}, nil),
		"pause":                        act(false, "POST", "/rollouts/"+ro.ID+"/pause", engineer, map[string]any{"reason": "planting"}, nil),
		"resume":                       act(false, "POST", "/rollouts/"+ro.ID+"/resume", engineer, map[string]any{"reason": "planting done"}, nil),
		"token with X-Reason":          act(false, "POST", "/tokens", withReason("planting"), map[string]any{"name": "planting"}, nil),
		"service account":              act(false, "POST", "/users", admin, map[string]any{"name": "planting", "role": "operator", "service": true}, nil),
	} {
		if code/100 != 2 {
			t.Fatalf("baseline %s: %d, want 2xx", name, code)
		}
	}
	fields = append(fields,
		field{"rollout.id", func(v string) int {
			return createAndAbort(true, draft(func(b map[string]any) { b["id"] = v }), "planting done")
		}},
		field{"rollout.salt", func(v string) int {
			return createAndAbort(true, draft(func(b map[string]any) { b["salt"] = v }), "planting done")
		}},
		field{"rollout.models", func(v string) int {
			return createAndAbort(true, draft(func(b map[string]any) { b["models"] = []string{v} }), "planting done")
		}},
		field{"rollout.build_min", func(v string) int {
			return createAndAbort(true, draft(func(b map[string]any) { b["build_min"] = v }), "planting done")
		}},
		field{"rollout.reason", func(v string) int {
			return createAndAbort(true, draft(func(b map[string]any) { b["reason"] = v }), "planting done")
		}},
		field{"rollout abort reason", func(v string) int { return createAndAbort(true, draft(nil), v) }},
		field{"hold.model", func(v string) int {
			code := act(true, "POST", "/rollouts/"+ro.ID+"/holds", engineer, map[string]any{"model": v, "reason": "planting"}, nil)
			if code/100 == 2 {
				act(true, "POST", "/rollouts/"+ro.ID+"/holds/"+url.PathEscape(v)+"/release", engineer, map[string]any{"reason": "planting done"}, nil)
			}
			return code
		}},
		field{"hold.reason", func(v string) int {
			code := act(true, "POST", "/rollouts/"+ro.ID+"/holds", engineer, map[string]any{"model": "PX-7", "reason": v}, nil)
			act(true, "POST", "/rollouts/"+ro.ID+"/holds/PX-7/release", engineer, map[string]any{"reason": "planting done"}, nil)
			return code
		}},
		field{"pause reason", func(v string) int {
			code := act(true, "POST", "/rollouts/"+ro.ID+"/pause", engineer, map[string]any{"reason": v}, nil)
			act(true, "POST", "/rollouts/"+ro.ID+"/resume", engineer, map[string]any{"reason": "planting done"}, nil)
			return code
		}},
		field{"X-Reason", func(v string) int {
			return act(true, "POST", "/tokens", withReason(v), map[string]any{"name": "planting"}, nil)
		}},
		field{"token name", func(v string) int { return act(true, "POST", "/tokens", engineer, map[string]any{"name": v}, nil) }},
		field{"user name", func(v string) int {
			return act(true, "POST", "/users", admin, map[string]any{"name": v, "role": "operator", "service": true}, nil)
		}},
	)

	var planted []planting
	n := 0
	for _, f := range fields {
		for _, id := range identifiers {
			n++
			v, ids := id.make(n)
			code := f.plant(v)
			switch {
			case code == http.StatusTooManyRequests:
				t.Fatalf("%s: %s answered 429: a rate limit keeps the test from reaching validation", f.carrier, id.kind)
			case code >= 500:
				t.Errorf("%s: %s %q answered %d", f.carrier, id.kind, v, code)
			}
			planted = append(planted, planting{carrier: f.carrier + " (" + id.kind + ")", value: v, ids: ids, status: code})
		}
	}
	// Sent last on the same client: the server has logged every request
	// before it answers this one.
	do(t, false, "GET", "/healthz", nil, nil, nil)

	// /metrics once labelled rollouts with their ids, whatever they were.
	resp, err := client.Get(env.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Contains(metrics, []byte(`rollout="`+ro.ID+`"`)) {
		t.Fatalf("GET /metrics: %d %v, or no series of rollout %s", resp.StatusCode, err, ro.ID)
	}
	places := map[string][]byte{"the log": logs.Bytes(), "/metrics": metrics}
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(dbPath + suffix)
		if err != nil {
			t.Fatal(err)
		}
		places["the database file otad.db"+suffix] = b
	}
	err = filepath.WalkDir(blobDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		places["the blob store"] = append(places["the blob store"], b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The search must see what the server stored: the scrubbed messages.
	if !bytes.Contains(places["the database file otad.db-wal"], []byte(textrule.Redacted)) &&
		!bytes.Contains(places["the database file otad.db"], []byte(textrule.Redacted)) {
		t.Errorf("no scrubbed message in the database: the search does not see what the server stored")
	}
	for _, p := range planted {
		for _, needle := range needles(p.ids) {
			for place, content := range places {
				if bytes.Contains(content, []byte(needle)) {
					t.Errorf("%s: planted %q (answered %d) found in %s as %q", p.carrier, p.value, p.status, place, needle)
				}
			}
		}
	}
	t.Logf("%d identifiers planted through %d carriers", len(planted), len(fields))
}
