package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/api/wire"
)

// demoUserAgent names the demo's requests in the server's logs.
const demoUserAgent = "otad-demo/1"

// demoClient is the demo's one HTTP client to its own server over
// loopback: the simulated handsets, the release engineers and the
// go-tuf updaters all go through it, as real clients would.
type demoClient struct {
	base string // http://127.0.0.1:PORT, no trailing slash
	hc   *http.Client
}

// newDemoClient shares one Transport among the workers, with an idle
// connection for each, so that the fleet costs no TCP handshakes.
func newDemoClient(base string, workers int) *demoClient {
	tr := &http.Transport{
		Proxy:               nil, // loopback only, never a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        workers + 8,
		MaxIdleConnsPerHost: workers + 8,
		IdleConnTimeout:     30 * time.Second,
	}
	return &demoClient{base: strings.TrimSuffix(base, "/"), hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// close drops the idle connections, so that no transport goroutine
// outlives the demo.
func (c *demoClient) close() { c.hc.CloseIdleConnections() }

// demoAPIError is a non-2xx answer.
type demoAPIError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration // 0 when absent
}

func (e *demoAPIError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// demoTransient reports whether a retry may succeed: the network, 5xx
// and 429.
func demoTransient(err error) bool {
	var ae *demoAPIError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	}
	return !errors.Is(err, context.Canceled)
}

func demoUnauthorized(err error) bool {
	var ae *demoAPIError
	return errors.As(err, &ae) && ae.Status == http.StatusUnauthorized
}

// demoErrorKind names an error for the counters: http_429, network, ...
func demoErrorKind(err error) string {
	var ae *demoAPIError
	if errors.As(err, &ae) {
		return "http_" + strconv.Itoa(ae.Status)
	}
	return "network"
}

// do sends a JSON request of the handset API (body nil: none) and
// decodes a 2xx JSON answer into out. The release team's admin calls go
// through package client instead; the simulated handsets keep this
// until the simulator moves onto client too.
func (c *demoClient) do(ctx context.Context, method, path, token string, body any, out any) error {
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", demoUserAgent)
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		e := &demoAPIError{Status: resp.StatusCode}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			e.RetryAfter = time.Duration(min(s, 600)) * time.Second
		}
		var eb wire.ErrorBody
		if json.Unmarshal(data, &eb) == nil {
			e.Code, e.Message = eb.Error.Code, eb.Error.Message
		}
		return e
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

// get fetches path and returns its body (a TUF root).
func (c *demoClient) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}
