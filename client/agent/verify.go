package agent

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// Error codes the agent reports for failures it finds itself; an
// Installer names its own (InstallError).
const (
	// CodeVerify: the metadata or the file did not verify, or the offer
	// disagrees with the signed metadata.
	CodeVerify = "E_TUF_VERIFY"
	// CodeDownload: the metadata or the file could not be fetched, after
	// retries.
	CodeDownload = "E_DOWNLOAD"
	// CodeNotApplicable: the signed metadata says the patch is not for
	// this model or build.
	CodeNotApplicable = "E_NOT_APPLICABLE"
	// CodeInstall is the code of an installer's error that names none.
	CodeInstall = "E_INSTALL"
	// CodeSpace is the code for a device without room for the update,
	// the one the dashboard's examples use.
	CodeSpace = "E_DISK_FULL"
)

// failure is why an offer was not installed.
type failure struct {
	code      string
	transient bool // worth retrying: the network, not the content
	err       error
}

func (e *failure) Error() string { return e.code + ": " + e.err.Error() }
func (e *failure) Unwrap() error { return e.err }

// verified is what the signed metadata says of an offered target.
type verified struct {
	url    string // where its bytes are
	length int64
	sha256 string
	custom manifests.TargetCustom
	// full is the release's full image, for an incremental payload.
	full *Target
}

// Code is the report code of an error of the verifier (CodeVerify,
// CodeDownload, CodeNotApplicable): what a handset reports when an offer
// fails. It is CodeVerify for an error the verifier did not classify,
// "" for nil.
func Code(err error) string {
	if err == nil {
		return ""
	}
	var f *failure
	if errors.As(err, &f) {
		return f.code
	}
	return CodeVerify
}

// Transient reports whether retrying may help an error of the verifier:
// the metadata or the file could not be fetched, but nothing failed to
// verify.
func Transient(err error) bool {
	var f *failure
	return errors.As(err, &f) && f.transient
}

// Verifier runs go-tuf updates of one repository: the agent's, and
// simulators' that act as many handsets and share one update among
// them. It has no state but its folder: each Refresh is a new go-tuf
// updater that starts from the newest root verified there (rollback
// protection holds across refreshes, as on a handset across polls).
type Verifier struct {
	// MetadataURL and TargetsURL are the repository's, absolute and
	// ending in "/" (client.ResolveURL makes them from an offer).
	MetadataURL, TargetsURL string
	// Root is the trusted root to start from while Dir holds none (or
	// holds one that does not load).
	Root []byte
	// Dir is go-tuf's metadata folder; it must exist.
	Dir string
	// HTTPClient fetches the metadata. go-tuf takes no context: give it
	// a timeout (its default fetcher's http.DefaultClient has none).
	HTTPClient *http.Client
	// UserAgent, if set, names the caller to the server.
	UserAgent string
}

// View is one refreshed go-tuf updater: the repository's signed
// metadata at one moment. Its methods are safe for concurrent use.
type View struct {
	targetsURL string
	mu         sync.Mutex // GetTargetInfo may load delegated metadata
	up         *updater.Updater
}

// Target is what the signed metadata says of an offered target, checked
// against the offer.
type Target struct {
	// Path is the target's path in the metadata.
	Path string
	// URL is where its bytes are (with consistent snapshots,
	// <dir>/<sha256>.<base> under the targets URL).
	URL    string
	Length int64
	SHA256 string // hex
	// Custom is the signed custom metadata; the server's copy in the
	// offer is never used.
	Custom manifests.TargetCustom
}

// Refresh runs a go-tuf update (root, timestamp, snapshot, targets) and
// returns the view it verified. Errors are classified: Code, Transient.
func (v *Verifier) Refresh() (*View, error) {
	root := v.Root
	if b, err := os.ReadFile(filepath.Join(v.Dir, "root.json")); err == nil && len(b) > 0 {
		root = b
	}
	up, err := v.updater(root)
	if err != nil && len(v.Root) > 0 && !bytes.Equal(root, v.Root) {
		// The cached root was verified when written; should it not load,
		// start again from the bootstrap root.
		up, err = v.updater(v.Root)
	}
	if err != nil {
		return nil, classify("trusted root", err)
	}
	if err := up.Refresh(); err != nil {
		return nil, classify("refresh TUF metadata", err)
	}
	return &View{targetsURL: v.TargetsURL, up: up}, nil
}

func (v *Verifier) updater(root []byte) (*updater.Updater, error) {
	cfg, err := config.New(v.MetadataURL, root)
	if err != nil {
		return nil, &failure{code: CodeVerify, err: err}
	}
	cfg.RemoteTargetsURL = v.TargetsURL
	cfg.LocalMetadataDir = v.Dir
	// Targets are never downloaded through go-tuf (Download verifies
	// them resumably), but its config wants a folder.
	cfg.LocalTargetsDir = v.Dir
	if err := cfg.SetDefaultFetcherHTTPClient(v.HTTPClient); err != nil {
		return nil, err
	}
	if f, ok := cfg.Fetcher.(interface{ SetHTTPUserAgent(string) }); ok && v.UserAgent != "" {
		f.SetHTTPUserAgent(v.UserAgent)
	}
	return updater.New(cfg)
}

// TargetsVersion is the version of the signed targets metadata the view
// holds, for logs.
func (w *View) TargetsVersion() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if md := w.up.GetTrustedMetadataSet().Targets[metadata.TARGETS]; md != nil {
		return md.Signed.Version
	}
	return 0
}

// Check finds offer o's target in the signed metadata and checks the
// offer against it: the target is signed, and the offer's length, sha256
// and patch match. Whether the patch is for a handset is For's question.
func (w *View) Check(o wire.OfferAnswer) (*Target, error) {
	t, err := w.lookup(o.Target)
	if err != nil {
		return nil, err
	}
	switch {
	case t.Length != o.Length:
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer length %d, signed length %d", o.Length, t.Length)}
	case o.SHA256 != "" && !strings.EqualFold(o.SHA256, t.SHA256):
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer sha256 %s, signed sha256 %s", o.SHA256, t.SHA256)}
	case t.Custom.PatchID != o.PatchID:
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer patch %s, signed patch %s", o.PatchID, t.Custom.PatchID)}
	}
	return t, nil
}

// lookup is what the signed metadata says of target p.
func (w *View) lookup(p string) (*Target, error) {
	w.mu.Lock()
	info, err := w.up.GetTargetInfo(p)
	consistent := w.up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot
	w.mu.Unlock()
	if err != nil {
		return nil, classify("target "+p, err)
	}
	sum := hex.EncodeToString(info.Hashes["sha256"])
	if sum == "" {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("signed target %s has no sha256", p)}
	}
	var custom manifests.TargetCustom
	if info.Custom == nil || json.Unmarshal(*info.Custom, &custom) != nil {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("signed target %s has no readable custom metadata", p)}
	}
	// The file's name on the server, as go-tuf names it: with consistent
	// snapshots, <dir>/<sha256>.<base>.
	remote := info.Path
	if consistent {
		dir, base := path.Split(info.Path)
		remote = dir + sum + "." + base
	}
	return &Target{Path: info.Path, URL: w.targetsURL + remote, Length: info.Length, SHA256: sum, Custom: custom}, nil
}

// For says whether the signed metadata makes the patch one for a handset
// of model and build: nil, or an error with CodeNotApplicable.
func (t *Target) For(model, build string) error {
	if why := notFor(&t.Custom, model, build); why != "" {
		return &failure{code: CodeNotApplicable, err: errors.New(why)}
	}
	return nil
}

// FetchOptions are how Target.Fetch downloads.
type FetchOptions struct {
	// Client sends the requests; nil is http.DefaultClient.
	Client *http.Client
	// UserAgent, if set, names the caller to the server.
	UserAgent string
	// IdleTimeout ends a request that receives nothing for this long
	// (Download.IdleTimeout); 0 is DefaultIdleTimeout, negative none.
	IdleTimeout time.Duration
}

// DefaultIdleTimeout is how long a download may receive nothing before
// it is ended, to be resumed: a minute of silence on a link that works.
const DefaultIdleTimeout = time.Minute

// Fetch downloads t's bytes to dst resumably (Download) and classifies
// a failure as the agent reports it: bytes that do not match the signed
// length and sha256 are CodeVerify; the rest is CodeDownload, transient
// unless the server refused for good (a stall, ErrStalled, is transient).
func (t *Target) Fetch(ctx context.Context, dst string, opts FetchOptions) (DownloadResult, error) {
	idle := opts.IdleTimeout
	switch {
	case idle == 0:
		idle = DefaultIdleTimeout
	case idle < 0:
		idle = 0
	}
	d := &Download{URL: t.URL, Dst: dst, Length: t.Length, SHA256: t.SHA256, Client: opts.Client,
		UserAgent: opts.UserAgent, IdleTimeout: idle}
	res, err := d.Run(ctx)
	switch {
	case errors.Is(err, ErrContent):
		return res, &failure{code: CodeVerify, err: err}
	case err != nil:
		var se *HTTPStatusError
		if errors.As(err, &se) && se.Status < 500 && se.Status != http.StatusRequestedRangeNotSatisfiable &&
			se.Status != http.StatusNotFound && se.Status != http.StatusTooManyRequests {
			return res, &failure{code: CodeDownload, err: err}
		}
		return res, &failure{code: CodeDownload, transient: true, err: err}
	}
	return res, nil
}

// verifyOffer runs a go-tuf update from the trusted root in the state
// folder (go-tuf keeps the newest verified root there) and checks the
// offer against the signed metadata: the target is signed, the offer's
// length, sha256 and patch match it, and the signed custom metadata says
// the patch is for this model and build. The server's copy of the custom
// metadata in the offer is never used.
func (a *Agent) verifyOffer(ctx context.Context, o wire.OfferAnswer, build string) (*verified, error) {
	metaURL, err := a.cfg.Client.ResolveURL(o.MetadataURL, a.cfg.AllowedHosts...)
	if err != nil {
		return nil, &failure{code: CodeVerify, err: err}
	}
	targetsURL, err := a.cfg.Client.ResolveURL(o.TargetsURL, a.cfg.AllowedHosts...)
	if err != nil {
		return nil, &failure{code: CodeVerify, err: err}
	}
	root, err := a.trustedRoot()
	if err != nil {
		return nil, err
	}
	v := &Verifier{MetadataURL: metaURL, TargetsURL: targetsURL, Root: root, Dir: a.tufDir(),
		// go-tuf takes no context, so the timeout bounds it.
		HTTPClient: &http.Client{Timeout: a.cfg.TUFTimeout, Transport: a.cfg.Client.HTTPClient().Transport}}
	view, err := v.Refresh()
	if err != nil {
		return nil, err
	}
	t, err := view.Check(o)
	if err != nil {
		return nil, err
	}
	if err := t.For(a.cfg.Device.Model, build); err != nil {
		return nil, err
	}
	out := &verified{url: t.URL, length: t.Length, sha256: t.SHA256, custom: t.Custom}
	if t.Custom.Incremental != nil {
		if out.full, err = view.Full(t, build); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// notFor says why the signed metadata excludes a handset, or "".
func notFor(t *manifests.TargetCustom, model, build string) string {
	switch {
	case len(t.Models) > 0 && !slices.Contains(t.Models, model):
		return fmt.Sprintf("patch %s is for models %s, not %s", t.PatchID, strings.Join(t.Models, ","), model)
	case t.BuildMin != "" && handsets.CompareBuilds(build, t.BuildMin) < 0:
		return fmt.Sprintf("patch %s needs build %s or later, this is %s", t.PatchID, t.BuildMin, build)
	case t.BuildMax != "" && handsets.CompareBuilds(build, t.BuildMax) > 0:
		return fmt.Sprintf("patch %s is for builds up to %s, this is %s", t.PatchID, t.BuildMax, build)
	}
	return ""
}

// classify turns a go-tuf or network error into a report code. Content
// that does not verify is E_TUF_VERIFY; failing to fetch it is transient.
func classify(what string, err error) *failure {
	var f *failure
	if errors.As(err, &f) {
		return f
	}
	wrapped := fmt.Errorf("%s: %w", what, err)
	var httpErr *metadata.ErrDownloadHTTP
	var ne net.Error
	var lengthErr *metadata.ErrDownloadLengthMismatch
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &failure{code: CodeDownload, transient: true, err: wrapped}
	case errors.As(err, &httpErr), errors.As(err, &ne):
		// 404 for metadata the offer promised is as wrong as bad
		// content, but mirrors lag: retry, then E_DOWNLOAD.
		return &failure{code: CodeDownload, transient: true, err: wrapped}
	case errors.As(err, &lengthErr):
		return &failure{code: CodeVerify, err: wrapped} // more bytes than signed
	case isNetworkError(err):
		return &failure{code: CodeDownload, transient: true, err: wrapped}
	}
	return &failure{code: CodeVerify, err: wrapped}
}

// isNetworkError catches transport errors go-tuf's fetcher returns
// unwrapped (a *url.Error from http.Client.Do, an unexpected EOF).
func isNetworkError(err error) bool {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "unexpected EOF") || strings.Contains(msg, "connection reset") ||
		strings.Contains(msg, "Client.Timeout") || strings.Contains(msg, "connection refused")
}
