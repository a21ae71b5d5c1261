package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
)

// These tests run against the complete application (SQLite, filesystem
// store, TUF repository) from apitest, through the handler directly.

// send serves one request; off marks it as breaking the API contract on
// purpose (the answer is still checked against it).
func send(tb testing.TB, env *apitest.Env, off bool, method, path, auth, contentType, body string, opts ...func(*http.Request)) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for _, o := range opts {
		o(req)
	}
	if off {
		apitest.OffContract(req)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	env.API.ServeHTTP(rec, req)
	return rec
}

func errorOf(tb testing.TB, rec *httptest.ResponseRecorder) wire.ErrorDetail {
	tb.Helper()
	var eb wire.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" {
		tb.Fatalf("%d with a body that is not a JSON error: %s", rec.Code, rec.Body)
	}
	return eb.Error
}

func enrollToken(tb testing.TB, env *apitest.Env) string {
	tb.Helper()
	rec := send(tb, env, false, "POST", "/api/v1/devices", "", "application/json", `{"model":"PX-7","build":"7.1.0","channel":"stable"}`)
	var a wire.EnrollAnswer
	if rec.Code != http.StatusCreated || json.Unmarshal(rec.Body.Bytes(), &a) != nil {
		tb.Fatalf("enroll: %d %s", rec.Code, rec.Body)
	}
	return a.Token
}

// goTypeName matches what encoding/json puts in its messages: Go type
// names ("wire.EnrollBody", "metadata.Alias", "[]string", "map[string]string")
// and its own wording.
var goTypeName = regexp.MustCompile(`\b(api|wire|manifests|metadata|server|time|json|reflect)\.[A-Z]|\[\]\w|map\[|\binterface\b|\bstruct\b|\bGo\b|\bint64\b|\bfloat64\b|UnmarshalJSON`)

// TestStrictJSONBodies: every route that takes a JSON body wants
// Content-Type application/json (415 otherwise), keys that match its
// fields exactly at every depth, each key once, and one object; refusals
// name the field and never a Go type.
func TestStrictJSONBodies(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	device := "Bearer " + enrollToken(t, env)
	admin := "Bearer " + env.Token
	const hex64 = "00000000000000000000000000000000000000000000000000000000000000ab"
	const (
		enroll    = `{"model":"PX-7","build":"7.1.0","channel":"stable"}`
		checkIn   = `{"build":"7.1.0","model":"PX-7","channel":"stable","installed_patches":[],"cloud_messaging":"auto_enabled","number_encryption":false}`
		report    = `{"report_id":"r-1","patch_id":"CM-2026-001","state":"installed","at":"2026-11-23T10:00:00Z"}`
		key       = `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"` + "00000000000000000000000000000000000000000000000000000000000000aa" + `"}}`
		rootDraft = `{"root_keys":[` + key + `],"root_threshold":1,"targets_keys":[` + key + `],"targets_threshold":1}`
		release   = `{"path":"px7/a.bin","length":1,"sha256":"` + "0000000000000000000000000000000000000000000000000000000000000000" + `","custom":{"patch_id":"CM-1","extra":{"a":"b"}}}`
		yank      = `{"path":"px7/a.bin"}`
		sigs      = `{"digest":"d","signatures":[{"part":"root","keyid":"` + hex64 + `","sig":"00"}]}`
	)
	routes := []struct {
		name, path, auth, valid string
	}{
		{"enroll", "/api/v1/devices", "", enroll},
		{"check-in", "/api/v1/checkin", device, checkIn},
		{"report", "/api/v1/reports", device, report},
		{"root draft", api.AdminPrefix + "/repo/root-drafts", admin, rootDraft},
		{"release", api.AdminPrefix + "/releases", admin, release},
		{"yank", api.AdminPrefix + "/yanks", admin, yank},
		{"signatures", api.AdminPrefix + "/drafts/d1/signatures", admin, sigs},
	}
	// Refusals every route gives, derived from its valid body.
	for _, r := range routes {
		first := strings.SplitN(r.valid[2:], `"`, 2)[0] // the first key
		generic := []struct {
			name, contentType, body string
			status                  int
			code, field, message    string
		}{
			{"no content type", "", r.valid, 415, "unsupported_media_type", "", "Content-Type must be application/json"},
			{"text/plain", "text/plain", r.valid, 415, "unsupported_media_type", "", "Content-Type must be application/json"},
			{"form", "application/x-www-form-urlencoded", r.valid, 415, "unsupported_media_type", "", ""},
			{"json lookalike", "application/jsonp", r.valid, 415, "unsupported_media_type", "", ""},
			{"malformed content type", "application/json; charset", r.valid, 415, "unsupported_media_type", "", ""},
			{"array", "application/json", `[]`, 400, "invalid", "", "body: want a JSON object"},
			{"array of the object", "application/json", "[" + r.valid + "]", 400, "invalid", "", "body: want a JSON object"},
			{"string", "application/json", `"x"`, 400, "invalid", "", "body: want a JSON object"},
			{"null", "application/json", `null`, 400, "invalid", "", "body: want a JSON object"},
			{"empty", "application/json", ``, 400, "invalid", "", "empty body, want JSON"},
			{"trailing object", "application/json", r.valid + `{}`, 400, "invalid", "", "body: trailing data after the JSON object"},
			{"truncated", "application/json", r.valid[:len(r.valid)-1], 400, "invalid", "", "body: truncated JSON"},
			{"key in upper case", "application/json", strings.Replace(r.valid, `"`+first+`"`, `"`+strings.ToUpper(first)+`"`, 1),
				400, "invalid", strings.ToUpper(first), "field names are case-sensitive"},
			{"key in title case", "application/json", strings.Replace(r.valid, `"`+first+`"`, `"`+strings.ToUpper(first[:1])+first[1:]+`"`, 1),
				400, "invalid", strings.ToUpper(first[:1]) + first[1:], "field names are case-sensitive"},
			{"duplicate key", "application/json", `{"` + first + `":null,` + r.valid[1:], 400, "invalid", first, `duplicate key "` + first + `"`},
			{"escaped duplicate key", "application/json", `{"` + fmt.Sprintf(`\u%04x`, first[0]) + first[1:] + `":null,` + r.valid[1:], 400, "invalid", first, "duplicate key"},
			{"unknown field", "application/json", `{"imei":"490154203237518",` + r.valid[1:], 400, "invalid", "imei", `unknown field "imei": this server does not accept it`},
		}
		for _, tc := range generic {
			t.Run(r.name+"/"+tc.name, func(t *testing.T) {
				rec := send(t, env, true, "POST", r.path, r.auth, tc.contentType, tc.body)
				checkRefusal(t, rec, tc.status, tc.code, tc.field, tc.message)
			})
		}
		// A JSON media type with parameters is JSON; whatever the route
		// answers next, it is not about the body's encoding.
		for _, ct := range []string{"application/json; charset=utf-8", "Application/JSON"} {
			t.Run(r.name+"/"+ct, func(t *testing.T) {
				rec := send(t, env, false, "POST", r.path, r.auth, ct, r.valid)
				if rec.Code == http.StatusUnsupportedMediaType {
					t.Fatalf("got 415 %s", rec.Body)
				}
				if rec.Code >= 400 {
					if e := errorOf(t, rec); strings.HasPrefix(e.Message, "body:") || strings.Contains(e.Message, "unknown field") {
						t.Fatalf("a valid body was refused: %d %s", rec.Code, rec.Body)
					}
				}
			})
		}
	}

	// Refusals inside nested objects, arrays and maps, and of values of
	// the wrong kind.
	nested := []struct {
		name, path, auth, body string
		field, message         string
	}{
		{"enroll: number for a string", "/api/v1/devices", "", `{"model":7}`, "model", "want a string"},
		{"enroll: object for a time", "/api/v1/devices", "", `{"timestamp":{}}`, "timestamp", "want an RFC 3339 time"},
		{"check-in: string for a bool", "/api/v1/checkin", device, strings.Replace(checkIn, "false", `"no"`, 1), "number_encryption", "want true or false"},
		{"check-in: object for an array", "/api/v1/checkin", device, strings.Replace(checkIn, "[]", "{}", 1), "installed_patches", "want an array"},
		{"check-in: number in the array", "/api/v1/checkin", device, strings.Replace(checkIn, "[]", `["CM-1",2]`, 1), "installed_patches[1]", "want a string"},
		{"report: number for a time", "/api/v1/reports", device, strings.Replace(report, `"2026-11-23T10:00:00Z"`, "5", 1), "at", "want an RFC 3339 time"},
		{"report: not a time", "/api/v1/reports", device, strings.Replace(report, `2026-11-23T10:00:00Z`, "yesterday", 1), "at", "want an RFC 3339 time"},
		{"root draft: number for a key", api.AdminPrefix + "/repo/root-drafts", admin, `{"root_keys":[5]}`, "root_keys[0]", "want an object"},
		{"root draft: number for a key value", api.AdminPrefix + "/repo/root-drafts", admin, `{"root_keys":[{"keyval":5}]}`, "root_keys[0].keyval", "want an object"},
		{"root draft: key field case", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"keytype"`, `"KeyType"`, 1), "root_keys[0].KeyType", `want "keytype"`},
		{"root draft: key value field case", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"public"`, `"PUBLIC"`, 1), "root_keys[0].keyval.PUBLIC", `want "public"`},
		{"root draft: duplicate key field", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"scheme":"ed25519"`, `"scheme":"ed25519","scheme":"rsa"`, 1), "root_keys[0].scheme", "duplicate key"},
		{"root draft: duplicate in a key's unrecognized field", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"scheme":"ed25519"`, `"scheme":"ed25519","x-owner":{"a":1,"a":2}`, 1), "root_keys[0].x-owner.a", "duplicate key"},
		{"root draft: fraction for a threshold", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"root_threshold":1`, `"root_threshold":1.5`, 1), "root_threshold", "want a whole number"},
		{"root draft: too deep", api.AdminPrefix + "/repo/root-drafts", admin,
			strings.Replace(rootDraft, `"scheme":"ed25519"`, `"scheme":"ed25519","x":`+strings.Repeat("[", 40)+strings.Repeat("]", 40), 1), "", "body: nested deeper than"},
		{"release: number for custom", api.AdminPrefix + "/releases", admin, `{"custom":5}`, "custom", "want an object"},
		{"release: custom field case", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"patch_id"`, `"Patch_ID"`, 1), "custom.Patch_ID", `want "patch_id"`},
		{"release: custom unknown field", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"patch_id"`, `"imei":"1","patch_id"`, 1), "custom.imei", "does not accept it"},
		{"release: duplicate in custom", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"patch_id":"CM-1"`, `"patch_id":"CM-1","patch_id":"CM-2"`, 1), "custom.patch_id", "duplicate key"},
		{"release: duplicate in extra", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"a":"b"`, `"a":"b","a":"c"`, 1), "custom.extra.a", "duplicate key"},
		{"release: number in extra", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"a":"b"`, `"a":1`, 1), "custom.extra.a", "want a string"},
		{"release: string for a length", api.AdminPrefix + "/releases", admin, strings.Replace(release, `"length":1`, `"length":"1"`, 1), "length", "want a whole number"},
		{"signatures: signature field case", api.AdminPrefix + "/drafts/d1/signatures", admin, strings.Replace(sigs, `"part"`, `"Part"`, 1), "signatures[0].Part", `want "part"`},
		{"signatures: duplicate in a signature", api.AdminPrefix + "/drafts/d1/signatures", admin, strings.Replace(sigs, `"sig":"00"`, `"sig":"00","sig":"01"`, 1), "signatures[0].sig", "duplicate key"},
		{"signatures: unknown field in a signature", api.AdminPrefix + "/drafts/d1/signatures", admin, strings.Replace(sigs, `"sig":"00"`, `"sig":"00","by":"me"`, 1), "signatures[0].by", "does not accept it"},
	}
	for _, tc := range nested {
		t.Run(tc.name, func(t *testing.T) {
			rec := send(t, env, true, "POST", tc.path, tc.auth, "application/json", tc.body)
			checkRefusal(t, rec, http.StatusBadRequest, "invalid", tc.field, tc.message)
		})
	}
}

func checkRefusal(tb testing.TB, rec *httptest.ResponseRecorder, status int, code, field, message string) {
	tb.Helper()
	if rec.Code != status {
		tb.Fatalf("got %d %s, want %d", rec.Code, rec.Body, status)
	}
	e := errorOf(tb, rec)
	if e.Code != code || e.Field != field || !strings.Contains(e.Message, message) {
		tb.Errorf("got %+v, want code %q field %q message containing %q", e, code, field, message)
	}
	if m := goTypeName.FindString(e.Message); m != "" {
		tb.Errorf("message %q names a Go type (%q)", e.Message, m)
	}
}

// TestAdminBearerScheme: the admin API takes "Authorization: Bearer
// TOKEN" with the scheme in any case (RFC 9110), never a bare token.
func TestAdminBearerScheme(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	tests := []struct {
		header string
		want   int
		off    bool // the document names the scheme "Bearer" only
	}{
		{"Bearer " + env.Token, http.StatusOK, false},
		{"bearer " + env.Token, http.StatusOK, true},
		{"BEARER " + env.Token, http.StatusOK, true},
		{env.Token, http.StatusUnauthorized, true},
		{"Basic " + env.Token, http.StatusUnauthorized, true},
		{"Bearer" + env.Token, http.StatusUnauthorized, true},
		{"Bearer ", http.StatusUnauthorized, true},
	}
	for _, tc := range tests {
		rec := send(t, env, tc.off, "GET", api.AdminPrefix+"/whoami", tc.header, "", "")
		if rec.Code != tc.want {
			t.Errorf("Authorization %q: got %d %s, want %d", tc.header, rec.Code, rec.Body, tc.want)
		}
	}
}

// TestRequestLogNamesRoutes: with every route mounted, paths that match
// a route template with client-chosen text, and paths that match none,
// are logged by route, so an identifier planted in a path stays out of
// the log.
func TestRequestLogNamesRoutes(t *testing.T) {
	var logs bytes.Buffer
	env := apitest.Start(t, apitest.Options{Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	const imei = "867530012345670"
	for _, tc := range []struct{ method, path, auth string }{
		{"GET", "/tuf/" + imei + ".root.json", ""},
		{"GET", "/targets/" + imei + ".bin", ""},
		{"GET", "/" + imei, ""},
		{"GET", api.AdminPrefix + "/drafts/" + imei, "Bearer " + env.Token},
		{"GET", api.AdminPrefix + "/" + imei, "Bearer " + env.Token},
		{"DELETE", api.AdminPrefix + "/drafts/" + imei, "Bearer " + env.Token},
	} {
		rec := send(t, env, true, tc.method, tc.path, tc.auth, "", "")
		if rec.Code < 400 || rec.Code >= 500 {
			t.Errorf("%s %s: got %d %s, want a 4xx", tc.method, tc.path, rec.Code, rec.Body)
		}
	}
	for _, want := range []string{`"route":"/tuf/:name"`, `"route":"/targets/*"`, `"route":"unmatched"`, `"route":"/api/v1/admin/drafts/:id"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(logs.String(), imei) {
		t.Errorf("a path reached the log:\n%s", logs.String())
	}
}
