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
	"strings"
	"time"

	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
)

// apiTimeout bounds one admin API call (not uploads). Adding the last
// signature publishes, which writes several files to storage.
const apiTimeout = 2 * time.Minute

// maxResponse bounds what otactl reads of an API answer.
const maxResponse = 64 << 20

// client calls otad's admin API.
type client struct {
	base  string // no trailing slash
	token string
	hc    *http.Client
}

// client returns an admin API client from --server/--token or the
// environment, or an error that says what to set.
func (c *cli) client(sf serverFlags) (*client, error) {
	server := sf.server
	if server == "" {
		server = c.getenv(envServer)
	}
	token := sf.token
	if token == "" {
		token = c.getenv(envToken)
	}
	if server == "" {
		return nil, usageError{fmt.Errorf("no server: set %s or --server to otad's URL, e.g. http://127.0.0.1:8080", envServer)}
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError{fmt.Errorf("server %q: want an http:// or https:// URL (set %s or --server)", server, envServer)}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Uploads send "Expect: 100-continue" so that the server can say it
	// already has the artifact before a byte of it is sent. A server that
	// ignores the header gets the body after this delay.
	t.ExpectContinueTimeout = 2 * time.Second
	return &client{base: strings.TrimRight(server, "/"), token: token, hc: &http.Client{Transport: t}}, nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Status    int
	Code      string
	Message   string
	RequestID string
	// Field names the request field a 400 is about.
	Field   string
	noToken bool // the request carried no token
}

func (e *apiError) Error() string {
	msg := e.Message
	switch e.Code {
	case "unauthorized":
		if e.noToken {
			return fmt.Sprintf("no admin token: set %s (or --token) to a token from \"otad token create\" (server said: %s)", envToken, msg)
		}
		return fmt.Sprintf("the server refused the token (%s): set %s (or --token) to a live token from \"otad token create\"", msg, envToken)
	case "internal":
		if e.RequestID != "" {
			return fmt.Sprintf("the server failed with an internal error (request id %s); its log has the details", e.RequestID)
		}
		return "the server failed with an internal error; its log has the details"
	}
	hints := map[string]string{
		"forbidden":          "ask for a release-engineer token: otad token create --role release-engineer",
		"draft_pending":      "otactl release show shows it; otactl draft discard ID abandons it",
		"stale_draft":        "otactl release show shows the current draft",
		"unknown_key":        "otactl key show KEY prints your key id; otactl release show lists the keys that may sign",
		"key_not_authorized": "otactl key show KEY prints your key id; otactl release show lists the keys that may sign",
		"not_initialized":    "run otactl repo init first",
	}
	if h, ok := hints[e.Code]; ok && !strings.Contains(msg, "otactl ") {
		msg += " (" + h + ")"
	}
	return msg
}

// do sends one JSON request and decodes the JSON answer into out (if not
// nil). in, if not nil, is the JSON body.
func (cl *client) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := cl.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return cl.send(req, out)
}

func (cl *client) newRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, cl.base+api.AdminPrefix+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "otactl")
	if cl.token != "" {
		req.Header.Set("Authorization", "Bearer "+cl.token)
	}
	return req, nil
}

// send sends req and decodes a 2xx JSON answer into out; anything else
// becomes an error that says what happened.
func (cl *client) send(req *http.Request, out any) error {
	resp, err := cl.hc.Do(req)
	if err != nil {
		return cl.transportError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("reading the answer of %s %s: %w", req.Method, req.URL.Path, err)
	}
	if len(data) > maxResponse {
		return fmt.Errorf("the answer of %s %s is larger than %d bytes", req.Method, req.URL.Path, maxResponse)
	}
	if resp.StatusCode >= 300 {
		return cl.errorFrom(resp, data)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the answer of %s %s is not the JSON otactl expects (is --server otad?): %w", req.Method, req.URL.Path, err)
	}
	return nil
}

func (cl *client) errorFrom(resp *http.Response, data []byte) error {
	var eb wire.ErrorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
		return &apiError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message,
			RequestID: resp.Header.Get("X-Request-Id"), Field: eb.Error.Field, noToken: cl.token == ""}
	}
	snippet := strings.TrimSpace(string(data))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	msg := fmt.Sprintf("the server answered %s to %s %s", resp.Status, resp.Request.Method, resp.Request.URL.Path)
	if snippet != "" {
		msg += ": " + snippet
	}
	if resp.StatusCode == http.StatusNotFound {
		msg += " (is --server / " + envServer + " the otad base URL?)"
	}
	return errors.New(msg)
}

func (cl *client) transportError(err error) error {
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.Is(err, context.Canceled):
		return errors.New("interrupted")
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("the server at %s did not answer in time: %w", cl.base, err)
	case errors.As(err, &oe):
		return fmt.Errorf("cannot reach the server at %s: %w (check --server / %s)", cl.base, err, envServer)
	}
	return fmt.Errorf("request to %s failed: %w", cl.base, err)
}

// escapePath escapes a slash path for a URL the way Go's server decodes
// it back without a RawPath, so that the server sees the path unchanged.
func escapePath(p string) string {
	return (&url.URL{Path: p}).EscapedPath()
}
