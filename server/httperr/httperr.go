// Package httperr is the one table from the domain's errors to HTTP
// statuses and stable codes, shared by the admin and handset API
// (server/api) and the dashboard (web). With a table in each, a
// manifests error that the API answered 404 or 409 became a 500 page.
// Only the domain's errors are here: what belongs to Echo or to the
// client's connection (a canceled request, a broken body) stays with
// server/api.
package httperr

import (
	"errors"
	"net/http"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/errs"
)

// Codes not in the sentinel table, named so that callers can test for
// them.
const (
	// CodeInternal is every error the table does not know: a server
	// error, whose details go to the log, not to the client.
	CodeInternal = "internal"
	// CodeNotAudited is errs.ErrNotAudited: a server error, but one
	// whose action was done.
	CodeNotAudited = "not_audited"
)

// codes maps the domain sentinels to a status and a code, first match
// wins. The manifests sentinels come first: the TUF workflow's refusals
// each have their own code, so that otactl (and people) can tell them
// apart.
var codes = []struct {
	err    error
	status int
	code   string
}{
	{manifests.ErrUnknownKey, http.StatusUnprocessableEntity, "unknown_key"},
	{manifests.ErrKeyNotAuthorized, http.StatusForbidden, "key_not_authorized"},
	{manifests.ErrBadSignature, http.StatusUnprocessableEntity, "bad_signature"},
	{manifests.ErrStaleDraft, http.StatusConflict, "stale_draft"},
	{manifests.ErrDraftNotPending, http.StatusConflict, "stale_draft"},
	{manifests.ErrDraftPending, http.StatusConflict, "draft_pending"},
	{manifests.ErrNotInitialized, http.StatusConflict, "not_initialized"},
	{manifests.ErrInvalid, http.StatusBadRequest, "invalid"},
	{manifests.ErrInvalidKey, http.StatusBadRequest, "invalid"},
	{manifests.ErrNotExist, http.StatusNotFound, "not_found"},

	{errs.ErrInvalid, http.StatusBadRequest, "invalid"},
	{errs.ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{errs.ErrForbidden, http.StatusForbidden, "forbidden"},
	{errs.ErrNotFound, http.StatusNotFound, "not_found"},
	{errs.ErrConflict, http.StatusConflict, "conflict"},
	{errs.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// Classify returns the status and the stable code that err is answered
// with: a refusal of the domain (a server or manifests sentinel, a
// *errs.FieldError, a *errs.RateLimitError, an over-long body's
// *http.MaxBytesError) gets its own; errs.ErrNotAudited is a 500 with
// CodeNotAudited; anything else is a 500 with CodeInternal.
func Classify(err error) (status int, code string) {
	if errors.As(err, new(*errs.FieldError)) {
		return http.StatusBadRequest, "invalid"
	}
	if errors.Is(err, errs.ErrNotAudited) {
		// Checked before the table: the store's error it wraps may be
		// anything, and the action was done all the same.
		return http.StatusInternalServerError, CodeNotAudited
	}
	if errors.As(err, new(*errs.RateLimitError)) {
		return http.StatusTooManyRequests, "rate_limited"
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.status, c.code
		}
	}
	if errors.As(err, new(*http.MaxBytesError)) {
		return http.StatusRequestEntityTooLarge, "body_too_large"
	}
	return http.StatusInternalServerError, CodeInternal
}
