package web

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// devicesForm is the device list's filters as the form sends them, kept
// to fill the form again.
type devicesForm struct {
	ID, Model, Build, Region, Patch, State string
}

// values is f as query parameters, empty fields left out but patch,
// which is sent even empty: its absence means "the newest rollout's
// patch" (see devicesPage).
func (f devicesForm) values() url.Values {
	v := url.Values{}
	for _, kv := range [][2]string{{"id", f.ID}, {"model", f.Model}, {"build", f.Build}, {"region", f.Region}, {"state", f.State}} {
		if kv[1] != "" {
			v.Set(kv[0], kv[1])
		}
	}
	v.Set("patch", f.Patch)
	return v
}

// searched says in words what f filters on, for the empty list.
func (f devicesForm) searched() string {
	var parts []string
	if f.ID != "" {
		parts = append(parts, "an id that is or starts with "+f.ID)
	}
	for _, kv := range [][2]string{{"model", f.Model}, {"build", f.Build}, {"region", f.Region}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	if f.State != "" {
		parts = append(parts, stateWords(f.State)+" for "+f.Patch)
	}
	return strings.Join(parts, ", ")
}

// stateWords is an install state in the counters' words ("rolled
// back").
func stateWords(s string) string { return strings.ReplaceAll(s, "_", " ") }

// stateOption is a choice of the state filter.
type stateOption struct{ Value, Label string }

// deviceItem is one row of the device list.
type deviceItem struct {
	ID, Model, Build, Channel, Region, Messaging string
	Encryption                                   bool
	// State is the handset's state for the form's patch in words, ""
	// without a report; Error its error code when failed.
	State, Error string
	LastSeen     time.Time
}

// devicesData is the device list page.
type devicesData struct {
	Q       devicesForm
	Patches []string
	States  []stateOption
	// Listed is false when the filters were refused: no table then.
	Listed  bool
	Devices []deviceItem
	// Empty says why the list is empty; NextURL and FirstURL link the
	// next page and, on a later page, the first ("" when none).
	Empty, NextURL, FirstURL string
}

// devicesPage is the device list: handsets filtered by id (or its
// start), model, build, region and install state of a patch, 50 a page
// in id order with a next-page link (a keyset cursor, see
// handsets.DeviceQuery). /devices?id=X, the old lookup's address, goes to
// handset X's page when X is a whole id.
func (h *Handler) devicesPage(w http.ResponseWriter, r *http.Request, p *page) error {
	ctx := r.Context()
	qv := r.URL.Query()
	f := devicesForm{ID: strings.TrimSpace(qv.Get("id")), Model: strings.TrimSpace(qv.Get("model")),
		Build: strings.TrimSpace(qv.Get("build")), Region: strings.ToUpper(strings.TrimSpace(qv.Get("region"))),
		Patch: strings.TrimSpace(qv.Get("patch")), State: qv.Get("state")}
	after := qv.Get("after")

	rollouts, err := h.opts.Backend.Rollouts(ctx)
	if err != nil {
		return err
	}
	d := &devicesData{Q: f}
	// The patches of the rollouts, newest first: the first is the
	// default, as the one a release manager is rolling out.
	for _, ro := range slices.Backward(rollouts) {
		if id := ro.Release.PatchID; id != "" && !slices.Contains(d.Patches, id) {
			d.Patches = append(d.Patches, id)
		}
	}
	if !qv.Has("patch") && len(d.Patches) > 0 {
		d.Q.Patch = d.Patches[0]
	}
	if d.Q.Patch != "" && !slices.Contains(d.Patches, d.Q.Patch) {
		d.Patches = append(d.Patches, d.Q.Patch)
	}
	for _, s := range handsets.ReportStates {
		d.States = append(d.States, stateOption{Value: s, Label: stateWords(s)})
	}
	p.Title, p.Data = "Devices", d

	q := handsets.DeviceQuery{IDPrefix: f.ID, Model: f.Model, Build: f.Build, Region: f.Region,
		PatchID: d.Q.Patch, State: f.State, After: after}
	if err := q.Validate(); err != nil {
		if errors.Is(err, errs.ErrInvalid) {
			p.Error = err.Error()
			h.render(w, r, http.StatusBadRequest, "devices", p)
			return nil
		}
		return err
	}
	// A whole id and nothing else searched: the handset's page.
	if f.ID != "" && f.Model == "" && f.Build == "" && f.Region == "" && f.State == "" && after == "" {
		if _, err := h.opts.Backend.Device(ctx, f.ID); err == nil {
			http.Redirect(w, r, "/devices/"+url.PathEscape(f.ID), http.StatusSeeOther)
			return nil
		} else if !errors.Is(err, errs.ErrNotFound) {
			return err
		}
	}
	pg, err := h.opts.Backend.ListDevices(ctx, q)
	if err != nil {
		if errors.Is(err, errs.ErrInvalid) {
			p.Error = err.Error()
			h.render(w, r, http.StatusBadRequest, "devices", p)
			return nil
		}
		return err
	}
	d.Listed = true
	for _, row := range pg.Devices {
		dv := row.Device
		it := deviceItem{ID: dv.ID, Model: dv.Model, Build: dv.Build, Channel: dv.Channel, Region: dv.Region,
			Messaging: stateWords(dv.CloudMessaging), Encryption: dv.NumberEncryption, LastSeen: dv.LastSeen}
		if row.Patch != nil {
			it.State = stateWords(row.Patch.State)
			if row.Patch.State == handsets.StateFailed {
				it.Error = row.Patch.ErrorCode
			}
		}
		d.Devices = append(d.Devices, it)
	}
	v := d.Q.values()
	if after != "" {
		d.FirstURL = "/devices?" + v.Encode()
	}
	if pg.Next != "" {
		v.Set("after", pg.Next)
		d.NextURL = "/devices?" + v.Encode()
	}
	switch s := d.Q.searched(); {
	case after != "":
		d.Empty = "No more handsets."
	case s != "":
		d.Empty = "No handset has " + s + "."
	default:
		d.Empty = "No handset has enrolled yet."
	}
	p.Live = liveURL(r)
	h.render(w, r, http.StatusOK, "devices", p)
	return nil
}

// devicePage is one handset: what it reported of itself, its install
// state per patch and its latest reports.
func (h *Handler) devicePage(w http.ResponseWriter, r *http.Request, p *page) error {
	id := r.PathValue("id")
	p.Title = "Device " + id
	v, err := h.opts.Backend.Device(r.Context(), id)
	switch {
	case errors.Is(err, errs.ErrNotFound):
		p.Error = "No handset has the id " + id + "."
		h.render(w, r, http.StatusNotFound, "device", p)
		return nil
	case err != nil:
		return err
	}
	p.Data = v
	p.Live = liveURL(r)
	h.render(w, r, http.StatusOK, "device", p)
	return nil
}
