// Package server is the top of the OTA server's domain: the Fleet that
// enrolls handsets, answers their check-ins and takes their reports
// (fleet.go), the eligibility that turns rollouts into offers
// (eligibility.go), and the reports built on the rollups (reports.go,
// rollout_report.go, exposure_report.go, timeline.go, rollup.go,
// exposure_samples.go). The HTTP layer (server/api), the dashboard (web)
// and the SQL adapter (server/sqlstore) build on it; it imports neither
// Echo nor gorm.
//
// The rest of the domain lives in packages below it, each of which
// imports only packages further down, never server:
//
//	server/errs      sentinel errors, FieldError, RateLimitError
//	server/textrule  what stored text may hold; scrubbing free text
//	server/audit     the hash-chained audit log and its checkpoints
//	server/identity  users, sessions, tokens, logins, roles, vouching
//	server/handsets  the Device, its check-ins, reports and records
//	server/rollout   staged rollouts: policy, decisions, four eyes
//
// The fleet and the reports stay here because they join the others: a
// check-in is decided on the handset's rollouts (server/rollout) and a
// report reads a rollout's stages and holds, so a package of their own
// would import rollout and handsets exactly as server does.
package server

import (
	"context"
)

// Pinger is anything whose reachability decides whether the server is
// ready to take traffic: the database and the blob store.
type Pinger interface {
	Ping(ctx context.Context) error
}
