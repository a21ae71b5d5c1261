package app

import (
	"context"
	"crypto/rand"
	"log/slog"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/rollout"
)

// PoliciesLease is the lease (sqlstore.DB.Lease) of the replica that
// runs the jobs one replica runs for all: the rollout policies
// (auto-halt, auto-advance, offer budget pruning), report retention and
// the audit log's checkpoints.
const PoliciesLease = "rollout-policies"

// policiesTTL is how long the lease lasts past a pass, in refresh
// intervals: a leader that misses two passes (a slow database, a
// pause) keeps it, one that is gone for three loses it. A pass that
// outlasts the lease may overlap with the next leader's; that is
// harmless (rollout saves are optimistically locked, pruning is
// idempotent), only wasted work.
const policiesTTL = 3

// policyJobs is the state of the jobs under the lease; only the
// background loop's goroutine touches it.
type policyJobs struct {
	lease     server.Lease
	holder    string
	leading   bool
	lastPrune time.Time
	// lastSessionPrune is when expired sessions were last deleted.
	lastSessionPrune time.Time
	// lastCheckpoint is when the audit log was last checkpointed.
	lastCheckpoint time.Time
}

// buildPolicies makes the rollout evaluator, the rollout metrics and
// the lease of a.
func (a *App) buildPolicies() {
	a.policies.lease = a.cfg.DB.Lease(PoliciesLease)
	a.policies.holder = a.cfg.Holder
	if a.policies.holder == "" {
		a.policies.holder = "otad-" + rand.Text()[:16]
	}
	a.RolloutMetrics = api.NewRolloutMetrics(a.rolloutSnapshot, a.cfg.Now)
	// The rollouts not finished (at most MaxOpenRollouts) and as many
	// of the latest ended.
	a.RolloutMetrics.MaxRollouts = 2 * a.cfg.MaxOpenRollouts
	a.Evaluator = &rollout.RolloutEvaluator{Store: a.cfg.DB.Rollouts(), Now: a.cfg.Now,
		OnEvent: a.RolloutMetrics.Event, Logger: a.log, Approvals: a.cfg.DB.Approvals()}
}

// now is the time on the App's clock (New has set cfg.Now).
func (a *App) now() time.Time { return a.cfg.Now() }

// rolloutSnapshot is what the rollout gauges show: every rollout, read
// at each scrape (the metrics keep those aborted over a day ago out).
func (a *App) rolloutSnapshot() []*rollout.Rollout {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rs, err := a.cfg.DB.Rollouts().Rollouts(ctx)
	if err != nil {
		a.log.Error("reading rollouts for metrics", slog.Any("error", err))
		return nil
	}
	return rs
}

// runPolicies takes or renews the policies lease and, only while this
// replica holds it, runs the rollout policies, (hourly) report
// retention and (every AuditCheckpointInterval) the audit checkpoints.
// The lease is read on the App's clock: replicas' clocks that disagree
// by more than a pass or two may both run a pass, which is harmless.
func (a *App) runPolicies(ctx context.Context) {
	p := &a.policies
	held, err := p.lease.Acquire(ctx, p.holder, policiesTTL*a.cfg.RefreshInterval, a.now())
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		a.log.Error("taking the rollout policies lease", slog.Any("error", err))
		held = false
	}
	if held != p.leading {
		p.leading = held
		msg := "this replica runs the rollout policies and report retention now"
		if !held {
			msg = "another replica runs the rollout policies and report retention now"
		}
		a.log.Info(msg, slog.String("lease", PoliciesLease), slog.String("holder", p.holder))
		// The replica before may have checkpointed since this one last
		// did: read where to go on from the store.
		a.Checkpoints.Reset()
	}
	if !held {
		return
	}
	if err := a.Evaluator.Evaluate(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("evaluating rollout policies", slog.Any("error", err))
	}
	if time.Since(p.lastPrune) > time.Hour && a.pruneReports(ctx) {
		p.lastPrune = time.Now()
	}
	if time.Since(p.lastSessionPrune) > time.Hour && a.pruneSessions(ctx) {
		p.lastSessionPrune = time.Now()
	}
	if time.Since(p.lastCheckpoint) >= a.cfg.AuditCheckpointInterval {
		// A failure is retried at the next interval, not at every pass:
		// a log that no longer follows its checkpoints fails each time,
		// and once a minute is loud enough.
		a.checkpointAudit(ctx)
		p.lastCheckpoint = time.Now()
	}
	if a.cfg.AfterPolicies != nil {
		a.cfg.AfterPolicies()
	}
}

// checkpointAudit signs and stores checkpoints of the audit entries
// appended since the last one (audit.AuditCheckpoints.Checkpoint).
func (a *App) checkpointAudit(ctx context.Context) {
	n, err := a.Checkpoints.Checkpoint(ctx)
	if err != nil && ctx.Err() == nil {
		a.log.Error("checkpointing the audit log", slog.Any("error", err))
	}
	if n > 0 {
		a.log.Debug("checkpointed the audit log", slog.Int("checkpoints", n))
	}
}

// releasePolicies gives the lease up when the jobs stop, so that another
// replica takes over at its next pass rather than after the lease
// expires.
func (a *App) releasePolicies() {
	p := &a.policies
	if !p.leading {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.lease.Release(ctx, p.holder); err != nil {
		a.log.Warn("releasing the rollout policies lease; another replica takes over once it expires", slog.Any("error", err))
	}
	p.leading = false
}
