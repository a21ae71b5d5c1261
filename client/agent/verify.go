package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"slices"
	"strings"

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
	cfg, err := config.New(metaURL, root)
	if err != nil {
		return nil, &failure{code: CodeVerify, err: err}
	}
	cfg.RemoteTargetsURL = targetsURL
	cfg.LocalMetadataDir = a.tufDir()
	cfg.LocalTargetsDir = a.downloadDir()
	// go-tuf's default fetcher would use http.DefaultClient, which has no
	// timeout; go-tuf takes no context, so the timeout bounds it.
	hc := &http.Client{Timeout: a.cfg.TUFTimeout, Transport: a.cfg.Client.HTTPClient().Transport}
	if err := cfg.SetDefaultFetcherHTTPClient(hc); err != nil {
		return nil, err
	}
	up, err := updater.New(cfg)
	if err != nil {
		return nil, classify("trusted root", err)
	}
	if err := up.Refresh(); err != nil {
		return nil, classify("refresh TUF metadata", err)
	}
	info, err := up.GetTargetInfo(o.Target)
	if err != nil {
		return nil, classify("target "+o.Target, err)
	}
	sum := hex.EncodeToString(info.Hashes["sha256"])
	switch {
	case sum == "":
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("signed target %s has no sha256", o.Target)}
	case info.Length != o.Length:
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer length %d, signed length %d", o.Length, info.Length)}
	case o.SHA256 != "" && !strings.EqualFold(o.SHA256, sum):
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer sha256 %s, signed sha256 %s", o.SHA256, sum)}
	}
	var custom manifests.TargetCustom
	if info.Custom == nil || json.Unmarshal(*info.Custom, &custom) != nil {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("signed target %s has no readable custom metadata", o.Target)}
	}
	if custom.PatchID != o.PatchID {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("offer patch %s, signed patch %s", o.PatchID, custom.PatchID)}
	}
	if why := notFor(&custom, a.cfg.Device.Model, build); why != "" {
		return nil, &failure{code: CodeNotApplicable, err: errors.New(why)}
	}
	// The file's name on the server, as go-tuf names it: with consistent
	// snapshots, <dir>/<sha256>.<base>.
	remote := info.Path
	if up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot {
		dir, base := path.Split(info.Path)
		remote = dir + sum + "." + base
	}
	return &verified{url: targetsURL + remote, length: info.Length, sha256: sum, custom: custom}, nil
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
