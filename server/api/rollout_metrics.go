package api

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patchfleet/ota/server"
)

// rolloutSeriesAfterEnd is how long an aborted rollout keeps its series
// after it ended: long enough for a dashboard of the last day, and the
// number of series stays bounded by the rollouts alive.
const rolloutSeriesAfterEnd = 24 * time.Hour

// RolloutMetrics exports the rollouts to Prometheus, so that an alerting
// setup can page on a failing rollout: counters of what check-ins decide
// and reports say (as a server.RolloutObserver), of automatic halts and
// holds (Event), and gauges of each rollout's state read from a snapshot
// at scrape time. It is a prometheus.Collector; Config.RolloutMetrics
// registers it on the API's registry. Safe for concurrent use.
type RolloutMetrics struct {
	snapshot func() []*server.Rollout
	now      func() time.Time

	offers    *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	reports   *prometheus.CounterVec
	autoHalts *prometheus.CounterVec

	state    *prometheus.Desc
	percent  *prometheus.Desc
	heldDesc *prometheus.Desc
	halted   *prometheus.Desc
}

var _ server.RolloutObserver = (*RolloutMetrics)(nil)

// NewRolloutMetrics returns the metrics of the rollouts that snapshot
// lists at each scrape (a replica's cached rollouts; nil exports the
// counters only). now is the clock that ages aborted rollouts out
// (default time.Now).
func NewRolloutMetrics(snapshot func() []*server.Rollout, now func() time.Time) *RolloutMetrics {
	if now == nil {
		now = time.Now
	}
	return &RolloutMetrics{snapshot: snapshot, now: now,
		offers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_rollout_offers_total",
			Help: "Offers check-ins answered, by rollout and kind: first (the rollout's first offer to the handset), retry (after a failed install), repeat (the offer the handset has, again).",
		}, []string{"rollout", "kind"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_rollout_refusals_total",
			Help: "Check-ins a rollout decided to make no offer to, by reason (not_in_cohort, outside_window, offer_cap_reached, ...).",
		}, []string{"reason"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_rollout_reports_total",
			Help: "Install reports that moved a handset's record of a rollout, by rollout and reported state.",
		}, []string{"rollout", "state"}),
		autoHalts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_rollout_auto_halts_total",
			Help: "Automatic stops for failures, by rollout and scope: rollout (the whole rollout halted) or model (one model held).",
		}, []string{"rollout", "scope"}),
		state: prometheus.NewDesc("otad_rollout_state",
			"1 for the rollout's current state, 0 for the others.", []string{"rollout", "state"}, nil),
		percent: prometheus.NewDesc("otad_rollout_stage_percent",
			"Percent of the selected handsets in the rollout's current stage.", []string{"rollout"}, nil),
		heldDesc: prometheus.NewDesc("otad_rollout_held_models",
			"Models of the rollout held, by a policy or an operator.", []string{"rollout"}, nil),
		halted: prometheus.NewDesc("otad_rollout_halted",
			"1 while the rollout is halted by its failure policy (until resumed), else 0.", []string{"rollout"}, nil),
	}
}

var offerKinds = map[server.OfferKind]string{
	server.OfferFirst:  "first",
	server.OfferRetry:  "retry",
	server.OfferRepeat: "repeat",
}

// Decided implements server.RolloutObserver: an offer counts by rollout
// and kind, a refusal by reason only, since every check-in of a handset
// outside a cohort is one and a rollout label would multiply the series
// by nothing useful.
func (m *RolloutMetrics) Decided(dec server.Decision) {
	if kind, ok := offerKinds[dec.Kind]; ok {
		m.offers.WithLabelValues(dec.RolloutID, kind).Inc()
		return
	}
	m.refusals.WithLabelValues(server.RefusalCode(dec.Reason)).Inc()
}

// Reported implements server.RolloutObserver. A state that is not a
// report state (which validation rules out) counts as "other", so no
// input adds a series.
func (m *RolloutMetrics) Reported(rolloutID, state string) {
	if !slices.Contains(server.ReportStates, state) {
		state = "other"
	}
	m.reports.WithLabelValues(rolloutID, state).Inc()
}

// Event counts the automatic halts and holds among a rollout's saved
// events (server.RolloutEvaluator.OnEvent); an operator's pause or hold
// is not an auto-halt.
func (m *RolloutMetrics) Event(ev server.Event) {
	if ev.Actor != server.SystemActor {
		return
	}
	switch ev.Action {
	case server.ActionHalt:
		m.autoHalts.WithLabelValues(ev.RolloutID, "rollout").Inc()
	case server.ActionHold:
		m.autoHalts.WithLabelValues(ev.RolloutID, "model").Inc()
	}
}

// Describe implements prometheus.Collector.
func (m *RolloutMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.offers.Describe(ch)
	m.refusals.Describe(ch)
	m.reports.Describe(ch)
	m.autoHalts.Describe(ch)
	ch <- m.state
	ch <- m.percent
	ch <- m.heldDesc
	ch <- m.halted
}

// Collect implements prometheus.Collector. Rollouts not aborted, and
// those aborted in the last day, get gauges, and their auto-halt
// counters start at 0, so that an alert on their increase fires on the
// first halt; the counters of rollouts aborted longer ago are dropped.
func (m *RolloutMetrics) Collect(ch chan<- prometheus.Metric) {
	var rollouts []*server.Rollout
	if m.snapshot != nil {
		rollouts = m.snapshot()
	}
	now := m.now()
	for _, r := range rollouts {
		if r.State == server.RolloutAborted && now.Sub(r.EndedAt) > rolloutSeriesAfterEnd {
			for _, v := range []*prometheus.CounterVec{m.offers, m.reports, m.autoHalts} {
				v.DeletePartialMatch(prometheus.Labels{"rollout": r.ID})
			}
			continue
		}
		for _, st := range server.RolloutStates {
			ch <- prometheus.MustNewConstMetric(m.state, prometheus.GaugeValue, boolValue(r.State == st), r.ID, string(st))
		}
		ch <- prometheus.MustNewConstMetric(m.percent, prometheus.GaugeValue, r.Percent(), r.ID)
		ch <- prometheus.MustNewConstMetric(m.heldDesc, prometheus.GaugeValue, float64(len(r.Holds)), r.ID)
		ch <- prometheus.MustNewConstMetric(m.halted, prometheus.GaugeValue, boolValue(r.Halt != nil), r.ID)
		if r.State != server.RolloutAborted {
			m.autoHalts.WithLabelValues(r.ID, "rollout")
			m.autoHalts.WithLabelValues(r.ID, "model")
		}
	}
	m.offers.Collect(ch)
	m.refusals.Collect(ch)
	m.reports.Collect(ch)
	m.autoHalts.Collect(ch)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
