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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// userAgent names the simulator in the server's logs.
const userAgent = "patchfleet-handset/1"

// maxAnswer bounds every API answer read into memory.
const maxAnswer = 1 << 20

// apiClient talks to the handset API of one server. It is shared by every
// simulated handset: one http.Client over one Transport.
type apiClient struct {
	base    string // server URL, no trailing slash
	hc      *http.Client
	timeout time.Duration
}

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

// apiError is a non-2xx answer of the API.
type apiError struct {
	Status     int
	Code       string
	Message    string
	Field      string
	RetryAfter time.Duration // from Retry-After; -1 when absent
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("HTTP %d", e.Status)
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

// badAnswerError is a 2xx answer that is not what the contract says.
type badAnswerError struct{ err error }

func (e *badAnswerError) Error() string { return "malformed answer: " + e.err.Error() }
func (e *badAnswerError) Unwrap() error { return e.err }

// errorKind sorts an error into the few kinds the summary counts.
func errorKind(err error) string {
	var ae *apiError
	var ba *badAnswerError
	var ne net.Error
	switch {
	case errors.As(err, &ae):
		if ae.Status == http.StatusTooManyRequests {
			return "rate_limited"
		}
		return "http_" + strconv.Itoa(ae.Status)
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
// timeouts, 5xx and 429. Other 4xx answers will not change.
func transient(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusRequestTimeout
	}
	var ba *badAnswerError
	return !errors.As(err, &ba) && !errors.Is(err, context.Canceled)
}

func unauthorized(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Status == http.StatusUnauthorized
}

// retryAfter returns the wait the server asked for, if it did.
func retryAfter(err error) (time.Duration, bool) {
	var ae *apiError
	if errors.As(err, &ae) && ae.RetryAfter >= 0 {
		return ae.RetryAfter, true
	}
	return 0, false
}

// maxRetryAfter caps what a server may ask a handset to wait.
const maxRetryAfter = 10 * time.Minute

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date.
// It returns -1 when the header is absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return -1
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return -1
		}
		return min(time.Duration(min(n, int64(maxRetryAfter/time.Second)))*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter)
	}
	return -1
}

// do sends one request with a JSON body and decodes a 2xx JSON answer
// into out. It returns the status for 2xx answers and an *apiError for
// the others.
func (c *apiClient) do(ctx context.Context, method, path, token string, body, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() {
		// Drain a little so the connection goes back to the pool.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
		var eb struct {
			Error struct{ Code, Message, Field string } `json:"error"`
		}
		if json.Unmarshal(data, &eb) == nil {
			e.Code, e.Message, e.Field = eb.Error.Code, oneLine(eb.Error.Message), eb.Error.Field
		}
		return resp.StatusCode, e
	}
	if len(data) > maxAnswer {
		return 0, &badAnswerError{fmt.Errorf("%s %s: answer larger than %d bytes", method, path, maxAnswer)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, &badAnswerError{fmt.Errorf("%s %s: %w", method, path, err)}
		}
	}
	return resp.StatusCode, nil
}

// enrollBody is the body of POST /api/v1/devices.
type enrollBody struct {
	Model            string `json:"model"`
	Build            string `json:"build"`
	Channel          string `json:"channel"`
	Region           string `json:"region,omitempty"`
	EnrollmentSecret string `json:"enrollment_secret,omitempty"`
	DeviceKey        string `json:"device_key,omitempty"`
	Signature        string `json:"signature,omitempty"`
	Timestamp        string `json:"timestamp,omitempty"`
}

type enrollAnswer struct {
	DeviceID         string  `json:"device_id"`
	Token            string  `json:"token"`
	PollAfterSeconds float64 `json:"poll_after_seconds"`
}

// enroll returns the answer and whether the device is new (201) rather
// than re-enrolled (200).
func (c *apiClient) enroll(ctx context.Context, b enrollBody) (*enrollAnswer, bool, error) {
	var a enrollAnswer
	status, err := c.do(ctx, http.MethodPost, "/api/v1/devices", "", b, &a)
	if err != nil {
		return nil, false, err
	}
	if a.DeviceID == "" || a.Token == "" {
		return nil, false, &badAnswerError{errors.New("enrollment answer without device_id or token")}
	}
	return &a, status == http.StatusCreated, nil
}

// checkInBody is the body of POST /api/v1/checkin.
type checkInBody struct {
	Build            string   `json:"build"`
	Model            string   `json:"model"`
	Channel          string   `json:"channel"`
	InstalledPatches []string `json:"installed_patches"`
	CloudMessaging   string   `json:"cloud_messaging"`
	NumberEncryption bool     `json:"number_encryption"`
	UTCOffsetMinutes *int     `json:"utc_offset_minutes,omitempty"`
}

type checkInAnswer struct {
	PollAfterSeconds float64      `json:"poll_after_seconds"`
	Offer            *offerAnswer `json:"offer"`
	// NoOffer says why nothing was offered (not_selected: no rollout
	// offers this handset anything; not_in_cohort, ...).
	NoOffer string `json:"no_offer"`
}

// offerAnswer is an offered update. Custom is what the server says the
// target's custom metadata is; the handset acts only on the copy inside
// the TUF-signed targets metadata.
type offerAnswer struct {
	Target      string          `json:"target"`
	Length      int64           `json:"length"`
	SHA256      string          `json:"sha256"`
	PatchID     string          `json:"patch_id"`
	RolloutID   string          `json:"rollout_id"`
	MetadataURL string          `json:"metadata_url"`
	TargetsURL  string          `json:"targets_url"`
	Custom      json.RawMessage `json:"custom"`
}

func (c *apiClient) checkIn(ctx context.Context, token string, b *checkInBody) (*checkInAnswer, error) {
	var a checkInAnswer
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/checkin", token, b, &a); err != nil {
		return nil, err
	}
	if a.PollAfterSeconds < 0 {
		return nil, &badAnswerError{fmt.Errorf("negative poll_after_seconds %v", a.PollAfterSeconds)}
	}
	return &a, nil
}

// reportBody is the body of POST /api/v1/reports.
type reportBody struct {
	ReportID  string `json:"report_id"`
	PatchID   string `json:"patch_id"`
	RolloutID string `json:"rollout_id,omitempty"`
	Target    string `json:"target,omitempty"`
	State     string `json:"state"`
	ErrorCode string `json:"error_code,omitempty"`
	Message   string `json:"message,omitempty"`
	At        string `json:"at"`
}

// report sends a report; duplicate is true when the server already had
// it (a retry after a lost answer). Either way it is durable.
func (c *apiClient) report(ctx context.Context, token string, b *reportBody) (duplicate bool, err error) {
	var a struct {
		Duplicate bool `json:"duplicate"`
	}
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/reports", token, b, &a); err != nil {
		return false, err
	}
	return a.Duplicate, nil
}

func (c *apiClient) erase(ctx context.Context, token string) error {
	_, err := c.do(ctx, http.MethodDelete, "/api/v1/devices/self", token, nil, nil)
	return err
}

// fetchRoot downloads root v1 for trust on first use.
func (c *apiClient) fetchRoot(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := c.base + "/tuf/1.root.json"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d (has the root ceremony run?)", u, resp.StatusCode)
	}
	const maxRoot = 512 << 10
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxRoot+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if len(data) > maxRoot {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u, maxRoot)
	}
	return data, nil
}

// oneLine folds multi-line text so that every error is one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
