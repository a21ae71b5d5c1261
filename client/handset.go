package client

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
)

// The handset half of the API: what a handset's update agent calls. Every
// call but Enroll sends the client's bearer token (WithToken), which
// Enroll returns.

// Enroll enrolls a handset with its device key: the device id derives
// from the key, so enrolling again (after losing the token, or after an
// erase) finds the same device. b carries model, build, channel, region
// and the enrollment secret; Enroll fills in the key, a timestamp from
// the client's clock and the signature over server.EnrollMessage, the
// message the server checks. created is true when the server made a new
// device (201), false when it re-enrolled a known one (200).
func (c *Client) Enroll(ctx context.Context, key ed25519.PrivateKey, b wire.EnrollBody) (a *wire.EnrollAnswer, created bool, err error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, false, errors.New("enroll: want an ed25519 private key")
	}
	pub := hex.EncodeToString(key.Public().(ed25519.PublicKey))
	// Microseconds, as the server keeps them: it refuses an enrollment of
	// the key that is not newer than the last, and a retry after a lost
	// answer may come within the same second.
	ts := c.now().UTC().Truncate(time.Microsecond)
	msg := server.EnrollMessage(server.EnrollRequest{Model: b.Model, Build: b.Build, Channel: b.Channel,
		Region: b.Region, DeviceKey: pub, Timestamp: ts})
	b.DeviceKey, b.Timestamp, b.Signature = pub, &ts, hex.EncodeToString(ed25519.Sign(key, msg))
	var ans wire.EnrollAnswer
	status, err := c.doJSON(ctx, http.MethodPost, wire.APIPrefix+"/devices", b, &ans)
	if err != nil {
		return nil, false, err
	}
	if ans.DeviceID == "" || ans.Token == "" {
		return nil, false, &BadAnswerError{http.MethodPost, wire.APIPrefix + "/devices", errors.New("no device_id or token")}
	}
	return &ans, status == http.StatusCreated, nil
}

// CheckIn tells the server what the handset runs and returns when to
// poll next and, perhaps, an offer. An offer's URLs may be root-relative
// ("/tuf/"): resolve them with ResolveURL.
func (c *Client) CheckIn(ctx context.Context, b wire.CheckInBody) (*wire.CheckInAnswer, error) {
	if b.InstalledPatches == nil {
		b.InstalledPatches = []string{} // the server wants a list, empty or not
	}
	var ans wire.CheckInAnswer
	if _, err := c.doJSON(ctx, http.MethodPost, wire.APIPrefix+"/checkin", b, &ans); err != nil {
		return nil, err
	}
	if ans.PollAfterSeconds < 0 {
		return nil, &BadAnswerError{http.MethodPost, wire.APIPrefix + "/checkin", fmt.Errorf("negative poll_after_seconds %d", ans.PollAfterSeconds)}
	}
	return &ans, nil
}

// Report sends one report. duplicate is true when the server already
// held a report with this id and content (a retry after a lost answer);
// either way a nil error means the report is durable on the server, and
// the handset may forget it. Keep ReportID and At the same across
// retries, or the server counts a retry as a second report.
func (c *Client) Report(ctx context.Context, b wire.ReportBody) (duplicate bool, err error) {
	var ans wire.ReportAnswer
	if _, err := c.doJSON(ctx, http.MethodPost, wire.APIPrefix+"/reports", b, &ans); err != nil {
		return false, err
	}
	return ans.Duplicate, nil
}

// EraseSelf erases the handset and everything the server holds on it;
// its token stops working.
func (c *Client) EraseSelf(ctx context.Context) error {
	_, err := c.doJSON(ctx, http.MethodDelete, wire.APIPrefix+"/devices/self", nil, nil)
	return err
}

// ResolveURL resolves ref (an offer's metadata_url or targets_url)
// against the server's URL, and refuses a URL on another host unless it
// is in allowedHosts (a CDN's host[:port], or a host on any port): an offer must not steer a
// handset to anyone's server. A root-relative path, what otad answers
// without a public URL, is relative to the server's URL with its path, as
// otad does not know the path a gateway puts it under: "/tuf/" from a
// server at https://gw.example/ota is https://gw.example/ota/tuf/. The
// query and fragment are dropped, and the result ends with "/".
func (c *Client) ResolveURL(ref string, allowedHosts ...string) (string, error) {
	base, err := url.Parse(c.base + "/")
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(ref, "/") && !strings.HasPrefix(ref, "//") {
		ref = strings.TrimSuffix(c.base, "/") + ref
	}
	r, err := url.Parse(ref)
	if err != nil || ref == "" {
		return "", fmt.Errorf("offer URL %q: not a URL", ref)
	}
	u := base.ResolveReference(r)
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("offer URL %q: want http or https", ref)
	}
	if u.Host == "" {
		return "", fmt.Errorf("offer URL %q: no host", ref)
	}
	if !strings.EqualFold(u.Host, base.Host) {
		ok := false
		for _, h := range allowedHosts {
			ok = ok || strings.EqualFold(u.Host, h) || strings.EqualFold(u.Hostname(), h)
		}
		if !ok {
			return "", fmt.Errorf("offer URL %q: host %s is not the server's nor an allowed host", ref, u.Host)
		}
	}
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	s := u.String()
	if !strings.HasSuffix(s, "/") {
		s += "/"
	}
	return s, nil
}

// FirstRoot fetches the repository's first root (1.root.json), for a
// handset that trusts on first use or a simulator that plays the
// firmware: the root a handset ships with and verifies every update
// from. A 404 means the root ceremony has not run.
func (c *Client) FirstRoot(ctx context.Context) ([]byte, error) {
	var raw json.RawMessage
	if _, err := c.doJSON(ctx, http.MethodGet, wire.MetadataPrefix+"1.root.json", nil, &raw); err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, &BadAnswerError{http.MethodGet, wire.MetadataPrefix + "1.root.json", errors.New("empty")}
	}
	return raw, nil
}
