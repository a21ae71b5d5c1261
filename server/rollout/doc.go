// Package rollout holds staged rollouts: the Rollout and its states,
// stages, holds and policy (rollout.go), the decision of what one handset
// is offered (Decide, decide.go), health and advance (health.go), the
// policy evaluator that runs them (evaluator.go), the service that
// operators drive (service.go), four-eyes approvals (approvals.go,
// four_eyes.go), exposure and cohorts, maintenance windows and the store
// interface. It imports handsets, identity and audit, never server: the
// fleet and the reports in server are built on it.
package rollout
