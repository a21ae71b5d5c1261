package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
)

// ErrorBody is the JSON shape of every error response:
// {"error": {"code": "...", "message": "..."}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody. Code is stable and meant for
// programs; Message is for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the request field at fault, for validation errors.
	Field string `json:"field,omitempty"`
}

// statusClientClosed is logged and counted for requests the client
// abandoned.
const statusClientClosed = 499

// codes maps the domain sentinels to a status and a JSON code. It is the
// only such table: handlers return errors, never write error responses.
var codes = []struct {
	err    error
	status int
	code   string
}{
	// The TUF workflow's refusals, each with its own code so that otactl
	// (and people) can tell them apart.
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

	{server.ErrInvalid, http.StatusBadRequest, "invalid"},
	{server.ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{server.ErrForbidden, http.StatusForbidden, "forbidden"},
	{server.ErrNotFound, http.StatusNotFound, "not_found"},
	{server.ErrConflict, http.StatusConflict, "conflict"},
	{server.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// httpCodes names Echo's own errors (routing, method, body limit).
var httpCodes = map[int]string{
	http.StatusBadRequest:                   "invalid",
	http.StatusUnauthorized:                 "unauthorized",
	http.StatusForbidden:                    "forbidden",
	http.StatusNotFound:                     "not_found",
	http.StatusMethodNotAllowed:             "method_not_allowed",
	http.StatusRequestEntityTooLarge:        "body_too_large",
	http.StatusPreconditionFailed:           "precondition_failed",
	http.StatusUnsupportedMediaType:         "unsupported_media_type",
	http.StatusTooManyRequests:              "rate_limited",
	http.StatusRequestedRangeNotSatisfiable: "range_not_satisfiable",
	http.StatusServiceUnavailable:           "unavailable",
}

// errorResponse turns err into a status and body. Internal errors get a
// generic message: their details may name hosts, files or queries, and go
// to the log instead.
func errorResponse(err error) (int, ErrorBody, bool) {
	if fe := new(server.FieldError); errors.As(err, &fe) {
		return http.StatusBadRequest, ErrorBody{ErrorDetail{"invalid", fe.Error(), fe.Field}}, false
	}
	if cause := connCause(err); cause != "" {
		if cause == CauseMalformedRequest {
			return http.StatusBadRequest, ErrorBody{ErrorDetail{Code: "invalid", Message: "malformed request body"}}, false
		}
		// Reading the body failed on the client's side: no server error,
		// and most likely nobody left to read the answer.
		return statusClientClosed, ErrorBody{ErrorDetail{Code: "canceled", Message: "the request's connection failed: " + cause}}, false
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads this answer, and it is no
		// server error. 499 is nginx's "client closed request".
		return statusClientClosed, ErrorBody{ErrorDetail{Code: "canceled", Message: "request canceled by the client"}}, false
	}
	if errors.Is(err, server.ErrNotAudited) {
		// Still a server error (logged), but one that says the action was
		// done, without the store's words.
		return http.StatusInternalServerError, ErrorBody{ErrorDetail{Code: "not_audited",
			Message: server.ErrNotAudited.Error() + "; do not repeat the request, tell an administrator"}}, true
	}
	if rle := new(server.RateLimitError); errors.As(err, &rle) {
		return http.StatusTooManyRequests, ErrorBody{ErrorDetail{Code: "rate_limited", Message: rle.Error()}}, false
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.status, ErrorBody{ErrorDetail{Code: c.code, Message: err.Error()}}, false
		}
	}
	if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge, ErrorBody{ErrorDetail{Code: "body_too_large",
			Message: "request body larger than the limit of " + strconv.FormatInt(mbe.Limit, 10) + " bytes"}}, false
	}
	if he := new(echo.HTTPError); errors.As(err, &he) && he.Code < 500 {
		code, ok := httpCodes[he.Code]
		if !ok {
			code = "error"
		}
		msg := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok && m != "" {
			msg = m
		}
		return he.Code, ErrorBody{ErrorDetail{Code: code, Message: msg}}, false
	}
	return http.StatusInternalServerError, ErrorBody{ErrorDetail{Code: "internal", Message: "internal error"}}, true
}

// handleError is Echo's HTTPErrorHandler: the one place errors become
// responses.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, body, internal := errorResponse(err)
	if rle := new(server.RateLimitError); errors.As(err, &rle) {
		c.Response().Header().Set("Retry-After", strconv.Itoa(max(1, int(rle.RetryAfter.Seconds()+0.999))))
	}
	if internal {
		s.log.ErrorContext(c.Request().Context(), "request failed",
			slog.String("request_id", requestID(c)),
			slog.String("route", c.Path()),
			slog.Any("error", err))
	}
	if c.Request().Method == http.MethodHead {
		err = c.NoContent(status)
	} else {
		err = c.JSON(status, body)
	}
	if err != nil {
		// Writing fails on the connection: its error names the client.
		s.log.DebugContext(c.Request().Context(), "writing error response", slog.String("cause", ConnCause(err)))
	}
}
