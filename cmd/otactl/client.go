package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/patchfleet/ota/client"
)

// apiTimeout bounds one admin API call (not uploads). Adding the last
// signature publishes, which writes several files to storage.
const apiTimeout = 2 * time.Minute

// conn is otactl's connection to otad's admin API: package client's
// calls, and otactl's wording of what goes wrong (explain).
type conn struct {
	*client.Client // bounded by apiTimeout
	// uploads has no timeout: a build of gigabytes takes what it takes.
	uploads *client.Client
	base    string
	noToken bool // requests carry no token
}

// client returns an admin API client from --server/--token or the
// environment, or an error that says what to set.
func (c *cli) client(sf serverFlags) (*conn, error) {
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
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Uploads send "Expect: 100-continue" so that the server can say it
	// already has the artifact before a byte of it is sent. A server that
	// ignores the header gets the body after this delay.
	t.ExpectContinueTimeout = 2 * time.Second
	opts := []client.Option{client.WithBearer(token), client.WithUserAgent("otactl")}
	cl, err := client.New(server, append(opts, client.WithHTTPClient(&http.Client{Transport: t, Timeout: apiTimeout}))...)
	if err != nil {
		return nil, usageError{fmt.Errorf("%w (set %s or --server)", err, envServer)}
	}
	up, err := client.New(server, append(opts, client.WithHTTPClient(&http.Client{Transport: t}))...)
	if err != nil {
		return nil, err
	}
	return &conn{Client: cl, uploads: up, base: cl.BaseURL(), noToken: token == ""}, nil
}

// apiError is an error answer of the admin API, in otactl's words: what
// the server said, and what to do about it.
type apiError struct {
	Status    int
	Code      string
	Message   string
	RequestID string
	// Field names the request field a 400 is about.
	Field   string
	noToken bool // the request carried no token
	err     *client.Error
}

func (e *apiError) Unwrap() error { return e.err }

func (e *apiError) Error() string {
	msg := e.Message
	switch e.Code {
	case "":
		// Not otad's error body: a proxy's page, or not otad at all.
		msg = fmt.Sprintf("the server answered %d %s to %s %s", e.Status, http.StatusText(e.Status), e.err.Method, e.err.Path)
		if e.Message != "" {
			msg += ": " + e.Message
		}
		if e.Status == http.StatusNotFound {
			msg += " (is --server / " + envServer + " the otad base URL?)"
		}
		return msg
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

// explain puts an error of a client call in otactl's words: an error
// answer becomes an *apiError, a network failure says which server it
// could not reach.
func (cn *conn) explain(err error) error {
	if err == nil {
		return nil
	}
	if e := client.AsError(err); e != nil {
		return &apiError{Status: e.Status, Code: e.Code, Message: e.Message, RequestID: e.RequestID, Field: e.Field,
			noToken: cn.noToken, err: e}
	}
	var ba *client.BadAnswerError
	var ue *url.Error
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &ba):
		return fmt.Errorf("the answer of %s %s is not the JSON otactl expects (is --server otad?): %w", ba.Method, ba.Path, ba.Err)
	case errors.Is(err, context.Canceled):
		return errInterrupted
	case !errors.As(err, &ue):
		// Not the transport's (a *client.ChangedError...): it already
		// says what it is.
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("the server at %s did not answer in time: %w", cn.base, err)
	case errors.As(err, &oe):
		return fmt.Errorf("cannot reach the server at %s: %w (check --server / %s)", cn.base, err, envServer)
	}
	return fmt.Errorf("request to %s failed: %w", cn.base, err)
}
