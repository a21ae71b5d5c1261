package api

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server"
)

// mountRollouts adds the rollout routes to the admin group; what each
// needs is in routeTable.
func (s *Server) mountRollouts(g *echo.Group) {
	add := func(method, path string, h echo.HandlerFunc) { s.route(g, AdminPrefix, method, path, h) }
	add(http.MethodPost, "/rollouts", s.createRollout)
	add(http.MethodGet, "/rollouts", s.listRollouts)
	add(http.MethodGet, "/rollouts/:id", s.getRollout)
	add(http.MethodGet, "/rollouts/:id/events", s.rolloutEvents)
	for _, a := range []struct {
		name string
		do   rolloutAction
	}{
		{server.ActionStart, s.rollouts.Start},
		{server.ActionPause, narrowing(s.rollouts.Pause)},
		{server.ActionResume, s.rollouts.Resume},
		{server.ActionAbort, narrowing(s.rollouts.Abort)},
		{server.ActionComplete, narrowing(s.rollouts.Complete)},
	} {
		add(http.MethodPost, "/rollouts/:id/"+a.name, s.rolloutActionHandler(a.do))
	}
	add(http.MethodPost, "/rollouts/:id/advance", s.advanceRollout)
	add(http.MethodPost, "/rollouts/:id/holds", s.holdModel)
	add(http.MethodPost, "/rollouts/:id/holds/:model/release", s.releaseHold)
	add(http.MethodGet, "/rollouts/:id/approvals", s.listApprovals)
	add(http.MethodPost, "/rollouts/:id/approvals/:aid/approve", s.approve)
	add(http.MethodPost, "/rollouts/:id/approvals/:aid/reject", s.reject)
}

// RolloutRequest is the body of POST /admin/rollouts. Omitted policy
// fields take server.DefaultPolicy's values; durations are Go duration
// strings ("6h", "90m").
type RolloutRequest struct {
	ID       string    `json:"id,omitempty"`
	Release  string    `json:"release"`
	Stages   []float64 `json:"stages"`
	Models   []string  `json:"models,omitempty"`
	Channels []string  `json:"channels,omitempty"`
	Regions  []string  `json:"regions,omitempty"`
	BuildMin string    `json:"build_min,omitempty"`
	BuildMax string    `json:"build_max,omitempty"`
	// MaxFailureRate is a fraction: 0.05 is 5%.
	MaxFailureRate     *float64 `json:"max_failure_rate,omitempty"`
	MinResults         *int64   `json:"min_results,omitempty"`
	FailureWindow      *string  `json:"failure_window,omitempty"`
	Soak               *string  `json:"soak,omitempty"`
	Retries            *int     `json:"retries,omitempty"`
	Backoff            []string `json:"backoff,omitempty"`
	MaxOffersPerMinute *int     `json:"max_offers_per_minute,omitempty"`
	// Window is "01:00-05:00" in the handsets' local time; empty is any
	// hour.
	Window string `json:"window,omitempty"`
	Salt   string `json:"salt,omitempty"`
	// Draft keeps the rollout a draft; otherwise it starts at once.
	Draft  bool   `json:"draft,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RolloutActionRequest is the body of the rollout actions but advance,
// and of a hold's release.
type RolloutActionRequest struct {
	Reason string `json:"reason"`
}

// RolloutAdvanceRequest is the body of POST /admin/rollouts/{id}/advance:
// Percent 0 (or absent) is the next stage.
type RolloutAdvanceRequest struct {
	Reason  string  `json:"reason"`
	Percent float64 `json:"percent,omitempty"`
}

// RolloutHoldRequest is the body of POST /admin/rollouts/{id}/holds.
type RolloutHoldRequest struct {
	Model  string `json:"model"`
	Reason string `json:"reason"`
}

// Rollout is the JSON of a rollout.
type Rollout struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Stage is the index of the current stage in Stages; Percent is its
	// percent.
	Stage    int             `json:"stage"`
	Percent  float64         `json:"percent"`
	Stages   []float64       `json:"stages"`
	Release  RolloutRelease  `json:"release"`
	Selector RolloutSelector `json:"selector"`
	Policy   RolloutPolicy   `json:"policy"`
	Salt     string          `json:"salt"`
	// Halt is why the rollout stopped on its own; Holds the held models.
	Halt      *RolloutHold  `json:"halt,omitempty"`
	Holds     []RolloutHold `json:"holds"`
	CreatedBy string        `json:"created_by"`
	CreatedAt time.Time     `json:"created_at"`
	StartedAt *time.Time    `json:"started_at,omitempty"`
	// StageStartedAt is when the current stage (and its soak) began.
	StageStartedAt *time.Time `json:"stage_started_at,omitempty"`
	EndedAt        *time.Time `json:"ended_at,omitempty"`
	// HealthSince is the last resume: results before it do not count.
	HealthSince      *time.Time           `json:"health_since,omitempty"`
	ModelHealthSince map[string]time.Time `json:"model_health_since,omitempty"`
	Version          int64                `json:"version"`
}

// RolloutRelease is the release a rollout offers, as its signed targets
// metadata states it.
type RolloutRelease struct {
	Target        string   `json:"target"`
	PatchID       string   `json:"patch_id"`
	InstallsBuild string   `json:"installs_build"`
	Models        []string `json:"models"`
	BuildMin      string   `json:"build_min,omitempty"`
	BuildMax      string   `json:"build_max,omitempty"`
}

// RolloutSelector says which handsets a rollout is for; an empty list
// is every handset.
type RolloutSelector struct {
	Models   []string `json:"models"`
	Channels []string `json:"channels"`
	Regions  []string `json:"regions"`
	BuildMin string   `json:"build_min,omitempty"`
	BuildMax string   `json:"build_max,omitempty"`
}

// RolloutPolicy is a rollout's policy; durations are Go duration strings.
type RolloutPolicy struct {
	MaxFailureRate     float64  `json:"max_failure_rate"`
	MinResults         int64    `json:"min_results"`
	FailureWindow      string   `json:"failure_window"`
	Soak               string   `json:"soak"`
	Retries            int      `json:"retries"`
	Backoff            []string `json:"backoff"`
	MaxOffersPerMinute int      `json:"max_offers_per_minute"`
	Window             string   `json:"window"`
}

// RolloutHold is a halt (no model) or a held model, with the numbers
// that set it (zero for an operator's). It is server.Hold, whose
// MarshalJSON is the one shape a hold has in every answer: the rollout,
// its events and its report.
type RolloutHold = server.Hold

// RolloutEvent is one entry of the audit log.
type RolloutEvent struct {
	RolloutID   string       `json:"rollout_id"`
	At          time.Time    `json:"at"`
	Actor       string       `json:"actor"`
	Action      string       `json:"action"`
	Reason      string       `json:"reason"`
	FromState   string       `json:"from_state,omitempty"`
	ToState     string       `json:"to_state"`
	FromPercent float64      `json:"from_percent"`
	ToPercent   float64      `json:"to_percent"`
	Model       string       `json:"model,omitempty"`
	Hold        *RolloutHold `json:"hold,omitempty"`
	Detail      string       `json:"detail,omitempty"`
}

// FormatDuration writes d as every answer writes a duration: "6h",
// "1h30m", "45s" (server.FormatDuration).
func FormatDuration(d time.Duration) string { return server.FormatDuration(d) }

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

func holdOf(h *server.Hold) *RolloutHold {
	if h == nil {
		return nil
	}
	v := *h
	return &v
}

func rolloutOf(r *server.Rollout) *Rollout {
	p := &r.Policy
	v := &Rollout{ID: r.ID, State: string(r.State), Stage: r.Stage, Percent: r.Percent(), Stages: r.Stages,
		Release: RolloutRelease{Target: r.Release.Target, PatchID: r.Release.PatchID, InstallsBuild: r.Release.InstallsBuild,
			Models: orEmpty(r.Release.Models), BuildMin: r.Release.BuildMin, BuildMax: r.Release.BuildMax},
		Selector: RolloutSelector{Models: orEmpty(r.Selector.Models), Channels: orEmpty(r.Selector.Channels),
			Regions: orEmpty(r.Selector.Regions), BuildMin: r.Selector.BuildMin, BuildMax: r.Selector.BuildMax},
		Policy: RolloutPolicy{MaxFailureRate: p.MaxFailureRate, MinResults: p.MinResults,
			FailureWindow: FormatDuration(p.FailureWindow), Soak: FormatDuration(p.Soak), Retries: p.Retries,
			Backoff: []string{}, MaxOffersPerMinute: p.MaxOffersPerMinute, Window: p.Window.String()},
		Salt: r.Salt, Halt: holdOf(r.Halt), Holds: make([]RolloutHold, len(r.Holds)),
		CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(), StartedAt: optionalTime(r.StartedAt),
		StageStartedAt: optionalTime(r.StageStartedAt), EndedAt: optionalTime(r.EndedAt),
		HealthSince: optionalTime(r.HealthSince), Version: r.Version}
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

func eventsOf(evs []server.Event) []RolloutEvent {
	out := make([]RolloutEvent, len(evs))
	for i, ev := range evs {
		out[i] = RolloutEvent{RolloutID: ev.RolloutID, At: ev.At.UTC(), Actor: ev.Actor, Action: ev.Action,
			Reason: ev.Reason, FromState: string(ev.FromState), ToState: string(ev.ToState),
			FromPercent: ev.FromPercent, ToPercent: ev.ToPercent, Model: ev.Model, Hold: holdOf(ev.Hold), Detail: ev.Detail}
	}
	return out
}

// parseDuration reads a Go duration string of the create body.
func parseDuration(field, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &server.FieldError{Field: field, Message: "want a duration such as 30m, 6h or 1h30m"}
	}
	return d, nil
}

// spec turns the create body into the service's spec, filling the
// policy fields it omits from server.DefaultPolicy.
func (req *RolloutRequest) spec() (server.RolloutSpec, error) {
	p := server.DefaultPolicy()
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
	var err error
	for _, d := range []struct {
		field string
		in    *string
		out   *time.Duration
	}{{"failure_window", req.FailureWindow, &p.FailureWindow}, {"soak", req.Soak, &p.Soak}} {
		if d.in != nil {
			if *d.out, err = parseDuration(d.field, *d.in); err != nil {
				return server.RolloutSpec{}, err
			}
		}
	}
	if req.Backoff != nil {
		p.Backoff = make([]time.Duration, len(req.Backoff))
		for i, b := range req.Backoff {
			if p.Backoff[i], err = parseDuration(fmt.Sprintf("backoff[%d]", i), b); err != nil {
				return server.RolloutSpec{}, err
			}
		}
	}
	if p.Window, err = server.ParseWindow(req.Window); err != nil {
		return server.RolloutSpec{}, err
	}
	return server.RolloutSpec{ID: req.ID, Release: req.Release, Stages: req.Stages, Policy: p, Salt: req.Salt,
		Draft: req.Draft, Reason: req.Reason,
		Selector: server.Selector{Models: req.Models, Channels: req.Channels, Regions: req.Regions,
			BuildMin: req.BuildMin, BuildMax: req.BuildMax}}, nil
}

func (s *Server) createRollout(c echo.Context) error {
	var req RolloutRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	spec, err := req.spec()
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
	var states []server.RolloutState
	for _, st := range c.QueryParams()["state"] {
		states = append(states, server.RolloutState(st))
	}
	rs, err := s.rollouts.List(c.Request().Context(), states...)
	if err != nil {
		return err
	}
	out := make([]*Rollout, len(rs))
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
type rolloutAction func(ctx context.Context, id, actor, reason string) (*server.Rollout, *server.Approval, error)

// narrowing makes an action that never waits for an approval a
// rolloutAction.
func narrowing(do func(ctx context.Context, id, actor, reason string) (*server.Rollout, error)) rolloutAction {
	return func(ctx context.Context, id, actor, reason string) (*server.Rollout, *server.Approval, error) {
		r, err := do(ctx, id, actor, reason)
		return r, nil, err
	}
}

func (s *Server) rolloutActionHandler(do rolloutAction) echo.HandlerFunc {
	return func(c echo.Context) error {
		var req RolloutActionRequest
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
	var req RolloutAdvanceRequest
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
	var req RolloutHoldRequest
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
	var req RolloutActionRequest
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
	if err != nil || n < 1 || n > server.MaxAuditLimit {
		return 0, &server.FieldError{Field: "limit", Message: fmt.Sprintf("want 1 to %d", server.MaxAuditLimit)}
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
		return time.Time{}, &server.FieldError{Field: name, Message: "want an RFC 3339 time such as 2026-11-23T10:00:00Z"}
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
