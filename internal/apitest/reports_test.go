package apitest_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// getReport GETs an admin path with token and returns the status, the
// Content-Type and the body; off marks a request that breaks the
// contract on purpose.
func getReport(tb testing.TB, env *apitest.Env, token, path string, off bool) (int, string, []byte) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, env.URL+api.AdminPrefix+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if off {
		apitest.OffContract(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), body
}

func readCSV(tb testing.TB, body []byte) [][]string {
	tb.Helper()
	records, err := csv.NewReader(bytes.NewReader(body)).ReadAll()
	if err != nil {
		tb.Fatalf("CSV %q: %v", body, err)
	}
	return records
}

// TestReports runs handsets through a rollout over HTTP and reads the
// rollout and exposure reports, as JSON and CSV, with a viewer's token:
// the counts are those of the handsets' check-ins and reports, read
// from the rollups the check-ins and reports keep.
func TestReports(t *testing.T) {
	env, clk := failingFleetRelease(t)
	_, viewer, err := env.App.Tokens.Create(t.Context(), "security-lead", identity.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{50, 100}, Reason: "privacy patch"})
	px7 := enrollFleet(t, env, 100, "PX-7", "7.2.0")
	px8 := enrollFleet(t, env, 60, "PX-8", "7.2.0")
	other := enrollFleet(t, env, 20, "QZ-1", "7.2.0") // not in the release
	fleet := slices.Concat(px7, px8, other)

	answers := checkInAll(t, fleet)
	offered := map[string]int64{}
	for _, h := range fleet {
		if answers[h.id].Offer != nil {
			offered[h.body.Model]++
		}
	}
	installed7, _ := install(t, clk, px7, answers, func(int) bool { return false })
	installed8, failed8 := install(t, clk, px8, answers, func(i int) bool { return i%4 == 0 })
	checkInAll(t, fleet) // the installed handsets run 7.5.0 with the patch now
	var held wire.Rollout
	if err := env.Do("POST", "/rollouts/"+r.ID+"/holds", wire.RolloutHoldRequest{Model: "PX-8", Reason: "E_VERIFY on PX-8"}, &held); err != nil {
		t.Fatal(err)
	}

	code, ct, body := getReport(t, env, viewer, "/rollouts/"+r.ID+"/report", false)
	if code != http.StatusOK {
		t.Fatalf("rollout report: %d %s", code, body)
	}
	var rep server.RolloutReport
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatalf("rollout report %s: %v", ct, err)
	}
	installed := int64(installed7 + installed8)
	eligible := int64(len(px7)+len(px8)) - installed // QZ-1 is not the release's
	want := server.CohortCounts{Eligible: eligible, Target: server.CohortTarget(eligible, installed, 50),
		Offered: offered["PX-7"] + offered["PX-8"], Installed: installed, Failed: int64(failed8)}
	if rep.CohortCounts != want || rep.RolloutID != r.ID || rep.Percent != 50 || rep.State != rollout.RolloutRunning {
		t.Errorf("rollout %s at %v%% %s:\n got %+v\nwant %+v", rep.RolloutID, rep.Percent, rep.State, rep.CohortCounts, want)
	}
	if offered["QZ-1"] != 0 || want.Offered < 50 || want.Target != 80 {
		t.Fatalf("offers %v, target %d: want about half of the 160 PX-7 and PX-8, a target of 80, no QZ-1", offered, want.Target)
	}
	if len(rep.ByModel) != 2 || rep.ByModel[0].Model != "PX-7" || rep.ByModel[0].Installed != int64(installed7) ||
		rep.ByModel[1].Model != "PX-8" || !rep.ByModel[1].Held || rep.ByModel[1].HoldReason != "E_VERIFY on PX-8" || rep.ByModel[1].Failed != int64(failed8) {
		t.Errorf("by model %+v, want PX-7 with %d installed, PX-8 held with %d failed", rep.ByModel, installed7, failed8)
	}
	if len(rep.ByStartingBuild) != 1 || rep.ByStartingBuild[0].StartingBuild != "7.2.0" || rep.ByStartingBuild[0].Offered != want.Offered {
		t.Errorf("by starting build %+v, want 7.2.0 with every offer", rep.ByStartingBuild)
	}
	if !slices.Equal(rep.FailureCodes, []handsets.FailureCount{{ErrorCode: "E_VERIFY", Count: int64(failed8)}}) {
		t.Errorf("failure codes %v, want E_VERIFY %d", rep.FailureCodes, failed8)
	}
	now := rep.InstallsPerHour[len(rep.InstallsPerHour)-1]
	if len(rep.InstallsPerHour) != 48 || !now.Hour.Equal(clk.Now().UTC().Truncate(time.Hour)) || now.Installed != installed || now.Failed != int64(failed8) {
		t.Errorf("%d hours, this one %+v; want 48 ending with %d installed and %d failed", len(rep.InstallsPerHour), now, installed, failed8)
	}
	if rep.OfferToInstall.Count != installed || rep.OfferToInstall.P50 == nil {
		t.Errorf("offer to install %+v, want %d installs", rep.OfferToInstall, installed)
	}
	if len(rep.Holds) != 1 || rep.Holds[0].Model != "PX-8" || rep.Halt != nil {
		t.Errorf("holds %+v, halt %+v; want PX-8 held and no halt", rep.Holds, rep.Halt)
	}

	code, ct, body = getReport(t, env, viewer, "/rollouts/"+r.ID+"/report?format=csv", false)
	if code != http.StatusOK || ct != "text/csv; charset=utf-8" {
		t.Fatalf("rollout CSV: %d %q", code, ct)
	}
	rows := readCSV(t, body)
	if len(rows) != 4 || rows[0][3] != "model" || rows[1][3] != "PX-7" || rows[2][3] != "PX-8" || rows[2][12] != "true" || rows[3][3] != api.CSVTotal {
		t.Fatalf("rollout CSV %q, want a header, PX-7, PX-8 (held) and the total", rows)
	}
	total := rows[3]
	for i, w := range []int64{want.Eligible, want.Target, want.Offered, want.Pending, want.Downloading, want.Installed, want.Failed, want.RolledBack} {
		if total[4+i] != strconv.FormatInt(w, 10) {
			t.Errorf("CSV total %s = %s, want %d", rows[0][4+i], total[4+i], w)
		}
	}

	// Exposure: every handset checked in today; the installed ones turned
	// cloud messaging off and number encryption on.
	code, _, body = getReport(t, env, viewer, "/reports/exposure?days=7&top=1", false)
	if code != http.StatusOK {
		t.Fatalf("exposure report: %d %s", code, body)
	}
	var exp server.ExposureReport
	if err := json.Unmarshal(body, &exp); err != nil {
		t.Fatal(err)
	}
	today := clk.Now().UTC().Format(time.DateOnly)
	active := int64(len(fleet))
	if exp.Day != today || exp.Active != active || exp.Exposed != active-installed || exp.Compliant != installed ||
		exp.AutoEnabled != active-installed || exp.Unencrypted != active-installed {
		t.Errorf("exposure of %s: %+v; want %s with %d active, %d exposed", exp.Day, exp.ExposureCounts, today, active, active-installed)
	}
	// The most exposed model follows the cohort the rollout drew (its salt
	// and the handsets' ids are random): rank as the report must, by
	// exposed handsets, then active ones.
	exposedByModel := map[string][2]int64{
		"PX-7": {int64(len(px7) - installed7), int64(len(px7))},
		"PX-8": {int64(len(px8) - installed8), int64(len(px8))},
		"QZ-1": {int64(len(other)), int64(len(other))},
	}
	mostExposed := ""
	for _, m := range []string{"PX-7", "PX-8", "QZ-1"} {
		c, best := exposedByModel[m], exposedByModel[mostExposed]
		if mostExposed == "" || c[0] > best[0] || c[0] == best[0] && c[1] > best[1] {
			mostExposed = m
		}
	}
	if len(exp.ByModel) != 2 || exp.ByModel[0].Model != mostExposed || exp.ByModel[0].Exposed != exposedByModel[mostExposed][0] ||
		exp.ByModel[1].Model != handsets.OtherModels || exp.ByModel[1].Models != 2 {
		t.Errorf("by model %+v, want %s (most exposed: %d) and (other) of 2", exp.ByModel, mostExposed, exposedByModel[mostExposed][0])
	}
	if len(exp.Daily) != 7 || exp.Daily[6].Day != today || exp.Daily[6].Active != active || exp.Daily[5].ShareCompliant != nil ||
		exp.Projection.Status != server.ProjectionUnknown || exp.Projection.Reason == "" {
		t.Errorf("daily %+v, projection %+v; want 7 days ending today, and no projection from one day", exp.Daily, exp.Projection)
	}

	code, ct, body = getReport(t, env, viewer, "/reports/exposure?format=csv&days=3&day="+today, false)
	if code != http.StatusOK || ct != "text/csv; charset=utf-8" {
		t.Fatalf("exposure CSV: %d %q", code, ct)
	}
	rows = readCSV(t, body)
	if len(rows) != 4 || !slices.Equal(rows[0], []string{"day", "active", "exposed", "auto_enabled", "unencrypted", "share_compliant"}) ||
		rows[3][0] != today || rows[3][1] != strconv.FormatInt(active, 10) || rows[2][5] != "" {
		t.Errorf("exposure CSV %q, want a header and 3 days ending today", rows)
	}

	for _, tc := range []struct {
		path       string
		off        bool
		code       int
		errorField string
	}{
		{"/rollouts/ro_nope/report", false, http.StatusNotFound, ""},
		{"/rollouts/" + r.ID + "/report?format=xml", true, http.StatusBadRequest, "format"},
		{"/reports/exposure?days=0", true, http.StatusBadRequest, "days"},
		{"/reports/exposure?days=367", true, http.StatusBadRequest, "days"},
		{"/reports/exposure?top=x", true, http.StatusBadRequest, "top"},
		{"/reports/exposure?day=2026-13-01", true, http.StatusBadRequest, "day"},
	} {
		code, _, body := getReport(t, env, viewer, tc.path, tc.off)
		var eb wire.ErrorBody
		if err := json.Unmarshal(body, &eb); err != nil || code != tc.code || eb.Error.Field != tc.errorField {
			t.Errorf("%s: %d %s, want %d naming %q", tc.path, code, body, tc.code, tc.errorField)
		}
	}
}
