package api

import (
	"slices"
	"testing"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/rollout"
)

func TestRolloutCSV(t *testing.T) {
	rep := &server.RolloutReport{RolloutID: "ro_1", State: rollout.RolloutPaused, Percent: 12.5,
		CohortCounts: server.CohortCounts{Eligible: 900, Target: 125, Offered: 110, Pending: 10, Downloading: 5, Installed: 100, Failed: 4, RolledBack: 1},
		ByModel: []server.ModelCohort{
			{Model: "PX-7", CohortCounts: server.CohortCounts{Eligible: 600, Target: 85, Offered: 80, Installed: 80}},
			{Model: "PX-8", CohortCounts: server.CohortCounts{Eligible: 300, Target: 40, Offered: 30, Installed: 20}, Held: true, HoldReason: "=HYPERLINK(\"x\")"},
		},
		Halt: &rollout.Hold{Reason: "failure rate 8% over 1h0m0s"}}
	got := rolloutCSV(rep)
	want := [][]string{
		rolloutCSVHeader,
		{"ro_1", "paused", "12.5", "PX-7", "600", "85", "80", "0", "0", "80", "0", "0", "false", ""},
		{"ro_1", "paused", "12.5", "PX-8", "300", "40", "30", "0", "0", "20", "0", "0", "true", `'=HYPERLINK("x")`},
		{"ro_1", "paused", "12.5", "(total)", "900", "125", "110", "10", "5", "100", "4", "1", "true", "failure rate 8% over 1h0m0s"},
	}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}

func TestExposureCSV(t *testing.T) {
	share := 0.25
	rep := &server.ExposureReport{Daily: []server.DayExposure{
		{Day: "2026-12-01"},
		{Day: "2026-12-02", Active: 8, Exposed: 6, AutoEnabled: 5, Unencrypted: 4, ShareCompliant: &share},
	}}
	want := [][]string{exposureCSVHeader, {"2026-12-01", "0", "0", "0", "0", ""}, {"2026-12-02", "8", "6", "5", "4", "0.25"}}
	if got := exposureCSV(rep); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("got %q, want %q", got, want)
	}
}
