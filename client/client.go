// Package client calls an otad server's HTTP API, both halves of it:
// the admin API that otactl, the demo and the tests use, and the handset
// API that a handset's update agent uses. It speaks the API's own types
// (server/api/wire) and turns every error answer into an *Error carrying
// the server's code and message.
//
// A Client is safe for concurrent use. WithToken returns a copy that
// sends another bearer token over the same connections, so that one
// process can act as many handsets.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/api/wire"
)

// MaxAnswer bounds the JSON answer a call reads into memory.
const MaxAnswer = 64 << 20

// MaxRetryAfter caps the wait a server may ask for in Retry-After.
const MaxRetryAfter = 10 * time.Minute

// Client calls one server. The zero value is not usable; call New.
type Client struct {
	base      string // scheme://host[:port][/path], no trailing slash
	token     string
	hc        *http.Client
	userAgent string
	now       func() time.Time
	header    http.Header // extra headers of every request (WithHeader)
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends requests through hc instead of a client of the
// package's own (which has no timeout: calls are bounded by their
// context).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithUserAgent names the caller in the server's logs.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// WithBearer sets the token every request carries.
func WithBearer(token string) Option { return func(c *Client) { c.token = token } }

// WithClock gives the client its time, used to read Retry-After dates.
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// New returns a client of the server at base, an http:// or https:// URL.
func New(base string, opts ...Option) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q: want an http:// or https:// URL such as http://127.0.0.1:8080", base)
	}
	c := &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{}, userAgent: "patchfleet-client/1", now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// WithToken returns a copy of c that sends token, sharing c's
// connections.
func (c *Client) WithToken(token string) *Client {
	cp := *c
	cp.token = token
	return &cp
}

// WithHeader returns a copy of c that sends the header name: value on
// every request, sharing c's connections; WithReason is the one the API
// defines.
func (c *Client) WithHeader(name, value string) *Client {
	cp := *c
	cp.header = c.header.Clone()
	if cp.header == nil {
		cp.header = http.Header{}
	}
	cp.header.Set(name, value)
	return &cp
}

// BaseURL is the server's URL, without a trailing slash.
func (c *Client) BaseURL() string { return c.base }

// Token is the bearer token c sends, "" for none.
func (c *Client) Token() string { return c.token }

// HTTPClient is the http.Client c sends through.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// Error is an error answer of the server: its status, and the code and
// message of its JSON error body (wire.ErrorBody).
type Error struct {
	Status  int
	Code    string // stable, for programs: "invalid", "not_found", "rate_limited"...
	Message string // for people
	// Field names the request field a 400 is about.
	Field     string
	RequestID string
	// RetryAfter is the wait the server asked for, -1 when it did not.
	RetryAfter time.Duration
	// Method and Path say which call failed.
	Method, Path string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s %s: HTTP %d", e.Method, e.Path, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Field != "" {
		msg += " (field " + e.Field + ")"
	}
	return msg
}

// Temporary reports whether the same call may succeed later: 5xx, 429
// and 408. Other 4xx answers will not change by retrying.
func (e *Error) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// AsError returns the *Error in err's chain, or nil.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// HasCode reports whether err is an error answer with code.
func HasCode(err error, code string) bool {
	e := AsError(err)
	return e != nil && e.Code == code
}

// BadAnswerError is a 2xx answer that is not what the API promises: not
// JSON, or too large. It is not the server's error code; most likely the
// URL names something that is not otad.
type BadAnswerError struct {
	Method, Path string
	Err          error
}

func (e *BadAnswerError) Error() string {
	return fmt.Sprintf("the answer of %s %s is not the JSON otad sends (is the URL otad's?): %v", e.Method, e.Path, e.Err)
}
func (e *BadAnswerError) Unwrap() error { return e.Err }

// Temporary reports whether retrying err may help: network failures,
// timeouts and temporary answers, not refusals or malformed answers, and
// not a canceled context.
func Temporary(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if e := AsError(err); e != nil {
		return e.Temporary()
	}
	var ba *BadAnswerError
	return !errors.As(err, &ba)
}

// RetryAfter returns the wait an error answer asked for, if it did.
func RetryAfter(err error) (time.Duration, bool) {
	if e := AsError(err); e != nil && e.RetryAfter >= 0 {
		return e.RetryAfter, true
	}
	return 0, false
}

// NewRequest builds a request to path (under the base URL) with c's
// headers; the package's calls all go through it, and callers can use
// it for what the package does not wrap.
func (c *Client) NewRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	for name, vs := range c.header {
		req.Header[name] = append([]string(nil), vs...)
	}
	req.Header.Set("Accept", "application/json")
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// doJSON sends in (if not nil) as JSON to path and decodes a 2xx answer
// into out (if not nil). It returns the answer's status.
func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := c.NewRequest(ctx, method, path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.Send(req, out)
}

// Send sends req and decodes a 2xx JSON answer into out (if not nil);
// any other answer becomes an *Error. It returns the answer's status.
func (c *Client) Send(req *http.Request, out any) (int, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() {
		// Drain a little so that the connection goes back to the pool.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return 0, fmt.Errorf("reading the answer of %s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, c.errorFrom(req, resp, data)
	}
	if len(data) > MaxAnswer {
		return 0, &BadAnswerError{req.Method, req.URL.Path, fmt.Errorf("larger than %d bytes", MaxAnswer)}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, &BadAnswerError{req.Method, req.URL.Path, err}
		}
	}
	return resp.StatusCode, nil
}

func (c *Client) errorFrom(req *http.Request, resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id"),
		RetryAfter: ParseRetryAfter(resp.Header.Get("Retry-After"), c.now()), Method: req.Method, Path: req.URL.Path}
	var eb wire.ErrorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
		e.Code, e.Message, e.Field = eb.Error.Code, oneLine(eb.Error.Message), eb.Error.Field
		return e
	}
	// Not the API's error body: a proxy's page, or not otad at all.
	snippet := strings.TrimSpace(string(data))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	e.Message = oneLine(snippet)
	return e
}

// oneLine keeps a server's message on one line of a log or terminal.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// ParseRetryAfter reads a Retry-After header, seconds or an HTTP date,
// capped at MaxRetryAfter. It returns -1 when the header is absent or
// unreadable.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return -1
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return -1
		}
		return time.Duration(min(n, int64(MaxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), MaxRetryAfter)
	}
	return -1
}

// EscapePath escapes a slash path for a URL the way Go's server decodes
// it back without a RawPath, so that the server sees the path unchanged.
func EscapePath(p string) string {
	return (&url.URL{Path: p}).EscapedPath()
}
