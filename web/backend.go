package web

import (
	"context"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// Backend is what the pages read and change, owned here so that the
// pages depend on the questions they ask, not on the stores that answer
// them: internal/app implements it over the App's parts, and the tests
// over fakes. Every change carries the acting identity.Principal in ctx
// (identity.WithPrincipal), so that the audit log records the user.
type Backend interface {
	// ExposureReport is the fleet's exposure report (opts as the admin
	// API's /reports/exposure).
	ExposureReport(ctx context.Context, opts server.ExposureOptions) (*server.ExposureReport, error)
	// RolloutReport is the report of rollout id; ErrNotFound if unknown.
	RolloutReport(ctx context.Context, id string) (*server.RolloutReport, error)
	// Rollouts lists every rollout, oldest first.
	Rollouts(ctx context.Context) ([]*rollout.Rollout, error)
	// Rollout returns rollout id, or ErrNotFound.
	Rollout(ctx context.Context, id string) (*rollout.Rollout, error)
	// RolloutEvents returns the last limit events of rollout id, oldest
	// first.
	RolloutEvents(ctx context.Context, id string, limit int) ([]rollout.Event, error)
	// ChangeRollout applies an operator's action (one of RolloutActions)
	// to rollout id through rollout.RolloutService, as the principal in
	// ctx. Percent is advance's target (0: the next stage). A widening
	// that needs a second person changes nothing yet and returns the
	// pending approval beside the rollout (nil when it was done).
	ChangeRollout(ctx context.Context, id string, change RolloutChange) (*rollout.Rollout, *rollout.Approval, error)
	// CreateRollout creates rollout spec, and unless spec.Draft starts it,
	// through rollout.RolloutService as the principal in ctx. A start at
	// a percent that needs a second person returns the rollout, a draft,
	// with the pending approval (nil when it started).
	CreateRollout(ctx context.Context, spec rollout.RolloutSpec) (*rollout.Rollout, *rollout.Approval, error)
	// Approvals lists rollout id's four-eyes requests, newest first.
	Approvals(ctx context.Context, id string) ([]*rollout.Approval, error)
	// DecideApproval approves (approve true) or rejects approval aid of
	// rollout id as the principal in ctx, who must not be the requester.
	DecideApproval(ctx context.Context, id, aid string, approve bool, reason string) error
	// RepoStatus is the TUF repository at a glance: expiries, published
	// targets and the pending draft.
	RepoStatus(ctx context.Context) (*manifests.Status, error)
	// Drafts lists the latest limit drafts, newest first.
	Drafts(ctx context.Context, limit int) ([]*manifests.DraftView, error)
	// Device returns handset id with its install states and reports, or
	// ErrNotFound.
	Device(ctx context.Context, id string) (*DeviceView, error)
	// ListDevices returns the page of handsets q selects, in id order
	// (see handsets.DeviceQuery); an invalid q is a *errs.FieldError.
	ListDevices(ctx context.Context, q handsets.DeviceQuery) (*handsets.DevicePage, error)
}

// RolloutChange is an operator's action on a rollout.
type RolloutChange struct {
	// Action is one of RolloutActions, or one of ModelActions.
	Action  string
	Reason  string
	Percent float64
	// Model is the model a ModelAction holds or releases.
	Model string
}

// ModelActions are the per-model actions of the rollout page: hold a
// model (no new offers to it) and release its hold.
var ModelActions = []string{rollout.ActionHold, rollout.ActionReleaseHold}

// RolloutActions are the actions the rollout page offers.
var RolloutActions = []string{rollout.ActionStart, rollout.ActionPause, rollout.ActionResume, rollout.ActionAbort, rollout.ActionAdvance}

// DeviceView is a handset as the device page shows it. The server keeps
// nothing that identifies a person or a SIM, so neither does this.
type DeviceView struct {
	Device  *handsets.Device
	Patches []handsets.PatchState
	// Reports are the handset's install reports, oldest first.
	Reports []handsets.Report
}
