// Package httperrtest holds the errors, with the status and code each
// must get, that the API's tests (server/api) and the pages' tests (web)
// both run through their error answers: one list, so that a front end
// that classifies an error its own way fails its test.
package httperrtest

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/errs"
)

// Case is an error as a handler returns it (wrapped, as the stores wrap
// theirs) and the status and code it must be answered with.
type Case struct {
	Name   string
	Err    error
	Status int
	Code   string
}

// Cases are the errors of each kind the domain returns: server and
// manifests sentinels, the error types, and an unknown error.
func Cases() []Case {
	return []Case{
		{"manifests not exist", fmt.Errorf("draft d-9: %w", manifests.ErrNotExist), http.StatusNotFound, "not_found"},
		{"manifests draft pending", fmt.Errorf("new draft: %w", manifests.ErrDraftPending), http.StatusConflict, "draft_pending"},
		{"manifests stale draft", fmt.Errorf("sign: %w", manifests.ErrStaleDraft), http.StatusConflict, "stale_draft"},
		{"manifests not initialized", manifests.ErrNotInitialized, http.StatusConflict, "not_initialized"},
		{"manifests unknown key", fmt.Errorf("sign: %w", manifests.ErrUnknownKey), http.StatusUnprocessableEntity, "unknown_key"},
		{"manifests key not authorized", manifests.ErrKeyNotAuthorized, http.StatusForbidden, "key_not_authorized"},
		{"manifests invalid", fmt.Errorf("target: %w", manifests.ErrInvalid), http.StatusBadRequest, "invalid"},
		{"server invalid", fmt.Errorf("%w: stages must rise", errs.ErrInvalid), http.StatusBadRequest, "invalid"},
		{"field error", &errs.FieldError{Field: "stages", Message: "want a percent"}, http.StatusBadRequest, "invalid"},
		{"server forbidden", errs.ErrForbidden, http.StatusForbidden, "forbidden"},
		{"server not found", fmt.Errorf("rollout ro-9: %w", errs.ErrNotFound), http.StatusNotFound, "not_found"},
		{"server conflict", fmt.Errorf("rollout ro-1: %w", errs.ErrConflict), http.StatusConflict, "conflict"},
		{"server unavailable", errs.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
		{"rate limited", &errs.RateLimitError{RetryAfter: time.Minute}, http.StatusTooManyRequests, "rate_limited"},
		{"not audited", fmt.Errorf("%w: %w", errs.ErrNotAudited, errors.New("disk full")), http.StatusInternalServerError, "not_audited"},
		{"unknown", errors.New("pq: connection refused"), http.StatusInternalServerError, "internal"},
	}
}
