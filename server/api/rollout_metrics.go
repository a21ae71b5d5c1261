package api

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/textrule"
)

// rolloutSeriesAfterEnd is how long an aborted rollout keeps its series
// after it ended: long enough for a dashboard of the last day.
const rolloutSeriesAfterEnd = 24 * time.Hour

// RolloutMetrics exports the rollouts to Prometheus, so that an alerting
// setup can page on a failing rollout: counters of what check-ins decide
// and reports say (as a server.RolloutObserver), of automatic halts and
// holds (Event), and gauges of each rollout's state read from a snapshot
// at scrape time. It is a prometheus.Collector; Config.RolloutMetrics
// registers it on the API's registry. Safe for concurrent use.
type RolloutMetrics struct {
	snapshot func() []*rollout.Rollout
	now      func() time.Time
	// MaxRollouts bounds the rollouts that have series (see Collect);
	// 0 is DefaultMaxRolloutSeries. The wiring sets it to twice the cap
	// on rollouts not finished.
	MaxRollouts int
	// counted holds the ids that counters were made for (count), so
	// that Collect drops the counters of every rollout it does not
	// export, in the snapshot or not.
	counted sync.Map

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
func NewRolloutMetrics(snapshot func() []*rollout.Rollout, now func() time.Time) *RolloutMetrics {
	return &RolloutMetrics{snapshot: snapshot, now: clock.Or(now),
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

var offerKinds = map[rollout.OfferKind]string{
	rollout.OfferFirst:  "first",
	rollout.OfferRetry:  "retry",
	rollout.OfferRepeat: "repeat",
}

// DefaultMaxRolloutSeries is RolloutMetrics.MaxRollouts when unset:
// twice rollout.DefaultMaxOpenRollouts.
const DefaultMaxRolloutSeries = 2 * rollout.DefaultMaxOpenRollouts

// Decided implements server.RolloutObserver: an offer counts by rollout
// and kind, a refusal by reason only, since every check-in of a handset
// outside a cohort is one and a rollout label would multiply the series
// by nothing useful. A rollout id that may not stand in a label
// (textrule.ValidRolloutID) is not counted.
func (m *RolloutMetrics) Decided(dec rollout.Decision) {
	if kind, ok := offerKinds[dec.Kind]; ok {
		m.count(m.offers, dec.RolloutID, kind)
		return
	}
	m.refusals.WithLabelValues(rollout.RefusalCode(dec.Reason)).Inc()
}

// Reported implements server.RolloutObserver. A state that is not a
// report state (which validation rules out) counts as "other", so no
// input adds a series.
func (m *RolloutMetrics) Reported(rolloutID, state string) {
	if !slices.Contains(handsets.ReportStates, state) {
		state = "other"
	}
	m.count(m.reports, rolloutID, state)
}

// Event counts the automatic halts and holds among a rollout's saved
// events (rollout.RolloutEvaluator.OnEvent); an operator's pause or hold
// is not an auto-halt.
func (m *RolloutMetrics) Event(ev rollout.Event) {
	if ev.Actor != audit.SystemActor {
		return
	}
	switch ev.Action {
	case rollout.ActionHalt:
		m.count(m.autoHalts, ev.RolloutID, "rollout")
	case rollout.ActionHold:
		m.count(m.autoHalts, ev.RolloutID, "model")
	}
}

// count adds one to v's counter of rollout id and label, unless id may
// not stand in a label (textrule.ValidRolloutID). The id is recorded after
// the counter moved, and Collect forgets it before it drops the
// counters, so that no counter outlives its record.
func (m *RolloutMetrics) count(v *prometheus.CounterVec, id, label string) {
	if !textrule.ValidRolloutID(id) {
		return
	}
	v.WithLabelValues(id, label).Inc()
	if _, ok := m.counted.Load(id); !ok {
		m.counted.Store(id, struct{}{})
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

// Collect implements prometheus.Collector. The rollouts with series
// (exported) get gauges, and their auto-halt counters start at 0, so
// that an alert on their increase fires on the first halt; the counters
// of the others are dropped. Exported are, up to MaxRollouts in all:
// the rollouts not finished (draft, running, paused; the newest first
// should there be more), then those that ended (completed, or aborted
// in the last day), the latest first. A rollout whose id may not stand
// in a label (textrule.ValidRolloutID) never is. So the series stay
// bounded however many rollouts are made, aborted or completed.
func (m *RolloutMetrics) Collect(ch chan<- prometheus.Metric) {
	var rollouts []*rollout.Rollout
	if m.snapshot != nil {
		rollouts = m.snapshot()
	}
	keep := m.pick(rollouts, m.now())
	m.counted.Range(func(id, _ any) bool {
		if !keep[id.(string)] {
			m.counted.Delete(id)
			for _, v := range []*prometheus.CounterVec{m.offers, m.reports, m.autoHalts} {
				v.DeletePartialMatch(prometheus.Labels{"rollout": id.(string)})
			}
		}
		return true
	})
	for _, r := range rollouts {
		if !keep[r.ID] {
			continue
		}
		for _, st := range rollout.RolloutStates {
			ch <- prometheus.MustNewConstMetric(m.state, prometheus.GaugeValue, boolValue(r.State == st), r.ID, string(st))
		}
		ch <- prometheus.MustNewConstMetric(m.percent, prometheus.GaugeValue, r.Percent(), r.ID)
		ch <- prometheus.MustNewConstMetric(m.heldDesc, prometheus.GaugeValue, float64(len(r.Holds)), r.ID)
		ch <- prometheus.MustNewConstMetric(m.halted, prometheus.GaugeValue, boolValue(r.Halt != nil), r.ID)
		if r.State != rollout.RolloutAborted {
			m.autoHalts.WithLabelValues(r.ID, "rollout")
			m.autoHalts.WithLabelValues(r.ID, "model")
			m.counted.Store(r.ID, struct{}{})
		}
	}
	m.offers.Collect(ch)
	m.refusals.Collect(ch)
	m.reports.Collect(ch)
	m.autoHalts.Collect(ch)
}

// pick is the ids of the rollouts Collect exports.
func (m *RolloutMetrics) pick(rollouts []*rollout.Rollout, now time.Time) map[string]bool {
	limit := m.MaxRollouts
	if limit <= 0 {
		limit = DefaultMaxRolloutSeries
	}
	var open, ended []*rollout.Rollout
	for _, r := range rollouts {
		switch {
		case !textrule.ValidRolloutID(r.ID):
		case slices.Contains(rollout.OpenRolloutStates, r.State):
			open = append(open, r)
		case r.State == rollout.RolloutCompleted,
			r.State == rollout.RolloutAborted && now.Sub(r.EndedAt) <= rolloutSeriesAfterEnd:
			ended = append(ended, r)
		}
	}
	slices.SortStableFunc(open, func(a, b *rollout.Rollout) int { return b.CreatedAt.Compare(a.CreatedAt) })
	slices.SortStableFunc(ended, func(a, b *rollout.Rollout) int { return b.EndedAt.Compare(a.EndedAt) })
	keep := make(map[string]bool, limit)
	for _, r := range append(open, ended...) {
		if len(keep) == limit {
			break
		}
		keep[r.ID] = true
	}
	return keep
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
