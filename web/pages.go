package web

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// Limits of the lists the pages show.
const (
	// unfinishedFor is how long after it completed a rollout without a
	// held model is checked for handsets left behind on the overview; one
	// with a held model is checked for as long as it offers.
	unfinishedFor = 14 * 24 * time.Hour
	recentEvents  = 50
	draftsShown   = 20
	auditShown    = 200
)

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request, p *page) error {
	p.Title = "Log in"
	p.Data = loginData{Next: localPath(r.URL.Query().Get("next"))}
	h.render(w, r, http.StatusOK, "login", p)
	return nil
}

type loginData struct {
	Next, Name string
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request, p *page) error {
	name := strings.TrimSpace(r.PostFormValue("name"))
	next := localPath(r.PostFormValue("next"))
	p.Title, p.Data = "Log in", loginData{Next: next}
	if len(name) <= identity.MaxLoginNameBytes {
		p.Data = loginData{Next: next, Name: name}
	}
	device := ""
	if c, err := r.Cookie(DeviceCookieName); err == nil {
		device = c.Value
	}
	u, err := h.opts.Users.Login(r.Context(), name, r.PostFormValue("password"), device)
	var le *identity.LoginError
	if errors.As(err, &le) {
		for _, e := range le.Audit {
			// A refused login is not an action that was done: a failed
			// append is logged, and the refusal answered as ever.
			if err := identity.RecordAction(r.Context(), h.opts.Audit, e, e.Actor, "", h.now()); err != nil {
				h.log.ErrorContext(r.Context(), "audit of a refused login", slog.Any("error", err))
			}
		}
	}
	var rl *errs.RateLimitError
	switch {
	case errors.As(err, &rl):
		p.Error = fmt.Sprintf("Too many attempts, try again in %d minutes.", int(math.Ceil(rl.RetryAfter.Minutes())))
		h.render(w, r, http.StatusTooManyRequests, "login", p)
		return nil
	case errors.Is(err, errs.ErrUnauthorized):
		p.Error = strings.TrimPrefix(err.Error(), errs.ErrUnauthorized.Error()+": ")
		h.render(w, r, http.StatusUnauthorized, "login", p)
		return nil
	case err != nil:
		return err
	}
	secret, _, err := h.opts.Sessions.Start(r.Context(), u)
	if errors.Is(err, errs.ErrUnauthorized) {
		p.Error = "This account cannot log in to the dashboard."
		h.render(w, r, http.StatusUnauthorized, "login", p)
		return nil
	}
	if err != nil {
		return err
	}
	if err := h.record(r.Context(), u.Name, identity.SessionEntry(u, true)); err != nil {
		// A login the log does not show does not happen.
		if endErr := h.opts.Sessions.End(r.Context(), secret); endErr != nil {
			return errors.Join(err, endErr)
		}
		return err
	}
	http.SetCookie(w, h.cookie(r, secret, false))
	if v := h.opts.Users.IssueDevice(u); v != "" {
		http.SetCookie(w, h.deviceCookie(r, v))
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
	return nil
}

// cookie is the session cookie: a session cookie (no Expires; the
// server expires sessions), HttpOnly, SameSite=Strict, Secure over TLS.
func (h *Handler) cookie(r *http.Request, value string, clear bool) *http.Cookie {
	c := &http.Cookie{Name: CookieName, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || h.opts.SecureCookie}
	if clear {
		c.Value, c.MaxAge = "", -1
	}
	return c
}

// DeviceCookieName is the device cookie (identity.DeviceCookies): it tells
// the login that this browser logged in to the account before, so that
// the account's lockout does not keep it out.
const DeviceCookieName = "otad_device"

// deviceCookie is the device cookie: sent to the login form only,
// HttpOnly, SameSite=Strict, Secure as the session cookie is, and kept
// for as long as the server accepts it.
func (h *Handler) deviceCookie(r *http.Request, value string) *http.Cookie {
	return &http.Cookie{Name: DeviceCookieName, Value: value, Path: "/login", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil || h.opts.SecureCookie, MaxAge: int(h.opts.Users.Devices.Age() / time.Second)}
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, p *page) error {
	if c, err := r.Cookie(CookieName); err == nil {
		if err := h.opts.Sessions.End(r.Context(), c.Value); err != nil {
			return err
		}
	}
	http.SetCookie(w, h.cookie(r, "", true))
	if err := h.record(r.Context(), p.User.Name, identity.SessionEntry(p.User, false)); err != nil {
		return err // the session is ended all the same
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
	return nil
}

// overviewData is the overview page. It answers "what needs me now?"
// first (Attention), then how far the patch has reached.
type overviewData struct {
	Exposure   *server.ExposureReport
	Chart      any
	ChartTitle string
	Attention  attention
	// Rollouts are those in progress: drafts, running, paused, and
	// completed ones that left handsets behind (Unfinished).
	Rollouts []rolloutRow
	Status   *manifests.Status
	Pending  []*manifests.DraftView
}

// attention is what waits for a person: four-eyes requests, halted
// rollouts, held models (with the handsets the hold leaves unpatched),
// drafts waiting for signatures and metadata close to expiry.
type attention struct {
	Approvals []approvalRow
	Halted    []rolloutRow
	Held      []heldRow
	Drafts    []*manifests.DraftView
	Expiring  []manifests.RoleStatus
}

// Empty reports whether nothing waits for anyone.
func (a attention) Empty() bool {
	return len(a.Approvals)+len(a.Halted)+len(a.Held)+len(a.Drafts)+len(a.Expiring) == 0
}

// approvalRow is a pending four-eyes request with its rollout.
type approvalRow struct {
	A *rollout.Approval
	R *rollout.Rollout
}

// heldRow is a held model of a rollout with its numbers now.
type heldRow struct {
	R     *rollout.Rollout
	Hold  rollout.Hold
	Model server.ModelCohort
}

// rolloutRow is a rollout with its report, for lists.
type rolloutRow struct {
	R      *rollout.Rollout
	Report *server.RolloutReport
}

// Unfinished reports whether a completed rollout left handsets behind:
// a model is held, or fewer handsets installed than its last stage's
// target. A completed rollout goes on offering, so it may still finish.
func (row rolloutRow) Unfinished() bool {
	if row.R.State != rollout.RolloutCompleted || row.Report == nil {
		return false
	}
	return len(row.Report.Holds) > 0 || row.Report.Installed < row.Report.Target
}

// HeldEligible is how many handsets of the held models are still to
// update.
func (row rolloutRow) HeldEligible() int64 {
	var n int64
	for _, m := range row.Report.ByModel {
		if m.Held {
			n += m.Eligible
		}
	}
	return n
}

// HeldModels names the held models.
func (row rolloutRow) HeldModels() []string {
	var ms []string
	for _, h := range row.Report.Holds {
		ms = append(ms, h.Model)
	}
	return ms
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, p *page) error {
	ctx := r.Context()
	exp, err := h.opts.Backend.ExposureReport(ctx, server.ExposureOptions{})
	if err != nil {
		return err
	}
	rs, err := h.opts.Backend.Rollouts(ctx)
	if err != nil {
		return err
	}
	d := &overviewData{Exposure: exp, Chart: BurnDownChart(exp.Daily, exp.Projection, exp.Samples),
		ChartTitle: BurnDownTitle(exp.Daily, exp.Samples)}
	for _, ro := range rs {
		if ro.State == rollout.RolloutAborted {
			continue
		}
		aps, err := h.opts.Backend.Approvals(ctx, ro.ID)
		if err != nil {
			return err
		}
		for _, a := range aps {
			if a.Pending() {
				d.Attention.Approvals = append(d.Attention.Approvals, approvalRow{A: a, R: ro})
			}
		}
		if ro.State == rollout.RolloutDraft {
			d.Rollouts = append(d.Rollouts, rolloutRow{R: ro})
			continue
		}
		if ro.State == rollout.RolloutCompleted && len(ro.Holds) == 0 && ro.EndedAt.Before(exp.GeneratedAt.Add(-unfinishedFor)) {
			continue // long done: the rollouts page lists it, and a report each would slow this page
		}
		rep, err := h.opts.Backend.RolloutReport(ctx, ro.ID)
		if err != nil {
			return err
		}
		row := rolloutRow{R: ro, Report: rep}
		if ro.Halt != nil {
			d.Attention.Halted = append(d.Attention.Halted, row)
		}
		for _, hold := range rep.Holds {
			hr := heldRow{R: ro, Hold: hold}
			for _, m := range rep.ByModel {
				if m.Model == hold.Model {
					hr.Model = m
				}
			}
			d.Attention.Held = append(d.Attention.Held, hr)
		}
		if ro.State != rollout.RolloutCompleted || row.Unfinished() {
			d.Rollouts = append(d.Rollouts, row)
		}
	}
	slices.SortFunc(d.Attention.Approvals, func(a, b approvalRow) int { return a.A.RequestedAt.Compare(b.A.RequestedAt) })
	if d.Status, err = h.opts.Backend.RepoStatus(ctx); err != nil {
		return err
	}
	for _, role := range d.Status.Roles {
		if role.Warning != "" {
			d.Attention.Expiring = append(d.Attention.Expiring, role)
		}
	}
	drafts, err := h.opts.Backend.Drafts(ctx, draftsShown)
	if err != nil {
		return err
	}
	for _, dv := range drafts {
		if dv.State == manifests.DraftPending {
			d.Pending = append(d.Pending, dv)
		}
	}
	d.Attention.Drafts = d.Pending
	p.Title, p.Data, p.Live = "Overview", d, liveURL(r)
	h.render(w, r, http.StatusOK, "overview", p)
	return nil
}

// rolloutListRow is a rollout on the rollouts page, with its waiting
// four-eyes requests.
type rolloutListRow struct {
	*rollout.Rollout
	Waiting []*rollout.Approval
}

func (h *Handler) rolloutsPage(w http.ResponseWriter, r *http.Request, p *page) error {
	rs, err := h.opts.Backend.Rollouts(r.Context())
	if err != nil {
		return err
	}
	slices.Reverse(rs) // newest first
	rows := make([]rolloutListRow, 0, len(rs))
	for _, ro := range rs {
		row := rolloutListRow{Rollout: ro}
		if ro.State != rollout.RolloutAborted {
			aps, err := h.opts.Backend.Approvals(r.Context(), ro.ID)
			if err != nil {
				return err
			}
			for _, a := range aps {
				if a.Pending() {
					row.Waiting = append(row.Waiting, a)
				}
			}
		}
		rows = append(rows, row)
	}
	p.Title, p.Data, p.Live = "Rollouts", rows, liveURL(r)
	h.render(w, r, http.StatusOK, "rollouts", p)
	return nil
}

// rolloutData is the rollout page.
type rolloutData struct {
	rolloutRow
	Chart any
	// States is the chart of handset states over time.
	States any
	// ChartTitle and StatesTitle say what a bar is ("per 2 seconds").
	ChartTitle, StatesTitle string
	Events                  []rollout.Event
	Approvals               []*rollout.Approval
	// Waiting are the four-eyes requests still waiting, oldest first.
	Waiting []*rollout.Approval
	// Actions are the actions the rollout's state allows.
	Actions []string
	Next    float64
	// FailedReports is the sum of the failure codes' counts: failed
	// reports, of which a handset that failed twice sent two.
	FailedReports int64
	// Now says whether the scheduled start and the deadline are ahead.
	Now time.Time
}

func (h *Handler) rolloutData(r *http.Request, id string) (*rolloutData, error) {
	ctx := r.Context()
	ro, err := h.opts.Backend.Rollout(ctx, id)
	if err != nil {
		return nil, err
	}
	rep, err := h.opts.Backend.RolloutReport(ctx, id)
	if err != nil {
		return nil, err
	}
	evs, err := h.opts.Backend.RolloutEvents(ctx, id, recentEvents)
	if err != nil {
		return nil, err
	}
	slices.Reverse(evs) // newest first
	aps, err := h.opts.Backend.Approvals(ctx, id)
	if err != nil {
		return nil, err
	}
	d := &rolloutData{rolloutRow: rolloutRow{R: ro, Report: rep}, Chart: ResultsChart(rep.Timeline),
		States: StatesChart(rep.Timeline), ChartTitle: ResultsTitle(rep.Timeline), StatesTitle: StatesTitle(rep.Timeline), Events: evs, Approvals: aps,
		Now: h.now()}
	for _, a := range aps {
		if a.Pending() {
			d.Waiting = append(d.Waiting, a)
		}
	}
	slices.Reverse(d.Waiting) // oldest first
	for _, fc := range rep.FailureCodes {
		d.FailedReports += fc.Count
	}
	switch ro.State {
	case rollout.RolloutDraft:
		d.Actions = []string{rollout.ActionStart, rollout.ActionAbort}
	case rollout.RolloutRunning:
		d.Actions = []string{rollout.ActionPause, rollout.ActionAbort}
		if !ro.LastStage() {
			d.Actions = append(d.Actions, rollout.ActionAdvance)
			d.Next = ro.Stages[ro.Stage+1]
		}
	case rollout.RolloutPaused:
		d.Actions = []string{rollout.ActionResume, rollout.ActionAbort}
	case rollout.RolloutCompleted:
		// It goes on offering at its last stage: it can be widened past
		// it, or ended; pausing it is what abort is for.
		d.Actions = []string{rollout.ActionAbort}
		if ro.Percent() < 100 {
			d.Actions = append(d.Actions, rollout.ActionAdvance)
		}
	}
	return d, nil
}

func (h *Handler) rolloutPage(w http.ResponseWriter, r *http.Request, p *page) error {
	id := r.PathValue("id")
	d, err := h.rolloutData(r, id)
	if err != nil {
		return err
	}
	p.Title, p.Data, p.Live = "Rollout "+d.R.ID, d, liveURL(r)
	// After a decision, the page says what was decided: only when the
	// approval named is decided, and by this user.
	if aid := r.URL.Query().Get("decided"); aid != "" && r.URL.Query().Get("part") != "live" {
		for _, a := range d.Approvals {
			if a.ID == aid && !a.Pending() && a.DecidedBy == p.User.Name {
				p.Flash = fmt.Sprintf("You %s %s: %s to %s (%q).", a.State, a.ID, a.Action, pctText(a.ToPercent), a.DecisionReason)
			}
		}
	}
	h.render(w, r, http.StatusOK, "rollout", p)
	return nil
}

// confirmData is the confirmation step of a rollout action.
type confirmData struct {
	R       *rollout.Rollout
	Action  string
	Reason  string
	Percent string
}

// rolloutAction takes an operator's action in two steps, both plain
// forms: the first POST shows "Pause rollout X? reason ... [Confirm]",
// the second (confirm=yes) does it. Every action needs a reason.
func (h *Handler) rolloutAction(w http.ResponseWriter, r *http.Request, p *page) error {
	id, action := r.PathValue("id"), r.PathValue("action")
	if !slices.Contains(RolloutActions, action) {
		return fmt.Errorf("%w: unknown action %q", errs.ErrNotFound, action)
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	pctText := strings.TrimSpace(r.PostFormValue("percent"))
	refuse := func(msg string) error { return h.refuseOnRollout(w, r, p, id, msg) }
	if reason == "" {
		return refuse("Say why: a " + action + " needs a reason, which the audit log keeps.")
	}
	var percent float64
	if action == rollout.ActionAdvance && pctText != "" {
		v, err := strconv.ParseFloat(pctText, 64)
		if err != nil || v <= 0 || v > 100 {
			return refuse("The percent to advance to must be a number above 0, at most 100.")
		}
		percent = v
	}
	if r.PostFormValue("confirm") != "yes" {
		ro, err := h.opts.Backend.Rollout(r.Context(), id)
		if err != nil {
			return err
		}
		p.Title = "Confirm " + action
		p.Data = confirmData{R: ro, Action: action, Reason: reason, Percent: pctText}
		h.render(w, r, http.StatusOK, "confirm", p)
		return nil
	}
	_, pending, err := h.opts.Backend.ChangeRollout(r.Context(), id, RolloutChange{Action: action, Reason: reason, Percent: percent})
	if err == nil && pending != nil {
		d, err := h.rolloutData(r, id)
		if err != nil {
			return err
		}
		p.Title, p.Data, p.Live = "Rollout "+id, d, "/rollouts/"+id+"?part=live"
		p.Flash = fmt.Sprintf("Requested: %s to %g%%%s needs a second person's approval (%s). Another operator approves it on this page.",
			pending.Action, pending.ToPercent, exposureNote(pending), pending.ID)
		h.render(w, r, http.StatusAccepted, "rollout", p)
		return nil
	}
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict || st == http.StatusForbidden {
			return refuse(err.Error())
		}
		return err
	}
	http.Redirect(w, r, "/rollouts/"+id, http.StatusSeeOther)
	return nil
}

// exposureNote says, for a request that waits for four eyes, how much of
// the handsets its patch's rollouts select the change lets the patch
// reach: four eyes follow that, not the rollout's own percent.
func exposureNote(a *rollout.Approval) string {
	if a.Exposure <= 0 {
		return ""
	}
	return fmt.Sprintf(" (the patch would reach %g%% of the handsets its rollouts select)", a.Exposure)
}

// refuseOnRollout answers an action on rollout id that was refused with
// msg: the rollout page again, 400, the message above it.
func (h *Handler) refuseOnRollout(w http.ResponseWriter, r *http.Request, p *page, id, msg string) error {
	d, err := h.rolloutData(r, id)
	if err != nil {
		return err
	}
	p.Title, p.Data, p.Error, p.Live = "Rollout "+id, d, msg, "/rollouts/"+id+"?part=live"
	h.render(w, r, http.StatusBadRequest, "rollout", p)
	return nil
}

// modelAction holds a model of a rollout or releases its hold, with a
// reason (inline on the by-model table, no confirmation page: both are
// undone by the other).
func (h *Handler) modelAction(w http.ResponseWriter, r *http.Request, p *page) error {
	id, model, action := r.PathValue("id"), r.PathValue("model"), r.PathValue("action")
	if !slices.Contains(ModelActions, action) {
		return fmt.Errorf("%w: unknown action %q", errs.ErrNotFound, action)
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	refuse := func(msg string) error { return h.refuseOnRollout(w, r, p, id, msg) }
	if reason == "" {
		return refuse("Say why: holding or releasing " + model + " needs a reason, which the audit log keeps.")
	}
	_, _, err := h.opts.Backend.ChangeRollout(r.Context(), id, RolloutChange{Action: action, Reason: reason, Model: model})
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict {
			return refuse(err.Error())
		}
		return err
	}
	http.Redirect(w, r, "/rollouts/"+id, http.StatusSeeOther)
	return nil
}

// decideApproval approves or rejects a four-eyes request, with a
// reason, as the session's user (never the requester: the service
// refuses a self-approval).
func (h *Handler) decideApproval(w http.ResponseWriter, r *http.Request, p *page) error {
	id, aid, verdict := r.PathValue("id"), r.PathValue("aid"), r.PathValue("verdict")
	if verdict != "approve" && verdict != "reject" {
		return fmt.Errorf("%w: unknown verdict %q", errs.ErrNotFound, verdict)
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	err := error(nil)
	if reason == "" {
		err = &errs.FieldError{Field: "reason", Message: "say why you " + verdict + " it"}
	} else {
		err = h.opts.Backend.DecideApproval(r.Context(), id, aid, verdict == "approve", reason)
	}
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict || st == http.StatusForbidden {
			d, derr := h.rolloutData(r, id)
			if derr != nil {
				return derr
			}
			p.Title, p.Data, p.Error, p.Live = "Rollout "+id, d, err.Error(), "/rollouts/"+id+"?part=live"
			h.render(w, r, st, "rollout", p)
			return nil
		}
		return err
	}
	http.Redirect(w, r, "/rollouts/"+id+"?decided="+url.QueryEscape(aid), http.StatusSeeOther)
	return nil
}

// release is a published target with its custom metadata decoded.
type release struct {
	manifests.TargetInfo
	Custom manifests.TargetCustom
}

// releasesData is the releases page: what is published, what was
// yanked, and the drafts as a history, newest first.
type releasesData struct {
	Status   *manifests.Status
	Releases []release
	History  []draftEntry
	Yanks    []yankEntry
}

// releaseOf is published target t with its signed custom metadata; a
// target of another kind shows without its fields.
func releaseOf(t manifests.TargetInfo) release {
	rel := release{TargetInfo: t}
	if len(t.Custom) > 0 {
		_ = json.Unmarshal(t.Custom, &rel.Custom)
	}
	return rel
}

// sortReleases orders releases newest first, then by path.
func sortReleases(rels []release) {
	slices.SortFunc(rels, func(a, b release) int {
		return cmp.Or(b.Custom.Released.Compare(a.Custom.Released), strings.Compare(a.Path, b.Path))
	})
}

func (h *Handler) releasesPage(w http.ResponseWriter, r *http.Request, p *page) error {
	st, err := h.opts.Backend.RepoStatus(r.Context())
	if err != nil {
		return err
	}
	drafts, err := h.opts.Backend.Drafts(r.Context(), draftsShown)
	if err != nil {
		return err
	}
	names, err := signerNames(r.Context(), h.opts.Audit)
	if err != nil {
		return err
	}
	d := &releasesData{Status: st}
	for _, t := range st.Targets {
		// An incremental payload shows under its release.
		if rel := releaseOf(t); rel.Custom.Incremental == nil {
			d.Releases = append(d.Releases, rel)
		}
	}
	sortReleases(d.Releases)
	d.History, d.Yanks = draftHistory(drafts, names)
	p.Title, p.Data, p.Live = "Releases", d, liveURL(r)
	h.render(w, r, http.StatusOK, "releases", p)
	return nil
}

// auditData is the audit page.
type auditData struct {
	Q        auditForm
	Entries  []auditRow
	Verified *audit.AuditVerification
	Broken   *audit.AuditBrokenError

	// SinceExample and UntilExample are the filter placeholders: the
	// last hour.
	SinceExample, UntilExample string
}

type auditForm struct{ Actor, Action, Since, Until string }

// parseWhen reads a filter time: RFC 3339 or a UTC day.
func parseWhen(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, &errs.FieldError{Field: field, Message: "want a UTC day (YYYY-MM-DD), a UTC time (YYYY-MM-DDTHH:MM) or RFC 3339"}
}

func (h *Handler) auditPage(w http.ResponseWriter, r *http.Request, p *page) error {
	qv := r.URL.Query()
	f := auditForm{Actor: qv.Get("actor"), Action: qv.Get("action"), Since: qv.Get("since"), Until: qv.Get("until")}
	now := h.now()
	d := &auditData{Q: f, SinceExample: sincePlaceholder(now), UntilExample: untilPlaceholder(now)}
	p.Title, p.Data = "Audit log", d
	q := audit.AuditQuery{Actor: f.Actor, Action: f.Action, Limit: auditShown}
	var err error
	if q.Since, err = parseWhen("since", f.Since); err == nil {
		q.Until, err = parseWhen("until", f.Until)
	}
	if err != nil {
		p.Error = err.Error()
		h.render(w, r, http.StatusBadRequest, "audit", p)
		return nil
	}
	es, err := h.opts.Audit.ListAudit(r.Context(), q)
	if err != nil {
		return err
	}
	d.Entries = auditRows(es)
	v, err := audit.VerifyAudit(r.Context(), h.opts.Audit, h.opts.AuditAnchor)
	if !errors.As(err, &d.Broken) {
		if err != nil {
			return err
		}
		d.Verified = &v
	}
	p.Live = liveURL(r)
	h.render(w, r, http.StatusOK, "audit", p)
	return nil
}

func (h *Handler) usersPage(w http.ResponseWriter, r *http.Request, p *page) error {
	return h.renderUsers(w, r, p, http.StatusOK)
}

func (h *Handler) renderUsers(w http.ResponseWriter, r *http.Request, p *page, status int) error {
	us, err := h.opts.Users.Store.ListUsers(r.Context())
	if err != nil {
		return err
	}
	p.Title, p.Data = "Users", struct {
		Users []*identity.User
		Roles []string
	}{us, identity.Roles}
	h.render(w, r, status, "users", p)
	return nil
}

func (h *Handler) createUser(w http.ResponseWriter, r *http.Request, p *page) error {
	name, role := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("role")
	service := r.PostFormValue("service") == "yes"
	u, err := h.opts.Users.Create(r.Context(), name, role, r.PostFormValue("password"), service)
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict {
			p.Error = err.Error()
			return h.renderUsers(w, r, p, st)
		}
		return err
	}
	if err := h.record(r.Context(), p.User.Name, identity.UserCreatedEntry(u)); err != nil {
		return err
	}
	http.Redirect(w, r, "/users", http.StatusSeeOther)
	return nil
}

func (h *Handler) changeUser(w http.ResponseWriter, r *http.Request, p *page) error {
	name, change := r.PathValue("name"), r.PathValue("change")
	ctx := r.Context()
	by := identity.PrincipalFromContext(ctx)
	var (
		u     *identity.User
		err   error
		entry audit.AuditEntry
	)
	switch change {
	case "role":
		var from string
		if u, from, err = h.opts.Users.SetRole(ctx, by, name, r.PostFormValue("role")); err == nil {
			entry = identity.UserRoleEntry(u, from)
		}
	case "disable", "enable":
		if u, err = h.opts.Users.SetDisabled(ctx, by, name, change == "disable"); err == nil {
			entry = identity.UserDisabledEntry(u)
		}
	default:
		return fmt.Errorf("%w: unknown change %q", errs.ErrNotFound, change)
	}
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict {
			p.Error = err.Error()
			return h.renderUsers(w, r, p, st)
		}
		return err
	}
	if err := h.record(ctx, p.User.Name, entry); err != nil {
		return err
	}
	http.Redirect(w, r, "/users", http.StatusSeeOther)
	return nil
}

// tokensData is the tokens page: the user's own tokens (every user's
// for an admin) and, once, a new token's secret.
type tokensData struct {
	Tokens []*identity.Token
	Names  map[string]string
	Secret string
	New    *identity.Token
	now    time.Time
}

// Expired reports whether t has expired, as of the page.
func (d *tokensData) Expired(t *identity.Token) bool { return t.Expired(d.now) }

func (h *Handler) renderTokens(w http.ResponseWriter, r *http.Request, p *page, status int, d *tokensData) error {
	ctx := r.Context()
	var err error
	owner := p.User.ID
	if p.User.Can(identity.PermUserAdmin) {
		owner = ""
	}
	if d.Tokens, err = h.opts.Tokens.Store.ListTokens(ctx, owner); err != nil {
		return err
	}
	d.Names = map[string]string{p.User.ID: p.User.Name}
	if owner == "" {
		us, err := h.opts.Users.Store.ListUsers(ctx)
		if err != nil {
			return err
		}
		for _, u := range us {
			d.Names[u.ID] = u.Name
		}
	}
	d.now = h.now()
	p.Title, p.Data = "API tokens", d
	h.render(w, r, status, "tokens", p)
	return nil
}

func (h *Handler) tokensPage(w http.ResponseWriter, r *http.Request, p *page) error {
	return h.renderTokens(w, r, p, http.StatusOK, &tokensData{})
}

func (h *Handler) createToken(w http.ResponseWriter, r *http.Request, p *page) error {
	name := strings.TrimSpace(r.PostFormValue("name"))
	var opts identity.TokenOptions
	if v := strings.TrimSpace(r.PostFormValue("expires_in")); v != "" {
		d, err := identity.ParseTokenLifetime(v)
		if err != nil {
			p.Error = err.Error()
			return h.renderTokens(w, r, p, http.StatusBadRequest, &tokensData{})
		}
		opts.Lifetime = d
	}
	t, secret, err := h.opts.Tokens.Mint(r.Context(), p.User, name, opts)
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict {
			p.Error = err.Error()
			return h.renderTokens(w, r, p, st, &tokensData{})
		}
		return err
	}
	if err := h.record(r.Context(), p.User.Name, identity.TokenCreatedEntry(t, p.User.Name)); err != nil {
		return err // the secret is not shown: revoke the token and mint another
	}
	// The secret is shown in this answer only (no-store), never again.
	p.Flash = "Token created. Copy the secret now: it is not shown again."
	return h.renderTokens(w, r, p, http.StatusOK, &tokensData{Secret: secret, New: t})
}

func (h *Handler) revokeToken(w http.ResponseWriter, r *http.Request, p *page) error {
	ctx := r.Context()
	// Only one's own, unless an admin: another's token is as unknown.
	t, with, err := h.opts.Tokens.Revoke(ctx, identity.PrincipalFromContext(ctx), r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := h.record(ctx, p.User.Name, identity.TokenRevokedEntry(t, with)); err != nil {
		return err
	}
	http.Redirect(w, r, "/tokens", http.StatusSeeOther)
	return nil
}
