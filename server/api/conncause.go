package api

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
)

// Causes of a failed client connection, as the log names them. The text of
// a network error names both ends of the connection ("write tcp
// 10.0.0.5:8080->203.0.113.7:51234: write: connection reset by peer"); the
// server keeps no client addresses, so it logs one of these instead, and
// never such a text, at any level.
const (
	CauseClientReset      = "client_reset"      // the client (or a middlebox) sent an RST
	CauseClientClosed     = "client_closed"     // the connection ended (EOF, broken pipe)
	CauseStallTimeout     = "stall_timeout"     // a download's client took nothing for the stall timeout
	CauseWriteTimeout     = "write_timeout"     // the server's write deadline passed
	CauseReadTimeout      = "read_timeout"      // the server's read deadline passed
	CauseTLSHandshake     = "tls_handshake"     // the TLS handshake failed
	CauseMalformedRequest = "malformed_request" // the request broke HTTP's framing (a bad chunked body)
	CauseCanceled         = "canceled"          // the request's context ended (the client went away)
	CauseOtherNetwork     = "other_network"     // any other failure of the connection
)

// ConnCause classifies err, an error of the client connection (reading the
// request, writing the answer), as one of the Cause constants. Only the
// cause may be logged: err's text can carry the client's address.
func ConnCause(err error) string {
	var (
		ne  net.Error
		oe  *net.OpError
		rhe tls.RecordHeaderError
		ae  tls.AlertError
		cve *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return CauseClientReset
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return CauseClientClosed
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		if errors.As(err, &oe) {
			switch oe.Op {
			case "read":
				return CauseReadTimeout
			case "write":
				return CauseWriteTimeout
			}
		}
		return CauseOtherNetwork
	case errors.As(err, &rhe), errors.As(err, &ae), errors.As(err, &cve):
		return CauseTLSHandshake
	case errors.Is(err, context.Canceled):
		return CauseCanceled
	}
	return CauseOtherNetwork
}

// clientConnError is a failure of the client connection, as the request
// body's reader returns it. Its text is the cause alone, so that wherever
// it ends (wrapped in a store's error, logged by the error handler) it
// carries no address; Unwrap keeps the original for errors.Is and As.
type clientConnError struct {
	cause string
	err   error
}

func (e *clientConnError) Error() string { return "client connection failed: " + e.cause }
func (e *clientConnError) Unwrap() error { return e.err }

// connCause is the cause of err if it holds a failure of the client
// connection, else "".
func connCause(err error) string {
	if ce := new(clientConnError); errors.As(err, &ce) {
		return ce.cause
	}
	return ""
}

// connBody is a request body whose read errors are clientConnErrors,
// except io.EOF (the end of the body) and the body limit's
// http.MaxBytesError, which handlers look for.
type connBody struct{ io.ReadCloser }

func (b connBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == nil || err == io.EOF {
		return n, err
	}
	if mbe := new(http.MaxBytesError); errors.As(err, &mbe) {
		return n, err
	}
	var (
		ne    net.Error
		errno syscall.Errno
	)
	cause := ConnCause(err)
	if cause == CauseOtherNetwork && !errors.As(err, &ne) && !errors.As(err, &errno) {
		// Not the network's: net/http's own complaints about the body's
		// framing ("malformed chunked encoding").
		cause = CauseMalformedRequest
	}
	return n, &clientConnError{cause: cause, err: err}
}
