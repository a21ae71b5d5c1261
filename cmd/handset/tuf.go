package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/patchfleet/ota/server/handsets"
)

// Error codes the handset reports for failures it finds itself.
const (
	codeTUFVerify     = "E_TUF_VERIFY"     // metadata or artifact did not verify, or the offer disagrees with signed metadata
	codeDownload      = "E_DOWNLOAD"       // metadata or artifact could not be fetched
	codeNotApplicable = "E_NOT_APPLICABLE" // the signed metadata says the patch is not for this model or build
)

// tufClient verifies offers with go-tuf for every handset of the process.
//
// 10,000 handsets must not each download all metadata: handsets share a
// view, one go-tuf updater refreshed at most every maxAge per repository
// URL, whose trusted metadata persists in a per-process folder so that the
// next view starts from it (rollback protection holds across views, as on
// a real handset across polls). Target bytes are downloaded and verified
// by go-tuf once per sha256 and length; a handset whose offer resolves,
// through a fresh view, to signed target info with that sha256 and length
// uses the verified copy.
type tufClient struct {
	root   []byte // bootstrap root: --root or trust on first use
	hc     *http.Client
	dir    string
	maxAge time.Duration
	now    func() time.Time

	mu       sync.Mutex
	sources  map[string]*tufSource
	verified map[string]bool // artifactKey -> downloaded and verified by go-tuf
}

func newTUFClient(root []byte, hc *http.Client, dir string, maxAge time.Duration) *tufClient {
	return &tufClient{root: root, hc: hc, dir: dir, maxAge: maxAge, now: time.Now,
		sources: map[string]*tufSource{}, verified: map[string]bool{}}
}

// tufSource is one repository (metadata URL and targets URL) and its
// current view.
type tufSource struct {
	metadataURL, targetsURL string
	metaDir, targetsDir     string

	mu         sync.Mutex
	cur        *tufView
	refreshing chan struct{} // closed when the running refresh ends
}

// tufView is one refreshed updater. After Refresh only GetTargetInfo
// (which may load delegated metadata, so it is serialised) and
// DownloadTarget (read-only on the updater) are called on it.
type tufView struct {
	up  *updater.Updater
	at  time.Time
	err error

	mu      sync.Mutex
	fetches map[string]*fetchCall
}

// fetchCall is one artifact download that handsets wanting the same
// artifact wait for.
type fetchCall struct {
	done chan struct{}
	err  error
}

// verifyError is why an offer was not installed.
type verifyError struct {
	code      string
	transient bool // worth retrying: the network, not the content
	err       error
}

func (e *verifyError) Error() string { return e.code + ": " + e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

// targetCustom is the part of the signed custom metadata a handset acts on.
type targetCustom struct {
	PatchID               string   `json:"patch_id"`
	Models                []string `json:"models"`
	BuildMin              string   `json:"build_min"`
	BuildMax              string   `json:"build_max"`
	InstallsBuild         string   `json:"installs_build"`
	CloudMessagingDefault string   `json:"cloud_messaging_default"`
	NumberEncryption      string   `json:"number_encryption"`
}

// verify runs a go-tuf update for offer o on a handset of model and build:
// the target must be in the signed metadata, match the offer, apply to the
// handset, and its bytes must verify. It returns the signed custom
// metadata, or a *verifyError.
func (c *tufClient) verify(ctx context.Context, o *offer, model, build string) (*targetCustom, error) {
	src, err := c.source(o.MetadataURL, o.TargetsURL)
	if err != nil {
		return nil, &verifyError{code: codeDownload, err: err}
	}
	v, err := src.view(ctx, c)
	if err != nil {
		return nil, classify("refresh TUF metadata", err)
	}
	info, err := v.targetInfo(o.Target)
	if err != nil {
		return nil, classify("target "+o.Target, err)
	}
	sum := hex.EncodeToString(info.Hashes["sha256"])
	switch {
	case sum == "":
		return nil, &verifyError{code: codeTUFVerify, err: fmt.Errorf("signed target %s has no sha256", o.Target)}
	case info.Length != o.Length:
		return nil, &verifyError{code: codeTUFVerify, err: fmt.Errorf("offer length %d, signed length %d", o.Length, info.Length)}
	case o.SHA256 != "" && !strings.EqualFold(o.SHA256, sum):
		return nil, &verifyError{code: codeTUFVerify, err: fmt.Errorf("offer sha256 %s, signed sha256 %s", o.SHA256, sum)}
	}
	var custom targetCustom
	if info.Custom == nil || json.Unmarshal(*info.Custom, &custom) != nil {
		return nil, &verifyError{code: codeTUFVerify, err: fmt.Errorf("signed target %s has no readable custom metadata", o.Target)}
	}
	if custom.PatchID != o.PatchID {
		return nil, &verifyError{code: codeTUFVerify, err: fmt.Errorf("offer patch %s, signed patch %s", o.PatchID, custom.PatchID)}
	}
	if why := custom.notFor(model, build); why != "" {
		return nil, &verifyError{code: codeNotApplicable, err: errors.New(why)}
	}
	key := sum + "-" + strconv.FormatInt(info.Length, 10)
	c.mu.Lock()
	ok := c.verified[key]
	c.mu.Unlock()
	if ok {
		return &custom, nil
	}
	if err := v.download(ctx, src, info, key); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.verified[key] = true
	c.mu.Unlock()
	return &custom, nil
}

// notFor says why the signed metadata excludes a handset, or "".
func (t *targetCustom) notFor(model, build string) string {
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
func classify(what string, err error) *verifyError {
	var ve *verifyError
	if errors.As(err, &ve) {
		return ve
	}
	wrapped := fmt.Errorf("%s: %w", what, err)
	var httpErr *metadata.ErrDownloadHTTP
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &verifyError{code: codeDownload, transient: true, err: wrapped}
	case errors.As(err, &httpErr):
		// 404 for a target or metadata the offer promised is as wrong as
		// bad content, but mirrors lag: retry, then E_DOWNLOAD.
		return &verifyError{code: codeDownload, transient: true, err: wrapped}
	case errors.As(err, &ne):
		return &verifyError{code: codeDownload, transient: true, err: wrapped}
	}
	var lengthErr *metadata.ErrDownloadLengthMismatch
	if errors.As(err, &lengthErr) {
		return &verifyError{code: codeTUFVerify, err: wrapped} // more bytes than signed
	}
	if isNetworkError(err) {
		return &verifyError{code: codeDownload, transient: true, err: wrapped}
	}
	return &verifyError{code: codeTUFVerify, err: wrapped}
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

// source returns the repository at metadataURL and targetsURL, creating
// its cache folders on first use.
func (c *tufClient) source(metadataURL, targetsURL string) (*tufSource, error) {
	key := metadataURL + "\x00" + targetsURL
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.sources[key]; ok {
		return s, nil
	}
	if len(c.sources) >= 16 {
		return nil, errors.New("offers name more than 16 different repositories")
	}
	base := filepath.Join(c.dir, strconv.Itoa(len(c.sources)))
	s := &tufSource{metadataURL: metadataURL, targetsURL: targetsURL,
		metaDir: filepath.Join(base, "metadata"), targetsDir: filepath.Join(base, "targets")}
	for _, d := range []string{s.metaDir, s.targetsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("TUF cache: %w", err)
		}
	}
	c.sources[key] = s
	return s, nil
}

// errorViewAge is how long a failed refresh is reused: long enough that
// 10,000 handsets do not each retry it, short enough that a fixed mirror
// is noticed.
const errorViewAge = time.Second

// view returns a view younger than maxAge, refreshing it when needed;
// handsets arriving during a refresh wait for it rather than start their
// own. go-tuf takes no context, so the refresh runs on its own goroutine
// (bounded by the HTTP client's timeout) and a handset stops waiting when
// its ctx ends.
func (s *tufSource) view(ctx context.Context, c *tufClient) (*tufView, error) {
	s.mu.Lock()
	if v := s.cur; v != nil {
		age := c.now().Sub(v.at)
		if (v.err == nil && age < c.maxAge) || (v.err != nil && age < min(c.maxAge, errorViewAge)) {
			s.mu.Unlock()
			return v, v.err
		}
	}
	ch := s.refreshing
	if ch == nil {
		ch = make(chan struct{})
		s.refreshing = ch
		go func() {
			v := s.refresh(c)
			s.mu.Lock()
			s.cur, s.refreshing = v, nil
			s.mu.Unlock()
			close(ch)
		}()
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// The view of the refresh waited for, however young maxAge is.
	s.mu.Lock()
	v := s.cur
	s.mu.Unlock()
	return v, v.err
}

// refresh builds an updater trusting the newest root this process has
// verified and refreshes it. go-tuf takes no context: the HTTP client's
// timeout bounds every request.
func (s *tufSource) refresh(c *tufClient) *tufView {
	v := &tufView{at: c.now(), fetches: map[string]*fetchCall{}}
	var err error
	v.up, err = s.newUpdater(c, s.trustedRoot(c))
	if err != nil {
		// The cached root is this process's own, verified when written;
		// should it not load, start again from the bootstrap root.
		v.up, err = s.newUpdater(c, c.root)
	}
	if err == nil {
		err = v.up.Refresh()
	}
	v.err = err
	return v
}

func (s *tufSource) trustedRoot(c *tufClient) []byte {
	if b, err := os.ReadFile(filepath.Join(s.metaDir, "root.json")); err == nil && len(b) > 0 {
		return b
	}
	return c.root
}

func (s *tufSource) newUpdater(c *tufClient, root []byte) (*updater.Updater, error) {
	cfg, err := config.New(s.metadataURL, root)
	if err != nil {
		return nil, err
	}
	cfg.RemoteTargetsURL = s.targetsURL
	cfg.LocalMetadataDir = s.metaDir
	cfg.LocalTargetsDir = s.targetsDir
	// go-tuf's default fetcher would use http.DefaultClient, which has no
	// timeout.
	if err := cfg.SetDefaultFetcherHTTPClient(c.hc); err != nil {
		return nil, err
	}
	if f, ok := cfg.Fetcher.(interface{ SetHTTPUserAgent(string) }); ok {
		f.SetHTTPUserAgent(userAgent)
	}
	return updater.New(cfg)
}

func (v *tufView) targetInfo(path string) (*metadata.TargetFiles, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.up.GetTargetInfo(path)
}

// download fetches and verifies the artifact once per view; handsets
// wanting it meanwhile wait. A verification failure is kept for the view's
// life (the same mirror gives the same bytes); a network failure is not.
// Like refresh, the download runs on its own goroutine.
func (v *tufView) download(ctx context.Context, s *tufSource, info *metadata.TargetFiles, key string) error {
	v.mu.Lock()
	call, ok := v.fetches[key]
	if !ok {
		call = &fetchCall{done: make(chan struct{})}
		v.fetches[key] = call
		go func() {
			defer close(call.done)
			// The verified copy is written under its sha256, never under
			// the target's name, so two versions of one path cannot
			// collide.
			_, _, err := v.up.DownloadTarget(info, filepath.Join(s.targetsDir, key), "")
			if err == nil {
				return
			}
			ve := classify("download "+info.Path, err)
			call.err = ve
			if ve.transient {
				v.mu.Lock()
				delete(v.fetches, key)
				v.mu.Unlock()
			}
		}()
	}
	v.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return &verifyError{code: codeDownload, transient: true, err: ctx.Err()}
	}
}
