package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"

	"github.com/patchfleet/ota/client"
)

// Describe is err as the agent logs and reports it: the text of a
// network error names addresses ("dial tcp 192.0.2.7:443: connection
// refused"), which neither the device's log nor the server may keep, so
// such an error becomes its classified cause ("network: connection
// refused"). Other errors keep their text.
func Describe(err error) string {
	if err == nil {
		return ""
	}
	var f *failure
	if errors.As(err, &f) {
		return f.code + ": " + Describe(f.err)
	}
	if ce := client.AsError(err); ce != nil {
		return ce.Error() // method, path, status and the server's message: no address
	}
	var (
		ue  *url.Error
		oe  *net.OpError
		de  *net.DNSError
		ne  net.Error
		cve *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "network: timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "network: connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "network: connection reset"
	case errors.As(err, &de):
		return "network: name lookup failed"
	case errors.As(err, &cve):
		return "network: TLS certificate not trusted"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "network: connection closed early"
	case errors.As(err, &oe), errors.As(err, &ue):
		return "network: connection failed"
	}
	return err.Error()
}
