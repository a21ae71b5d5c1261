package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
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
	extra   []string // those of --allow-hosts
}

func newHostPolicy(server *url.URL, extra []string) hostPolicy {
	p := hostPolicy{allowed: []string{strings.ToLower(server.Host)}, extra: extra}
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

// oneLine folds multi-line text so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// lockedWriter serialises writes from the workers and the progress
// printer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
