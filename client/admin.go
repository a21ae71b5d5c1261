package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// This file is the admin API's repository half: who am I, the TUF
// repository's status, the ceremony, releases, drafts and signatures,
// the audit log. Rollouts are in rollouts.go, users and tokens in
// users.go, artifact uploads in upload.go. Every call needs a token
// (WithBearer, WithToken) whose role has the route's permission.

// WithReason returns a copy of c that gives reason to every admin call
// it makes: the audit log records it beside the action. Rollout changes
// take their reason as an argument instead, where the API requires one.
func (c *Client) WithReason(reason string) *Client {
	return c.WithHeader(wire.HeaderReason, reason)
}

// Do sends in (if not nil) as JSON to path, under the server's base URL
// (wire.AdminPrefix+"/whoami"), and decodes a 2xx answer into out (if
// not nil); it returns the answer's status. It is for what the package
// does not wrap, and for tests that send what the typed calls would not.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) (int, error) {
	return c.doJSON(ctx, method, path, in, out)
}

// admin is doJSON under wire.AdminPrefix, without the status.
func (c *Client) admin(ctx context.Context, method, path string, in, out any) error {
	_, err := c.doJSON(ctx, method, wire.AdminPrefix+path, in, out)
	return err
}

// call is admin into a new T, nil on error.
func call[T any](ctx context.Context, c *Client, method, path string, in any) (*T, error) {
	var v T
	if err := c.admin(ctx, method, path, in, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// list is a GET of path into a new []T, nil on error.
func list[T any](ctx context.Context, c *Client, path string) ([]T, error) {
	var vs []T
	if err := c.admin(ctx, http.MethodGet, path, nil, &vs); err != nil {
		return nil, err
	}
	return vs, nil
}

// WhoAmI says whose token c sends: name, role and permissions.
func (c *Client) WhoAmI(ctx context.Context) (*wire.WhoAmI, error) {
	return call[wire.WhoAmI](ctx, c, http.MethodGet, "/whoami", nil)
}

// RepoStatus is the TUF repository's state: the published version and
// expiry of every role, and the pending draft if one is.
func (c *Client) RepoStatus(ctx context.Context) (*manifests.Status, error) {
	return call[manifests.Status](ctx, c, http.MethodGet, "/repo/status", nil)
}

// OnlineKey is the server's timestamp and snapshot key, which a root
// draft names.
func (c *Client) OnlineKey(ctx context.Context) (*wire.OnlineKey, error) {
	return call[wire.OnlineKey](ctx, c, http.MethodGet, "/repo/online-key", nil)
}

// CreateRootDraft drafts the next root: the ceremony's first one, or a
// rotation. The root keys sign it offline (AddSignatures).
func (c *Client) CreateRootDraft(ctx context.Context, req wire.RootDraftRequest) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodPost, "/repo/root-drafts", req)
}

// CreateRelease drafts the next targets version with a stored artifact
// (UploadArtifact) as a new target.
func (c *Client) CreateRelease(ctx context.Context, req wire.ReleaseRequest) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodPost, "/releases", req)
}

// Yank drafts the next targets version without target path, so that no
// handset is offered it once the draft is signed.
func (c *Client) Yank(ctx context.Context, path string) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodPost, "/yanks", wire.YankRequest{Path: path})
}

// Drafts lists the newest drafts first (at most 50).
func (c *Client) Drafts(ctx context.Context) ([]manifests.DraftView, error) {
	return list[manifests.DraftView](ctx, c, "/drafts")
}

// Draft returns draft id, with the exact bytes its signers sign. An
// unknown id is an *Error with code "not_found".
func (c *Client) Draft(ctx context.Context, id string) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodGet, "/drafts/"+url.PathEscape(id), nil)
}

// PendingDraft returns the one draft that waits for signatures; none is
// an *Error with code "not_found".
func (c *Client) PendingDraft(ctx context.Context) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodGet, "/drafts/pending", nil)
}

// AddSignatures uploads signatures made offline over draft id's bytes
// at digest; the draft comes back as it stands after them, published
// once its thresholds are met.
func (c *Client) AddSignatures(ctx context.Context, id string, up wire.SignatureUpload) (*manifests.DraftView, error) {
	return call[manifests.DraftView](ctx, c, http.MethodPost, "/drafts/"+url.PathEscape(id)+"/signatures", up)
}

// DiscardDraft abandons pending draft id; nothing is published.
func (c *Client) DiscardDraft(ctx context.Context, id string) error {
	return c.admin(ctx, http.MethodDelete, "/drafts/"+url.PathEscape(id), nil, nil)
}

// FleetSummary reports how much of the fleet runs patch (the newest
// published one when ""), counting handsets seen in the last
// activeDays (0: the server's default), with at most models rows by
// model (0: the server's default).
func (c *Client) FleetSummary(ctx context.Context, patch string, activeDays, models int) (*handsets.FleetSummary, error) {
	q := url.Values{}
	if patch != "" {
		q.Set("patch", patch)
	}
	if activeDays != 0 {
		q.Set("active_days", strconv.Itoa(activeDays))
	}
	if models != 0 {
		q.Set("models", strconv.Itoa(models))
	}
	return call[handsets.FleetSummary](ctx, c, http.MethodGet, "/fleet/summary"+query(q), nil)
}

// AuditQuery filters the audit log; zero fields do not filter.
type AuditQuery struct {
	Actor string
	// Action is an exact action ("rollout.pause") or a prefix ending in
	// "." ("rollout.").
	Action string
	Object string
	// Since and Until bound the entries' times; Before pages back from
	// an entry's Seq.
	Since, Until time.Time
	Before       int64
	// Limit is at most audit.MaxAuditLimit; 0 is the server's default.
	Limit int
}

// Audit lists the audit log, newest first.
func (c *Client) Audit(ctx context.Context, aq AuditQuery) ([]wire.AuditEntry, error) {
	q := url.Values{}
	for k, v := range map[string]string{"actor": aq.Actor, "action": aq.Action, "object": aq.Object} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for k, t := range map[string]time.Time{"since": aq.Since, "until": aq.Until} {
		if !t.IsZero() {
			q.Set(k, t.UTC().Format(time.RFC3339))
		}
	}
	if aq.Before != 0 {
		q.Set("before", strconv.FormatInt(aq.Before, 10))
	}
	if aq.Limit != 0 {
		q.Set("limit", strconv.Itoa(aq.Limit))
	}
	return list[wire.AuditEntry](ctx, c, "/audit"+query(q))
}

// VerifyAudit checks the audit log's hash chain against its
// checkpoints. A broken chain is an answer (OK false), not an error.
func (c *Client) VerifyAudit(ctx context.Context) (*wire.AuditVerify, error) {
	return call[wire.AuditVerify](ctx, c, http.MethodGet, "/audit/verify", nil)
}

// query is "?"+q encoded, or "" for no parameters.
func query(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}
