package api

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// mountRollouts adds the rollout routes to the admin group r, each with
// the permission it needs.
func (s *Server) mountRollouts(r routes) {
	read, change, approve := needs(identity.PermRead), needs(identity.PermRolloutChange), needs(identity.PermRolloutApprove)
	r.add(http.MethodPost, "/rollouts", change, s.createRollout)
	r.add(http.MethodGet, "/rollouts", read, s.listRollouts)
	r.add(http.MethodGet, "/rollouts/:id", read, s.getRollout)
	r.add(http.MethodGet, "/rollouts/:id/events", read, s.rolloutEvents)
	for _, a := range []struct {
		name string
		do   rolloutAction
	}{
		{rollout.ActionStart, s.rollouts.Start},
		{rollout.ActionPause, narrowing(s.rollouts.Pause)},
		{rollout.ActionResume, s.rollouts.Resume},
		{rollout.ActionAbort, narrowing(s.rollouts.Abort)},
		{rollout.ActionComplete, narrowing(s.rollouts.Complete)},
	} {
		r.add(http.MethodPost, "/rollouts/:id/"+a.name, change, s.rolloutActionHandler(a.do))
	}
	r.add(http.MethodPost, "/rollouts/:id/advance", change, s.advanceRollout)
	r.add(http.MethodPost, "/rollouts/:id/holds", change, s.holdModel)
	r.add(http.MethodPost, "/rollouts/:id/holds/:model/release", change, s.releaseHold)
	r.add(http.MethodGet, "/rollouts/:id/approvals", read, s.listApprovals)
	r.add(http.MethodPost, "/rollouts/:id/approvals/:aid/approve", approve, s.approve)
	r.add(http.MethodPost, "/rollouts/:id/approvals/:aid/reject", approve, s.reject)
}

// FormatDuration writes d as every answer writes a duration: "6h",
// "1h30m", "45s" (rollout.FormatDuration).
func FormatDuration(d time.Duration) string { return rollout.FormatDuration(d) }

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func holdOf(h *rollout.Hold) *wire.RolloutHold {
	if h == nil {
		return nil
	}
	v := *h
	return &v
}

func rolloutOf(r *rollout.Rollout) *wire.Rollout {
	p := &r.Policy
	v := &wire.Rollout{ID: r.ID, State: string(r.State), Stage: r.Stage, Percent: r.Percent(), Stages: r.Stages,
		Release: wire.RolloutRelease{Target: r.Release.Target, PatchID: r.Release.PatchID, InstallsBuild: r.Release.InstallsBuild,
			Models: orEmpty(r.Release.Models), BuildMin: r.Release.BuildMin, BuildMax: r.Release.BuildMax},
		Selector: wire.RolloutSelector{Models: orEmpty(r.Selector.Models), Channels: orEmpty(r.Selector.Channels),
			Regions: orEmpty(r.Selector.Regions), BuildMin: r.Selector.BuildMin, BuildMax: r.Selector.BuildMax},
		Policy: wire.RolloutPolicy{MaxFailureRate: p.MaxFailureRate, MinResults: p.MinResults,
			FailureWindow: FormatDuration(p.FailureWindow), Soak: FormatDuration(p.Soak), Retries: p.Retries,
			Backoff: []string{}, MaxOffersPerMinute: p.MaxOffersPerMinute, Window: p.Window.String(),
			MaxSilenceRate: p.MaxSilenceRate, MinConfirmations: p.MinConfirmations,
			StartAt: optionalTime(p.StartAt), Deadline: optionalTime(p.Deadline)},
		Salt: r.Salt, Halt: holdOf(r.Halt), Holds: make([]wire.RolloutHold, len(r.Holds)),
		CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(), StartedAt: optionalTime(r.StartedAt),
		StageStartedAt: optionalTime(r.StageStartedAt), EndedAt: optionalTime(r.EndedAt),
		HealthSince: optionalTime(r.HealthSince), Version: r.Version}
	if p.SilenceAfter > 0 {
		v.Policy.SilenceAfter = FormatDuration(p.SilenceAfter)
	}
	if v.Stages == nil {
		v.Stages = []float64{}
	}
	for _, b := range p.Backoff {
		v.Policy.Backoff = append(v.Policy.Backoff, FormatDuration(b))
	}
	copy(v.Holds, r.Holds)
	if len(r.ModelHealthSince) > 0 {
		v.ModelHealthSince = maps.Clone(r.ModelHealthSince)
	}
	return v
}

func eventsOf(evs []rollout.Event) []wire.RolloutEvent {
	out := make([]wire.RolloutEvent, len(evs))
	for i, ev := range evs {
		out[i] = wire.RolloutEvent{RolloutID: ev.RolloutID, At: ev.At.UTC(), Actor: ev.Actor, Action: ev.Action,
			Reason: ev.Reason, FromState: string(ev.FromState), ToState: string(ev.ToState),
			FromPercent: ev.FromPercent, ToPercent: ev.ToPercent, Model: ev.Model, Hold: holdOf(ev.Hold), Detail: ev.Detail}
	}
	return out
}

// parseDuration reads a Go duration string of the create body.
func parseDuration(field, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &errs.FieldError{Field: field, Message: "want a duration such as 30m, 6h or 1h30m"}
	}
	return d, nil
}

// parseTime reads an RFC 3339 time of the create body; "" is none.
func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &errs.FieldError{Field: field, Message: "want an RFC 3339 time such as 2026-12-08T02:00:00Z"}
	}
	return t.UTC(), nil
}

// rolloutSpec turns the create body into the service's spec, filling the
// policy fields it omits from rollout.DefaultPolicy.
func rolloutSpec(req *wire.RolloutRequest) (rollout.RolloutSpec, error) {
	p := rollout.DefaultPolicy()
	if req.MaxFailureRate != nil {
		p.MaxFailureRate = *req.MaxFailureRate
	}
	if req.MinResults != nil {
		p.MinResults = *req.MinResults
	}
	if req.Retries != nil {
		p.Retries = *req.Retries
	}
	if req.MaxOffersPerMinute != nil {
		p.MaxOffersPerMinute = *req.MaxOffersPerMinute
	}
	if req.MaxSilenceRate != nil {
		p.MaxSilenceRate = *req.MaxSilenceRate
	}
	if req.MinConfirmations != nil {
		p.MinConfirmations = *req.MinConfirmations
	}
	var err error
	for _, d := range []struct {
		field string
		in    *string
		out   *time.Duration
	}{{"failure_window", req.FailureWindow, &p.FailureWindow}, {"soak", req.Soak, &p.Soak},
		{"silence_after", req.SilenceAfter, &p.SilenceAfter}} {
		if d.in != nil {
			if *d.out, err = parseDuration(d.field, *d.in); err != nil {
				return rollout.RolloutSpec{}, err
			}
		}
	}
	if req.Backoff != nil {
		p.Backoff = make([]time.Duration, len(req.Backoff))
		for i, b := range req.Backoff {
			if p.Backoff[i], err = parseDuration(fmt.Sprintf("backoff[%d]", i), b); err != nil {
				return rollout.RolloutSpec{}, err
			}
		}
	}
	if p.Window, err = rollout.ParseWindow(req.Window); err != nil {
		return rollout.RolloutSpec{}, err
	}
	if p.StartAt, err = parseTime("start_at", req.StartAt); err != nil {
		return rollout.RolloutSpec{}, err
	}
	if p.Deadline, err = parseTime("deadline", req.Deadline); err != nil {
		return rollout.RolloutSpec{}, err
	}
	return rollout.RolloutSpec{ID: req.ID, Release: req.Release, Stages: req.Stages, Policy: p, Salt: req.Salt,
		Draft: req.Draft, Reason: req.Reason,
		Selector: rollout.Selector{Models: req.Models, Channels: req.Channels, Regions: req.Regions,
			BuildMin: req.BuildMin, BuildMax: req.BuildMax}}, nil
}

func (s *Server) createRollout(c echo.Context) error {
	var req wire.RolloutRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	spec, err := rolloutSpec(&req)
	if err != nil {
		return err
	}
	r, pending, err := s.rollouts.Create(c.Request().Context(), spec, actor(c))
	if err != nil {
		return err
	}
	return widened(c, http.StatusCreated, r, pending)
}

func (s *Server) listRollouts(c echo.Context) error {
	var states []rollout.RolloutState
	for _, st := range c.QueryParams()["state"] {
		states = append(states, rollout.RolloutState(st))
	}
	rs, err := s.rollouts.List(c.Request().Context(), states...)
	if err != nil {
		return err
	}
	out := make([]*wire.Rollout, len(rs))
	for i, r := range rs {
		out[i] = rolloutOf(r)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) getRollout(c echo.Context) error {
	r, err := s.rollouts.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, rolloutOf(r))
}

// rolloutAction is a RolloutService action that takes only a reason,
// shaped as the widening ones: the rollout, and the approval it waits
// for if it does.
type rolloutAction func(ctx context.Context, id, actor, reason string) (*rollout.Rollout, *rollout.Approval, error)

// narrowing makes an action that never waits for an approval a
// rolloutAction.
func narrowing(do func(ctx context.Context, id, actor, reason string) (*rollout.Rollout, error)) rolloutAction {
	return func(ctx context.Context, id, actor, reason string) (*rollout.Rollout, *rollout.Approval, error) {
		r, err := do(ctx, id, actor, reason)
		return r, nil, err
	}
}

func (s *Server) rolloutActionHandler(do rolloutAction) echo.HandlerFunc {
	return func(c echo.Context) error {
		var req wire.RolloutActionRequest
		if err := decodeJSON(c, &req); err != nil {
			return err
		}
		r, pending, err := do(c.Request().Context(), c.Param("id"), actor(c), req.Reason)
		if err != nil {
			return err
		}
		return widened(c, http.StatusOK, r, pending)
	}
}

func (s *Server) advanceRollout(c echo.Context) error {
	var req wire.RolloutAdvanceRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	r, pending, err := s.rollouts.Advance(c.Request().Context(), c.Param("id"), actor(c), req.Reason, req.Percent)
	if err != nil {
		return err
	}
	return widened(c, http.StatusOK, r, pending)
}

func (s *Server) holdModel(c echo.Context) error {
	var req wire.RolloutHoldRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	r, err := s.rollouts.HoldModel(c.Request().Context(), c.Param("id"), actor(c), req.Reason, req.Model)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, rolloutOf(r))
}

func (s *Server) releaseHold(c echo.Context) error {
	var req wire.RolloutActionRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	r, err := s.rollouts.ReleaseHold(c.Request().Context(), c.Param("id"), actor(c), req.Reason, c.Param("model"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, rolloutOf(r))
}

// queryLimit reads the limit query parameter; absent is 0 (the
// service's default).
func queryLimit(c echo.Context) (int, error) {
	s := c.QueryParam("limit")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > audit.MaxAuditLimit {
		return 0, &errs.FieldError{Field: "limit", Message: fmt.Sprintf("want 1 to %d", audit.MaxAuditLimit)}
	}
	return n, nil
}

func queryTime(c echo.Context, name string) (time.Time, error) {
	s := c.QueryParam(name)
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &errs.FieldError{Field: name, Message: "want an RFC 3339 time such as 2026-11-23T10:00:00Z"}
	}
	return t, nil
}

func (s *Server) rolloutEvents(c echo.Context) error {
	limit, err := queryLimit(c)
	if err != nil {
		return err
	}
	evs, err := s.rollouts.Events(c.Request().Context(), c.Param("id"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, eventsOf(evs))
}
