package errs

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors that domain code wraps with context
// (fmt.Errorf("%w: ...", errs.ErrInvalid)). The HTTP layer maps each to
// one status code and one JSON error code; anything else is an internal
// error whose details go only to the log.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrUnavailable  = errors.New("unavailable")
)

// ErrDeviceToken is the one answer to a device token that is malformed,
// unknown, replaced by a re-enrollment or erased: the client learns
// nothing from the difference. It is an ErrUnauthorized; device stores
// return it for a token they do not hold.
var ErrDeviceToken = fmt.Errorf("%w: invalid device token", ErrUnauthorized)

// IsNotFound reports whether err is an ErrNotFound.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// FieldError is a validation error that names the request field at fault.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Is makes a FieldError an ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Fieldf is a *FieldError for field, its message formatted as by
// fmt.Sprintf.
func Fieldf(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// RateLimitError is returned when a token exceeds its rate; RetryAfter
// says when to try again.
type RateLimitError struct{ RetryAfter time.Duration }

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("too many requests; retry after %s", e.RetryAfter.Round(time.Second))
}

// ErrNotAudited is the error of an administrative action that was done
// but whose audit entry could not be appended. Callers answer with it
// (the admin API and the pages with a 500, the otad commands with a
// non-zero exit) instead of reporting success: whoever acted must learn
// that the log lacks it.
var ErrNotAudited = errors.New("the change was made but its audit entry was not written")
