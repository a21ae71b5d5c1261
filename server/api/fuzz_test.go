package api

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/patchfleet/ota/server/api/wire"
)

// FuzzHandsetBodies throws arbitrary bodies at the three handset endpoints
// that decode JSON. Whatever arrives, the answer is a status the API
// documents, with a JSON error body for every refusal, and nothing panics.
func FuzzHandsetBodies(f *testing.F) {
	seeds := []string{
		validCheckIn,
		`{"report_id":"r-1","patch_id":"CM-2026-001","state":"installed","at":"2026-11-23T10:00:00Z"}`,
		`{"report_id":"r-1","patch_id":"CM-2026-001","state":"failed","error_code":"E_DISK","message":"no space","at":"2026-11-23T10:00:00Z"}`,
		`{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret","region":"DE"}`,
		`{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret","device_key":"00","signature":"00","timestamp":"2026-11-23T10:00:00Z"}`,
		`{"imei":"490154203237518"}`, `{"build":null}`, `[]`, `"x"`, `{"installed_patches":{}}`, `{}{}`, ``, `{"at":"not a time"}`,
		`{"number_encryption":1e309}`, "{\"message\":\"\\u0000\"}",
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	s, _ := newHandsetServer(f, Config{MaxBody: 4096})
	paths := []string{"/api/v1/checkin", "/api/v1/reports", "/api/v1/devices"}
	allowed := []int{200, 201, 400, 401, 413, 429}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		rec := post(t, withContract(t, s), path, goodToken, string(body), offContract) // arbitrary bodies
		if !slices.Contains(allowed, rec.Code) {
			t.Fatalf("%s answered %d to %q", path, rec.Code, body)
		}
		if rec.Code >= 400 {
			var eb wire.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" {
				t.Fatalf("%s %d with a body that is not a JSON error: %q", path, rec.Code, rec.Body)
			}
		}
		if rec.Code == http.StatusBadRequest && path != "/api/v1/devices" && rec.Header().Get("Content-Type") == "" {
			t.Fatal("no content type")
		}
	})
}
