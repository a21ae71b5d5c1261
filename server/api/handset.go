package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// The handset API. Bodies decode into fixed structs that refuse unknown
// fields, so nothing the server does not ask for (an IMEI, IMSI, phone
// number, contact or message) can be stored by accident.

func (s *Server) mountHandset() {
	// Device routes check the device token (or, for enrollment, the
	// enrollment secret) in the handler.
	r := routes{s: s, g: s.echo.Group(wire.APIPrefix), prefix: wire.APIPrefix}
	r.add(http.MethodPost, "/devices", device, s.enroll, s.limitTotal(s.enrollLimit))
	r.add(http.MethodPost, "/checkin", device, s.checkIn, s.limit(s.checkInLimit))
	r.add(http.MethodPost, "/reports", device, s.report, s.limit(s.reportLimit))
	r.add(http.MethodDelete, "/devices/self", device, s.eraseSelf)
}

// bearer is the request's device token; "" (refused as invalid) unless the
// header is "Authorization: Bearer TOKEN".
func bearer(c echo.Context) string {
	t, _ := bearerToken(c.Request().Header.Get("Authorization"))
	return t
}

func (s *Server) enroll(c echo.Context) error {
	var b wire.EnrollBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	req := server.EnrollRequest{Model: b.Model, Build: b.Build, Channel: b.Channel, Region: b.Region,
		Secret: b.EnrollmentSecret, DeviceKey: b.DeviceKey, Signature: b.Signature}
	if b.Timestamp != nil {
		req.Timestamp = *b.Timestamp
	}
	e, err := s.fleet.Enroll(c.Request().Context(), req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if e.Created {
		status = http.StatusCreated
	}
	// A new device checks in at once: that is when it learns of updates.
	return c.JSON(status, wire.EnrollAnswer{DeviceID: e.DeviceID, Token: e.Token, PollAfterSeconds: 0})
}

func (s *Server) checkIn(c echo.Context) error {
	var b wire.CheckInBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.NumberEncryption == nil {
		return &errs.FieldError{Field: "number_encryption", Message: "required: true or false"}
	}
	res, err := s.fleet.CheckIn(c.Request().Context(), bearer(c), handsets.CheckIn{
		Build: b.Build, Model: b.Model, Channel: b.Channel, InstalledPatches: b.InstalledPatches,
		CloudMessaging: b.CloudMessaging, NumberEncryption: *b.NumberEncryption, UTCOffsetMinutes: b.UTCOffsetMinutes})
	if err != nil {
		return err
	}
	ans := wire.CheckInAnswer{PollAfterSeconds: int(res.PollAfter.Seconds()), NoOffer: rollout.RefusalCode(res.Refusal)}
	if o := res.Offer; o != nil {
		base := s.publicBase()
		ans.Offer = &wire.OfferAnswer{Target: o.Target, Length: o.Length, SHA256: o.SHA256, PatchID: o.PatchID,
			RolloutID: o.RolloutID, MetadataURL: base + "/tuf/", TargetsURL: base + "/targets/", Custom: o.Custom,
			Payload: wire.PayloadFull, FullLength: o.FullLength, Urgent: o.Urgent}
		if o.Incremental {
			ans.Offer.Payload = wire.PayloadIncremental
		}
	}
	return c.JSON(http.StatusOK, ans)
}

// publicBase is the URL offers name TUF locations under: the configured
// public URL, or "" so that they are root-relative paths ("/tuf/") that
// the handset resolves against the URL it reached the API at. Never the
// request's Host header: anyone can send one, and an offer naming it
// would point handsets wherever the sender likes.
func (s *Server) publicBase() string {
	return s.publicURL
}

func (s *Server) report(c echo.Context) error {
	var b wire.ReportBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	r := handsets.Report{ID: b.ReportID, PatchID: b.PatchID, RolloutID: b.RolloutID, Target: b.Target, State: b.State,
		ErrorCode: b.ErrorCode, Message: b.Message}
	if b.At != nil {
		r.At = *b.At
	}
	dup, err := s.fleet.Report(c.Request().Context(), bearer(c), r)
	if err != nil {
		return err
	}
	if dup {
		return c.JSON(http.StatusOK, wire.ReportAnswer{Duplicate: true})
	}
	return c.JSON(http.StatusCreated, wire.ReportAnswer{})
}

func (s *Server) eraseSelf(c echo.Context) error {
	if err := s.fleet.Erase(c.Request().Context(), bearer(c)); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// fleetSummary answers GET /api/v1/admin/fleet/summary?patch=ID&active_days=N&models=M.
// Without patch, it reports on the newest published patch; models caps
// the by-model list (handsets.DefaultSummaryModels when absent).
func (s *Server) fleetSummary(c echo.Context) error {
	patch := c.QueryParam("patch")
	if patch == "" {
		if patch = s.newestPatch(); patch == "" {
			return &errs.FieldError{Field: "patch", Message: "no patch is published yet; name one with ?patch="}
		}
	}
	days := 30
	if v := c.QueryParam("active_days"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return &errs.FieldError{Field: "active_days", Message: "want a whole number of days"}
		}
		days = n
	}
	models := handsets.DefaultSummaryModels
	if v := c.QueryParam("models"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return &errs.FieldError{Field: "models", Message: "want a whole number of models"}
		}
		models = n
	}
	sum, err := s.fleet.Summary(c.Request().Context(), patch, days, models)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, sum)
}

func (s *Server) newestPatch() string {
	_, targets := s.repo.PublishedTargets()
	var newest manifests.TargetCustom
	for _, t := range targets {
		var c manifests.TargetCustom
		if json.Unmarshal(t.Custom, &c) == nil && c.PatchID != "" && !c.Released.Before(newest.Released) {
			newest = c
		}
	}
	return newest.PatchID
}

// unknownField turns encoding/json's unknown-field error into one naming
// the field: the privacy promise is that such data is refused, not dropped.
func unknownField(err error) error {
	msg := err.Error()
	name, ok := strings.CutPrefix(msg, "json: unknown field ")
	if !ok {
		return nil
	}
	name = strings.Trim(name, `"`)
	return &errs.FieldError{Field: name, Message: fmt.Sprintf("unknown field %q: this server does not accept it", name)}
}
