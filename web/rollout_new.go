package web

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// rolloutForm is the new-rollout form as typed, so that a refused form
// shows again with what was entered. Empty policy fields take
// rollout.DefaultPolicy's values.
type rolloutForm struct {
	Release, Stages, Models, Channels, Regions, BuildMin, BuildMax string
	// MaxFailureRate is a percent ("5" is 5%).
	MaxFailureRate, MinResults, Soak, Retries, MaxOffersPerMinute, Window string
	Draft                                                                 bool
	Reason                                                                string
}

// DefaultStages are the stages of a new rollout whose form leaves them
// empty; the field shows them as its placeholder, not as a value that
// typing would append to.
const DefaultStages = "1, 10, 50, 100"

// newRolloutData is the new-rollout page.
type newRolloutData struct {
	Form rolloutForm
	// Releases are the published targets, newest first.
	Releases []release
	// Default holds, by form field, what an empty policy field takes
	// (rollout.DefaultPolicy), as the form writes it.
	Default map[string]string
}

// DefaultStages is the stages field's placeholder.
func (*newRolloutData) DefaultStages() string { return DefaultStages }

// formDefaults are rollout.DefaultPolicy's values as the form writes them.
func formDefaults() map[string]string {
	p := rollout.DefaultPolicy()
	soak := "off"
	if p.Soak > 0 {
		soak = p.Soak.String()
	}
	offers := "no cap"
	if p.MaxOffersPerMinute > 0 {
		offers = strconv.Itoa(p.MaxOffersPerMinute)
	}
	return map[string]string{
		"max_failure_rate":      strconv.FormatFloat(100*p.MaxFailureRate, 'f', -1, 64),
		"min_results":           strconv.FormatInt(p.MinResults, 10),
		"soak":                  soak,
		"retries":               strconv.Itoa(p.Retries),
		"max_offers_per_minute": offers,
	}
}

func readRolloutForm(r *http.Request) rolloutForm {
	v := func(name string) string { return strings.TrimSpace(r.PostFormValue(name)) }
	return rolloutForm{Release: v("release"), Stages: v("stages"), Models: v("models"), Channels: v("channels"),
		Regions: v("regions"), BuildMin: v("build_min"), BuildMax: v("build_max"), MaxFailureRate: v("max_failure_rate"),
		MinResults: v("min_results"), Soak: v("soak"), Retries: v("retries"), MaxOffersPerMinute: v("max_offers_per_minute"),
		Window: v("window"), Draft: v("draft") == "yes", Reason: v("reason")}
}

// spec turns the form into a rollout spec; what RolloutService checks
// (a published release, stages that rise, bounds) it leaves to it.
func (f rolloutForm) spec() (rollout.RolloutSpec, error) {
	if f.Reason == "" {
		return rollout.RolloutSpec{}, &errs.FieldError{Field: "reason", Message: "say why: the audit log keeps it"}
	}
	if f.Release == "" {
		return rollout.RolloutSpec{}, &errs.FieldError{Field: "release", Message: "pick a published release"}
	}
	spec := rollout.RolloutSpec{Release: f.Release, Draft: f.Draft, Reason: f.Reason, Policy: rollout.DefaultPolicy(),
		Selector: rollout.Selector{Models: list(f.Models), Channels: list(f.Channels), Regions: list(f.Regions),
			BuildMin: f.BuildMin, BuildMax: f.BuildMax}}
	stages := f.Stages
	if stages == "" {
		stages = DefaultStages // the placeholder the form shows
	}
	for _, s := range list(stages) {
		pct, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
		if err != nil {
			return rollout.RolloutSpec{}, &errs.FieldError{Field: "stages", Message: fmt.Sprintf("%q is not a percent: write them like 1, 10, 50, 100", s)}
		}
		spec.Stages = append(spec.Stages, pct)
	}
	p := &spec.Policy
	if f.MaxFailureRate != "" {
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f.MaxFailureRate, "%"), 64)
		if err != nil || pct <= 0 || pct > 100 {
			return rollout.RolloutSpec{}, &errs.FieldError{Field: "max_failure_rate", Message: "a percent above 0, at most 100"}
		}
		p.MaxFailureRate = pct / 100
	}
	for _, n := range []struct {
		field, in string
		out       func(int64)
	}{
		{"min_results", f.MinResults, func(v int64) { p.MinResults = v }},
		{"retries", f.Retries, func(v int64) { p.Retries = int(v) }},
		{"max_offers_per_minute", f.MaxOffersPerMinute, func(v int64) { p.MaxOffersPerMinute = int(v) }},
	} {
		if n.in == "" {
			continue
		}
		v, err := strconv.ParseInt(n.in, 10, 32)
		if err != nil || v < 0 {
			return rollout.RolloutSpec{}, &errs.FieldError{Field: n.field, Message: "a whole number, 0 or more"}
		}
		n.out(v)
	}
	if f.Soak != "" {
		d, err := time.ParseDuration(f.Soak)
		if err != nil || d < 0 {
			return rollout.RolloutSpec{}, &errs.FieldError{Field: "soak", Message: "a duration such as 30m or 6h"}
		}
		p.Soak = d
	}
	var err error
	if p.Window, err = rollout.ParseWindow(f.Window); err != nil {
		return rollout.RolloutSpec{}, err
	}
	return spec, nil
}

// list splits a comma-separated field, dropping empty items.
func list(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func (h *Handler) newRolloutPage(w http.ResponseWriter, r *http.Request, p *page) error {
	form := rolloutForm{Release: r.URL.Query().Get("release")}
	return h.renderNewRollout(w, r, p, http.StatusOK, form)
}

func (h *Handler) renderNewRollout(w http.ResponseWriter, r *http.Request, p *page, status int, form rolloutForm) error {
	d := &newRolloutData{Form: form, Default: formDefaults()}
	var err error
	if d.Releases, err = h.publishedReleases(r); err != nil {
		return err
	}
	p.Title, p.Data = "New rollout", d
	h.render(w, r, status, "rollout_new", p)
	return nil
}

// createRollout creates a rollout from the form. A refusal shows the
// form again with what was typed; a start that needs a second person's
// approval shows the new rollout with the request.
func (h *Handler) createRollout(w http.ResponseWriter, r *http.Request, p *page) error {
	form := readRolloutForm(r)
	refuse := func(status int, msg string) error {
		p.Error = msg
		return h.renderNewRollout(w, r, p, status, form)
	}
	spec, err := form.spec()
	if err != nil {
		return refuse(http.StatusBadRequest, err.Error())
	}
	ro, pending, err := h.opts.Backend.CreateRollout(r.Context(), spec)
	if err == nil && pending != nil {
		d, err := h.rolloutData(r, ro.ID)
		if err != nil {
			return err
		}
		p.Title, p.Data = "Rollout "+ro.ID, d
		p.Flash = fmt.Sprintf("Created as a draft: starting at %g%%%s needs a second person's approval (%s). Another operator approves it on this page.",
			pending.ToPercent, exposureNote(pending), pending.ID)
		h.render(w, r, http.StatusAccepted, "rollout", p)
		return nil
	}
	if err != nil {
		if st := statusOf(err); st == http.StatusBadRequest || st == http.StatusConflict || st == http.StatusNotFound {
			return refuse(st, err.Error())
		}
		return err
	}
	http.Redirect(w, r, "/rollouts/"+ro.ID, http.StatusSeeOther)
	return nil
}

// publishedReleases are the published targets with their signed custom
// metadata, newest first (as on the releases page).
func (h *Handler) publishedReleases(r *http.Request) ([]release, error) {
	st, err := h.opts.Backend.RepoStatus(r.Context())
	if err != nil {
		return nil, err
	}
	rels := make([]release, 0, len(st.Targets))
	for _, t := range st.Targets {
		// An incremental payload is never a rollout's release.
		if rel := releaseOf(t); rel.Custom.Incremental == nil {
			rels = append(rels, rel)
		}
	}
	sortReleases(rels)
	return rels, nil
}
