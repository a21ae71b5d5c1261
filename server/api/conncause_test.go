package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/labstack/echo/v4"
)

// opError is a network error as the kernel's answer on a client
// connection makes it: its text names both ends.
func opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp",
		Source: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 8080},
		Addr:   &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 51234},
		Err:    err}
}

func TestConnCause(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"reset on read", opError("read", os.NewSyscallError("read", syscall.ECONNRESET)), CauseClientReset},
		{"reset on write", opError("write", os.NewSyscallError("write", syscall.ECONNRESET)), CauseClientReset},
		{"broken pipe", opError("write", os.NewSyscallError("write", syscall.EPIPE)), CauseClientClosed},
		{"body cut short", io.ErrUnexpectedEOF, CauseClientClosed},
		{"read deadline", opError("read", os.ErrDeadlineExceeded), CauseReadTimeout},
		{"write deadline", opError("write", os.ErrDeadlineExceeded), CauseWriteTimeout},
		{"tls alert", fmt.Errorf("handshake: %w", tls.AlertError(42)), CauseTLSHandshake},
		{"not tls", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, CauseTLSHandshake},
		{"canceled", fmt.Errorf("copy: %w", context.Canceled), CauseCanceled},
		{"refused", opError("read", os.NewSyscallError("read", syscall.EHOSTUNREACH)), CauseOtherNetwork},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ConnCause(tc.err); got != tc.want {
				t.Errorf("ConnCause(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

// TestBodyReadFailuresLogNoAddress: a request body whose connection fails
// while a handler reads it, be it a JSON call or an upload that wraps the
// error as a store's, is answered as the client's failure (499; 400 for a
// malformed body), not as an internal error, and the log names the cause,
// never the network error's text with the client's address. Before, an
// upload cut by an RST was a 500 logged at error level with "read tcp
// 10.0.0.5:8080->203.0.113.7:51234: read: connection reset by peer".
func TestBodyReadFailuresLogNoAddress(t *testing.T) {
	s, logs := newTestServer(t, Config{})
	s.Echo().PUT("/upload", func(c echo.Context) error {
		if _, err := io.Copy(io.Discard, c.Request().Body); err != nil {
			return fmt.Errorf("store artifact: %w", err)
		}
		return c.NoContent(http.StatusNoContent)
	})
	s.Echo().POST("/json", func(c echo.Context) error {
		var v struct {
			A string `json:"a"`
		}
		if err := decodeJSON(c, &v); err != nil {
			return err
		}
		return c.NoContent(http.StatusNoContent)
	})
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCause  string
	}{
		{"reset", opError("read", os.NewSyscallError("read", syscall.ECONNRESET)), 499, CauseClientReset},
		{"read timeout", opError("read", os.ErrDeadlineExceeded), 499, CauseReadTimeout},
		{"cut short", io.ErrUnexpectedEOF, 499, CauseClientClosed},
		{"bad chunked framing", errors.New("malformed chunked encoding"), http.StatusBadRequest, CauseMalformedRequest},
	}
	for _, route := range []string{"/upload", "/json"} {
		for _, tc := range tests {
			t.Run(route+" "+tc.name, func(t *testing.T) {
				logs.Reset()
				method := http.MethodPut
				if route == "/json" {
					method = http.MethodPost
				}
				body := io.MultiReader(strings.NewReader(`{"a":"`), iotest.ErrReader(tc.err))
				rec := do(t, s, method, route, body, offContract, func(r *http.Request) {
					r.Header.Set("Content-Type", "application/json")
				})
				if rec.Code != tc.wantStatus {
					t.Errorf("got status %d, want %d", rec.Code, tc.wantStatus)
				}
				if strings.Contains(rec.Body.String(), "203.0.113.7") {
					t.Errorf("the answer names the client: %s", rec.Body)
				}
				got := logs.String()
				if !strings.Contains(got, `"cause":"`+tc.wantCause+`"`) {
					t.Errorf("the log lacks cause %s:\n%s", tc.wantCause, got)
				}
				for _, bad := range []string{"203.0.113.7", "192.0.2.77", `"level":"ERROR"`} {
					if strings.Contains(got, bad) {
						t.Errorf("the log holds %q:\n%s", bad, got)
					}
				}
				if port := regexp.MustCompile(`(^|[^0-9A-Za-z])51234([^0-9A-Za-z]|$)`); port.MatchString(got) {
					t.Errorf("the log holds the client's port:\n%s", got)
				}
			})
		}
	}
}
