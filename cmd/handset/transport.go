package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/client"
)

// userAgent names the simulator in the server's logs.
const userAgent = "patchfleet-handset/1"

// newTransport is the one Transport of the process: enough idle
// connections for every worker to keep its own, so a load test measures
// the server and not TCP handshakes.
func newTransport(concurrency int) *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // only the server is contacted, never a proxy from the environment
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          concurrency + 16,
		MaxIdleConnsPerHost:   concurrency + 16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: 0, // set per client through http.Client.Timeout and contexts
	}
}

// hostPolicy says which hosts may be contacted: the server's, and those
// of --allow-hosts.
type hostPolicy struct {
	allowed []string // host[:port], lowercase
}

func newHostPolicy(server *url.URL, extra []string) hostPolicy {
	p := hostPolicy{allowed: []string{strings.ToLower(server.Host)}}
	for _, h := range extra {
		p.allowed = append(p.allowed, strings.ToLower(h))
	}
	return p
}

func (p hostPolicy) allows(u *url.URL) bool {
	if u.Scheme != "http" && u.Scheme != "https" {
		return false
	}
	host := strings.ToLower(u.Host)
	return slices.Contains(p.allowed, host) || slices.Contains(p.allowed, strings.ToLower(u.Hostname()))
}

// checkRedirect refuses redirects to hosts outside the policy, so that no
// answer can steer the simulator elsewhere.
func (p hostPolicy) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("stopped after 5 redirects")
	}
	if !p.allows(req.URL) {
		return fmt.Errorf("redirect to %s refused: not the server (see --allow-hosts)", req.URL.Host)
	}
	return nil
}

// errorKind sorts an error into the few kinds the summary counts.
func errorKind(err error) string {
	var ba *client.BadAnswerError
	var ne net.Error
	switch ce := client.AsError(err); {
	case ce != nil:
		if ce.Status == http.StatusTooManyRequests {
			return "rate_limited"
		}
		return "http_" + strconv.Itoa(ce.Status)
	case errors.As(err, &ba):
		return "bad_answer"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	default:
		return "network"
	}
}

// transient reports whether a retry may succeed: network errors,
// timeouts, 5xx, 429 and 408 (client.Temporary). Other 4xx answers will
// not change.
func transient(err error) bool { return client.Temporary(err) }

func unauthorized(err error) bool {
	ce := client.AsError(err)
	return ce != nil && ce.Status == http.StatusUnauthorized
}

// retryAfter returns the wait the server asked for, if it did.
func retryAfter(err error) (time.Duration, bool) { return client.RetryAfter(err) }

// oneLine folds multi-line text so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
