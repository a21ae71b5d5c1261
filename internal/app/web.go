package app

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/web"
)

// WebConfig configures the dashboard.
type WebConfig struct {
	// Disabled serves no pages (the API only).
	Disabled bool
	// Banner is a warning strip on every page (the demo's "development
	// keys" notice).
	Banner string
	// SecureCookie marks the session cookie Secure on plain HTTP too:
	// set it when TLS ends at a proxy in front of otad.
	SecureCookie bool
	// LiveEvery is how often open pages refresh themselves (default
	// web.DefaultLiveEvery).
	LiveEvery time.Duration
}

// deviceReportsShown bounds the report history of the device page.
const deviceReportsShown = 200

// newWeb builds the dashboard over the App's parts.
func (a *App) newWeb(cfg WebConfig, reports *server.Reports) (*web.Handler, error) {
	return web.New(web.Options{
		Backend: &WebBackend{Service: a.Rollouts, Reports: reports, Repo: a.Repo, Devices: a.cfg.DB.Devices(),
			DeviceList: a.cfg.DB.Devices()},
		Users:        a.Users,
		Sessions:     a.Sessions,
		Tokens:       a.Tokens,
		Audit:        a.Audit,
		AuditAnchor:  a.Checkpoints,
		Banner:       cfg.Banner,
		SecureCookie: cfg.SecureCookie,
		LiveEvery:    cfg.LiveEvery,
		Now:          a.cfg.Now,
		Logger:       a.log,
	})
}

// webPages is the dashboard as the API mounts it (api.Pages): the API
// knows its routes without importing package web.
type webPages struct{ *web.Handler }

// PageRoutes implements api.Pages.
func (p webPages) PageRoutes() []api.PageRoute {
	var rs []api.PageRoute
	for _, r := range p.Routes() {
		rs = append(rs, api.PageRoute{Method: r.Method, Pattern: r.Pattern, Perm: r.Perm, Public: r.Public})
	}
	return rs
}

// WebBackend is web.Backend over the App's services: the pages read and
// change what the admin API does, through the same domain services.
type WebBackend struct {
	Service *rollout.RolloutService
	Reports *server.Reports
	Repo    *manifests.Repository
	Devices *sqlstore.DeviceStore
	// DeviceList answers the device list.
	DeviceList handsets.DeviceLister
}

var _ web.Backend = (*WebBackend)(nil)

// ExposureReport implements web.Backend.
func (b *WebBackend) ExposureReport(ctx context.Context, opts server.ExposureOptions) (*server.ExposureReport, error) {
	return b.Reports.ExposureReport(ctx, opts, b.Reports.Clock())
}

// RolloutReport implements web.Backend.
func (b *WebBackend) RolloutReport(ctx context.Context, id string) (*server.RolloutReport, error) {
	return b.Reports.RolloutReport(ctx, id, b.Reports.Clock())
}

// Rollouts implements web.Backend.
func (b *WebBackend) Rollouts(ctx context.Context) ([]*rollout.Rollout, error) {
	return b.Service.List(ctx)
}

// Rollout implements web.Backend.
func (b *WebBackend) Rollout(ctx context.Context, id string) (*rollout.Rollout, error) {
	return b.Service.Get(ctx, id)
}

// RolloutEvents implements web.Backend.
func (b *WebBackend) RolloutEvents(ctx context.Context, id string, limit int) ([]rollout.Event, error) {
	return b.Service.Events(ctx, id, limit)
}

// ChangeRollout implements web.Backend: the actor is the session's user.
func (b *WebBackend) ChangeRollout(ctx context.Context, id string, c web.RolloutChange) (*rollout.Rollout, *rollout.Approval, error) {
	actor := identity.PrincipalFromContext(ctx).Actor()
	var (
		r   *rollout.Rollout
		err error
	)
	switch c.Action {
	case rollout.ActionStart:
		return b.Service.Start(ctx, id, actor, c.Reason)
	case rollout.ActionResume:
		return b.Service.Resume(ctx, id, actor, c.Reason)
	case rollout.ActionAdvance:
		return b.Service.Advance(ctx, id, actor, c.Reason, c.Percent)
	case rollout.ActionPause:
		r, err = b.Service.Pause(ctx, id, actor, c.Reason)
	case rollout.ActionAbort:
		r, err = b.Service.Abort(ctx, id, actor, c.Reason)
	case rollout.ActionHold:
		r, err = b.Service.HoldModel(ctx, id, actor, c.Reason, c.Model)
	case rollout.ActionReleaseHold:
		r, err = b.Service.ReleaseHold(ctx, id, actor, c.Reason, c.Model)
	default:
		err = fmt.Errorf("%w: unknown rollout action %q", errs.ErrInvalid, c.Action)
	}
	return r, nil, err
}

// CreateRollout implements web.Backend: the actor is the session's user.
func (b *WebBackend) CreateRollout(ctx context.Context, spec rollout.RolloutSpec) (*rollout.Rollout, *rollout.Approval, error) {
	return b.Service.Create(ctx, spec, identity.PrincipalFromContext(ctx).Actor())
}

// Approvals implements web.Backend.
func (b *WebBackend) Approvals(ctx context.Context, id string) ([]*rollout.Approval, error) {
	as, err := b.Service.ListApprovals(ctx, id)
	if err != nil {
		return nil, err
	}
	as = slices.Clone(as)
	slices.SortFunc(as, func(x, y *rollout.Approval) int {
		return cmp.Or(y.RequestedAt.Compare(x.RequestedAt), cmp.Compare(x.ID, y.ID))
	})
	return as, nil
}

// DecideApproval implements web.Backend.
func (b *WebBackend) DecideApproval(ctx context.Context, id, aid string, approve bool, reason string) error {
	actor := identity.PrincipalFromContext(ctx).Actor()
	var err error
	if approve {
		_, _, err = b.Service.Approve(ctx, id, aid, actor, reason)
	} else {
		_, err = b.Service.Reject(ctx, id, aid, actor, reason)
	}
	return err
}

// RepoStatus implements web.Backend.
func (b *WebBackend) RepoStatus(ctx context.Context) (*manifests.Status, error) {
	return b.Repo.Status(ctx)
}

// Drafts implements web.Backend.
func (b *WebBackend) Drafts(ctx context.Context, limit int) ([]*manifests.DraftView, error) {
	return b.Repo.ListDrafts(ctx, limit)
}

// Device implements web.Backend: the handset, its install states and
// its latest reports.
func (b *WebBackend) Device(ctx context.Context, id string) (*web.DeviceView, error) {
	d, err := b.Devices.DeviceByID(ctx, id)
	if err != nil {
		return nil, err
	}
	states, err := b.Devices.PatchStates(ctx, id)
	if err != nil {
		return nil, err
	}
	reports, err := b.Devices.Reports(ctx, id)
	if err != nil {
		return nil, err
	}
	if n := len(reports); n > deviceReportsShown {
		reports = reports[n-deviceReportsShown:]
	}
	return &web.DeviceView{Device: d, Patches: states, Reports: reports}, nil
}

// ListDevices implements web.Backend.
func (b *WebBackend) ListDevices(ctx context.Context, q handsets.DeviceQuery) (*handsets.DevicePage, error) {
	return b.DeviceList.ListDevices(ctx, q)
}
