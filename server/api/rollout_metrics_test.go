package api

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// metricsRollouts are a snapshot of one rollout in each situation the
// gauges show, at metricsNow.
func metricsRollouts() []*rollout.Rollout {
	stages := []float64{1, 10, 50, 100}
	return []*rollout.Rollout{
		{ID: "ro_run", State: rollout.RolloutRunning, Stages: stages, Stage: 1,
			Holds: []rollout.Hold{{Model: "PX-7", Actor: audit.SystemActor}}},
		{ID: "ro_halted", State: rollout.RolloutPaused, Stages: stages, Stage: 2,
			Halt: &rollout.Hold{Actor: audit.SystemActor, Reason: "20% failed"}},
		{ID: "ro_draft", State: rollout.RolloutDraft, Stages: stages},
		{ID: "ro_aborted", State: rollout.RolloutAborted, Stages: stages, EndedAt: metricsNow.Add(-23 * time.Hour)},
		{ID: "ro_old", State: rollout.RolloutAborted, Stages: stages, Stage: 3, EndedAt: metricsNow.Add(-25 * time.Hour)},
	}
}

var metricsNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// TestRolloutMetrics feeds decisions, reports and events, then scrapes:
// offers count by rollout and kind, refusals by reason alone, only the
// system's halts and holds are auto-halts, each rollout has its state
// gauges, and a rollout aborted more than a day ago has no series left.
func TestRolloutMetrics(t *testing.T) {
	m := NewRolloutMetrics(metricsRollouts, func() time.Time { return metricsNow })
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	for _, dec := range []rollout.Decision{
		{RolloutID: "ro_run", Kind: rollout.OfferFirst},
		{RolloutID: "ro_run", Kind: rollout.OfferFirst},
		{RolloutID: "ro_run", Kind: rollout.OfferRetry},
		{RolloutID: "ro_run", Kind: rollout.OfferRepeat},
		{RolloutID: "ro_old", Kind: rollout.OfferRepeat},
		{RolloutID: "ro_run", Reason: rollout.ErrNotInCohort},
		{RolloutID: "ro_halted", Reason: rollout.ErrNotInCohort},
		{RolloutID: "ro_halted", Reason: rollout.ErrRolloutHalted},
		{RolloutID: "ro_run", Reason: rollout.ErrModelHeld},
	} {
		m.Decided(dec)
	}
	m.Reported("ro_run", handsets.StateInstalled)
	m.Reported("ro_run", handsets.StateInstalled)
	m.Reported("ro_run", handsets.StateFailed)
	m.Reported("ro_run", "made-up")
	m.Reported("ro_old", handsets.StateInstalled)
	for _, ev := range []rollout.Event{
		{RolloutID: "ro_halted", Actor: audit.SystemActor, Action: rollout.ActionHalt},
		{RolloutID: "ro_run", Actor: audit.SystemActor, Action: rollout.ActionHold, Model: "PX-7"},
		{RolloutID: "ro_run", Actor: audit.SystemActor, Action: rollout.ActionAdvance},
		{RolloutID: "ro_run", Actor: "alice", Action: rollout.ActionHold, Model: "PX-8"},
		{RolloutID: "ro_run", Actor: "alice", Action: rollout.ActionPause},
		{RolloutID: "ro_old", Actor: audit.SystemActor, Action: rollout.ActionHalt},
	} {
		m.Event(ev)
	}

	want := `
# HELP otad_rollout_auto_halts_total Automatic stops for failures, by rollout and scope: rollout (the whole rollout halted) or model (one model held).
# TYPE otad_rollout_auto_halts_total counter
otad_rollout_auto_halts_total{rollout="ro_draft",scope="model"} 0
otad_rollout_auto_halts_total{rollout="ro_draft",scope="rollout"} 0
otad_rollout_auto_halts_total{rollout="ro_halted",scope="model"} 0
otad_rollout_auto_halts_total{rollout="ro_halted",scope="rollout"} 1
otad_rollout_auto_halts_total{rollout="ro_run",scope="model"} 1
otad_rollout_auto_halts_total{rollout="ro_run",scope="rollout"} 0
# HELP otad_rollout_halted 1 while the rollout is halted by its failure policy (until resumed), else 0.
# TYPE otad_rollout_halted gauge
otad_rollout_halted{rollout="ro_aborted"} 0
otad_rollout_halted{rollout="ro_draft"} 0
otad_rollout_halted{rollout="ro_halted"} 1
otad_rollout_halted{rollout="ro_run"} 0
# HELP otad_rollout_held_models Models of the rollout held, by a policy or an operator.
# TYPE otad_rollout_held_models gauge
otad_rollout_held_models{rollout="ro_aborted"} 0
otad_rollout_held_models{rollout="ro_draft"} 0
otad_rollout_held_models{rollout="ro_halted"} 0
otad_rollout_held_models{rollout="ro_run"} 1
# HELP otad_rollout_offers_total Offers check-ins answered, by rollout and kind: first (the rollout's first offer to the handset), retry (after a failed install), repeat (the offer the handset has, again).
# TYPE otad_rollout_offers_total counter
otad_rollout_offers_total{kind="first",rollout="ro_run"} 2
otad_rollout_offers_total{kind="repeat",rollout="ro_run"} 1
otad_rollout_offers_total{kind="retry",rollout="ro_run"} 1
# HELP otad_rollout_refusals_total Check-ins a rollout decided to make no offer to, by reason (not_in_cohort, outside_window, offer_cap_reached, ...).
# TYPE otad_rollout_refusals_total counter
otad_rollout_refusals_total{reason="model_held"} 1
otad_rollout_refusals_total{reason="not_in_cohort"} 2
otad_rollout_refusals_total{reason="rollout_halted"} 1
# HELP otad_rollout_reports_total Install reports that moved a handset's record of a rollout, by rollout and reported state.
# TYPE otad_rollout_reports_total counter
otad_rollout_reports_total{rollout="ro_run",state="failed"} 1
otad_rollout_reports_total{rollout="ro_run",state="installed"} 2
otad_rollout_reports_total{rollout="ro_run",state="other"} 1
# HELP otad_rollout_stage_percent Percent of the selected handsets in the rollout's current stage.
# TYPE otad_rollout_stage_percent gauge
otad_rollout_stage_percent{rollout="ro_aborted"} 1
otad_rollout_stage_percent{rollout="ro_draft"} 1
otad_rollout_stage_percent{rollout="ro_halted"} 50
otad_rollout_stage_percent{rollout="ro_run"} 10
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"otad_rollout_auto_halts_total", "otad_rollout_halted", "otad_rollout_held_models", "otad_rollout_offers_total",
		"otad_rollout_refusals_total", "otad_rollout_reports_total", "otad_rollout_stage_percent"); err != nil {
		t.Error(err)
	}

	states := map[string]string{"ro_run": "running", "ro_halted": "paused", "ro_draft": "draft", "ro_aborted": "aborted"}
	var wantStates strings.Builder
	wantStates.WriteString("# HELP otad_rollout_state 1 for the rollout's current state, 0 for the others.\n# TYPE otad_rollout_state gauge\n")
	for _, id := range []string{"ro_aborted", "ro_draft", "ro_halted", "ro_run"} {
		for _, st := range []string{"aborted", "completed", "draft", "paused", "running"} {
			v := "0"
			if states[id] == st {
				v = "1"
			}
			wantStates.WriteString(`otad_rollout_state{rollout="` + id + `",state="` + st + `"} ` + v + "\n")
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantStates.String()), "otad_rollout_state"); err != nil {
		t.Error(err)
	}
}

// TestRolloutMetricsServed checks the wiring: Config.RolloutMetrics is
// on /metrics.
func TestRolloutMetricsServed(t *testing.T) {
	m := NewRolloutMetrics(metricsRollouts, func() time.Time { return metricsNow })
	m.Decided(rollout.Decision{RolloutID: "ro_run", Kind: rollout.OfferFirst})
	s := New(Config{RolloutMetrics: m})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, line := range []string{
		`otad_rollout_offers_total{kind="first",rollout="ro_run"} 1`,
		`otad_rollout_stage_percent{rollout="ro_run"} 10`,
		`otad_rollout_state{rollout="ro_halted",state="paused"} 1`,
	} {
		if rec.Code != http.StatusOK || !strings.Contains(string(body), line+"\n") {
			t.Errorf("GET /metrics: %d, no line %q in:\n%s", rec.Code, line, body)
		}
	}
}

// rolloutSeries counts the series of reg that carry a rollout label, and
// the distinct rollouts they name.
func rolloutSeries(t *testing.T, reg *prometheus.Registry) (series int, rollouts map[string]bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	rollouts = map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "rollout" {
					series++
					rollouts[l.GetValue()] = true
				}
			}
		}
	}
	return series, rollouts
}

// TestRolloutMetricsLabels: a rollout whose id is an identifier (stored
// before ids were checked) has no series, whatever is counted for it,
// and an id the server made or a chosen one that passes the rules does.
func TestRolloutMetricsLabels(t *testing.T) {
	stages := []float64{1, 10}
	snapshot := func() []*rollout.Rollout {
		return []*rollout.Rollout{
			{ID: "867530012345670", State: rollout.RolloutRunning, Stages: stages},
			{ID: "IMEI867530x012345x670", State: rollout.RolloutRunning, Stages: stages},
			{ID: "203.0.113.77", State: rollout.RolloutPaused, Stages: stages},
			{ID: "ro-0123456789ab", State: rollout.RolloutRunning, Stages: stages},
			{ID: "cm-2026-001-beta", State: rollout.RolloutRunning, Stages: stages},
		}
	}
	m := NewRolloutMetrics(snapshot, func() time.Time { return metricsNow })
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	for _, r := range snapshot() {
		m.Decided(rollout.Decision{RolloutID: r.ID, Kind: rollout.OfferFirst})
		m.Reported(r.ID, handsets.StateFailed)
		m.Event(rollout.Event{RolloutID: r.ID, Actor: audit.SystemActor, Action: rollout.ActionHalt})
	}
	_, got := rolloutSeries(t, reg)
	want := map[string]bool{"ro-0123456789ab": true, "cm-2026-001-beta": true}
	if !maps.Equal(got, want) {
		t.Fatalf("rollout labels %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// TestRolloutMetricsBounded: however many rollouts there are, open,
// completed or aborted, at most MaxRollouts have series: the open ones
// first, then the latest ended; the counters of the others are dropped.
func TestRolloutMetricsBounded(t *testing.T) {
	var rollouts []*rollout.Rollout
	for i := range 300 {
		at := metricsNow.Add(-time.Duration(300-i) * time.Minute)
		rollouts = append(rollouts,
			&rollout.Rollout{ID: fmt.Sprintf("ro-open-%d", i), State: rollout.RolloutRunning, Stages: []float64{1}, CreatedAt: at},
			&rollout.Rollout{ID: fmt.Sprintf("ro-done-%d", i), State: rollout.RolloutCompleted, Stages: []float64{1}, CreatedAt: at, EndedAt: at},
			&rollout.Rollout{ID: fmt.Sprintf("ro-gone-%d", i), State: rollout.RolloutAborted, Stages: []float64{1}, CreatedAt: at, EndedAt: at})
	}
	m := NewRolloutMetrics(func() []*rollout.Rollout { return rollouts }, func() time.Time { return metricsNow })
	m.MaxRollouts = 100
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	for _, r := range rollouts {
		for _, kind := range []rollout.OfferKind{rollout.OfferFirst, rollout.OfferRetry, rollout.OfferRepeat} {
			m.Decided(rollout.Decision{RolloutID: r.ID, Kind: kind})
		}
		for _, st := range handsets.ReportStates {
			m.Reported(r.ID, st)
		}
	}
	series, got := rolloutSeries(t, reg)
	// Per rollout: 5 state gauges, percent, held, halted, 2 auto-halt
	// counters, 3 offer kinds and 7 report states.
	const perRollout = 5 + 3 + 2 + 3 + 7
	if len(got) != 100 || series > 100*perRollout {
		t.Fatalf("%d rollouts with %d series, want 100 with at most %d", len(got), series, 100*perRollout)
	}
	for i := 200; i < 300; i++ {
		if id := fmt.Sprintf("ro-open-%d", i); !got[id] {
			t.Fatalf("open rollout %s, among the 100 newest, has no series", id)
		}
	}

	// With fewer open ones, the latest ended fill the rest.
	rollouts = rollouts[len(rollouts)-60:] // the last 20 of each kind
	_, got = rolloutSeries(t, reg)
	if len(got) != 60 {
		t.Fatalf("%d rollouts with series, want the 60 left", len(got))
	}
}
