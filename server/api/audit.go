package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// HeaderReason is wire.HeaderReason, the audit reason of an admin call.
const HeaderReason = wire.HeaderReason

// auditReason is the request's X-Reason, checked.
func auditReason(c echo.Context) (string, error) {
	r := strings.TrimSpace(c.Request().Header.Get(HeaderReason))
	if len(r) > rollout.MaxReasonLen || strings.ContainsFunc(r, unicode.IsControl) {
		return "", &errs.FieldError{Field: HeaderReason, Message: fmt.Sprintf("at most %d bytes on one line", rollout.MaxReasonLen)}
	}
	return r, nil
}

// audit appends the entry of an administrative action that succeeded:
// the caller calls it after the action, and answers with its error. The
// action is not rolled back when the append fails (the draft, the user,
// the token exists by then, in stores that share no transaction with
// the log): the failure is logged at error level and answered 500, so
// that the operator knows the log lacks it. Rollout changes are not
// audited here: the rollout store appends their events to the log in
// the rollout's own transaction.
func (s *Server) audit(c echo.Context, action, object string, detail any) error {
	var d string
	switch v := detail.(type) {
	case nil:
	case string:
		d = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("audit %s: detail: %w", action, err)
		}
		d = string(b)
	}
	return s.record(c, audit.AuditEntry{Action: action, Object: object, Detail: d})
}

// record appends e, done by the request's principal for the request's
// reason, by identity.RecordAction's rule: a failure is logged and answered
// (500), the action itself stays done.
func (s *Server) record(c echo.Context, e audit.AuditEntry) error {
	if s.auditLog == nil {
		return nil
	}
	reason, _ := auditReason(c) // checked by authenticate
	ctx := c.Request().Context()
	if err := identity.RecordAction(ctx, s.auditLog, e, actor(c), reason, s.now()); err != nil {
		s.log.ErrorContext(ctx, "the action succeeded but its audit entry was not appended",
			slog.String("request_id", requestID(c)), slog.String("action", e.Action), slog.String("object", e.Object),
			slog.String("actor", actor(c)), slog.Any("error", err))
		return err
	}
	return nil
}

func (s *Server) auditStore() (audit.AuditStore, error) {
	if s.auditLog == nil {
		return nil, fmt.Errorf("%w: no audit log configured", errs.ErrUnavailable)
	}
	return s.auditLog, nil
}

// auditEntries answers GET /admin/audit: the log newest first, filtered
// by actor, action (exact, or a prefix ending in "."), object, since,
// until, before (a seq, for paging) and limit.
func (s *Server) auditEntries(c echo.Context) error {
	store, err := s.auditStore()
	if err != nil {
		return err
	}
	q := audit.AuditQuery{Actor: c.QueryParam("actor"), Action: c.QueryParam("action"), Object: c.QueryParam("object")}
	if q.Limit, err = queryLimit(c); err != nil {
		return err
	}
	if q.Limit == 0 {
		q.Limit = audit.DefaultAuditLimit
	}
	if q.Since, err = queryTime(c, "since"); err != nil {
		return err
	}
	if q.Until, err = queryTime(c, "until"); err != nil {
		return err
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return &errs.FieldError{Field: "until", Message: "want a time after since"}
	}
	if b := c.QueryParam("before"); b != "" {
		if q.Before, err = strconv.ParseInt(b, 10, 64); err != nil || q.Before < 1 {
			return &errs.FieldError{Field: "before", Message: "want the seq of an entry, 1 or more"}
		}
	}
	es, err := store.ListAudit(c.Request().Context(), q)
	if err != nil {
		return err
	}
	out := make([]wire.AuditEntry, len(es))
	for i, e := range es {
		out[i] = wire.AuditEntry{Seq: e.Seq, At: e.At.UTC(), Actor: e.Actor, Action: e.Action, Object: e.Object,
			Reason: e.Reason, Detail: e.Detail, PrevHash: e.PrevHash, Hash: e.Hash}
	}
	return c.JSON(http.StatusOK, out)
}

// verifyAudit answers GET /admin/audit/verify: the whole chain checked,
// against the checkpoints too (audit.VerifyAudit). A broken chain is
// still a 200: the answer is the finding, not a failure of the request.
func (s *Server) verifyAudit(c echo.Context) error {
	store, err := s.auditStore()
	if err != nil {
		return err
	}
	v, err := audit.VerifyAudit(c.Request().Context(), store, s.auditAnchor)
	if be := new(audit.AuditBrokenError); errors.As(err, &be) {
		return c.JSON(http.StatusOK, wire.AuditVerify{OK: false, BrokenAt: be.Seq, Why: be.Why})
	}
	if err != nil {
		return err
	}
	anchored, since := v.Anchored(), v.SinceCheckpoint()
	out := wire.AuditVerify{OK: true, Entries: &v.Entries, HeadHash: &v.HeadHash, Anchored: &anchored,
		Checkpoints: v.Checkpoints, Unanchored: v.Unanchored}
	if cp := v.Newest; cp != nil {
		out.NewestCheckpoint = &wire.AuditCheckpoint{Seq: cp.Seq, Hash: cp.Hash(), At: cp.At.UTC(), KeyID: cp.KeyID, Key: cp.Key}
		out.SinceCheckpoint = &since
	}
	return c.JSON(http.StatusOK, out)
}
