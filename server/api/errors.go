package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/httperr"
)

// statusClientClosed is logged and counted for requests the client
// abandoned.
const statusClientClosed = 499

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
func errorResponse(err error) (int, wire.ErrorBody, bool) {
	if fe := new(errs.FieldError); errors.As(err, &fe) {
		return http.StatusBadRequest, wire.ErrorBody{Error: wire.ErrorDetail{Code: "invalid", Message: fe.Error(), Field: fe.Field}}, false
	}
	if cause := connCause(err); cause != "" {
		if cause == CauseMalformedRequest {
			return http.StatusBadRequest, wire.ErrorBody{Error: wire.ErrorDetail{Code: "invalid", Message: "malformed request body"}}, false
		}
		// Reading the body failed on the client's side: no server error,
		// and most likely nobody left to read the answer.
		return statusClientClosed, wire.ErrorBody{Error: wire.ErrorDetail{Code: "canceled", Message: "the request's connection failed: " + cause}}, false
	}
	if errors.Is(err, context.Canceled) {
		// The client went away; nobody reads this answer, and it is no
		// server error. 499 is nginx's "client closed request".
		return statusClientClosed, wire.ErrorBody{Error: wire.ErrorDetail{Code: "canceled", Message: "request canceled by the client"}}, false
	}
	switch status, code := httperr.Classify(err); code {
	case httperr.CodeInternal:
		// Echo's own errors below, or a server error.
	case httperr.CodeNotAudited:
		// Still a server error (logged), but one that says the action was
		// done, without the store's words.
		return status, wire.ErrorBody{Error: wire.ErrorDetail{Code: code,
			Message: errs.ErrNotAudited.Error() + "; do not repeat the request, tell an administrator"}}, true
	default:
		msg := err.Error()
		if rle := new(errs.RateLimitError); status == http.StatusTooManyRequests && errors.As(err, &rle) {
			msg = rle.Error()
		}
		if mbe := new(http.MaxBytesError); status == http.StatusRequestEntityTooLarge && errors.As(err, &mbe) {
			msg = "request body larger than the limit of " + strconv.FormatInt(mbe.Limit, 10) + " bytes"
		}
		return status, wire.ErrorBody{Error: wire.ErrorDetail{Code: code, Message: msg}}, false
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
		return he.Code, wire.ErrorBody{Error: wire.ErrorDetail{Code: code, Message: msg}}, false
	}
	return http.StatusInternalServerError, wire.ErrorBody{Error: wire.ErrorDetail{Code: "internal", Message: "internal error"}}, true
}

// handleError is Echo's HTTPErrorHandler: the one place errors become
// responses.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, body, internal := errorResponse(err)
	if rle := new(errs.RateLimitError); errors.As(err, &rle) {
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
