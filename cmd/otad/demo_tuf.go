package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// demoVerifier checks offers with go-tuf's updater, for real: metadata
// from the server over loopback HTTP, starting from the root the demo
// fetched once as firmware would ship it, and the artifact downloaded and
// checked against the signed length and sha256.
//
// Sharing: one verification per model and offered target (path, sha256,
// length), not one per handset. The first handset of a model offered a
// target runs a fresh updater (Refresh, GetTargetInfo, DownloadTarget);
// the model's other handsets offered the same target reuse that signed
// target info, and each still checks its own offer and its own build
// against it. 3000 handsets in 4 models cost 4 refreshes and 4 downloads
// per release, not 3000.
type demoVerifier struct {
	client *demoClient
	root   []byte
	dir    string

	log *slog.Logger

	mu      sync.Mutex
	entries map[string]*verifiedTarget
	n       int // folders made
	wg      sync.WaitGroup
}

// verifiedTarget is one model's verification of one target; handsets
// arriving while it runs wait for it.
type verifiedTarget struct {
	done   chan struct{}
	custom manifests.TargetCustom
	length int64
	sha256 string
	// targetsVersion is the signed targets version it was found in.
	targetsVersion int64
	err            error
}

// demoVerifyError is why an offer did not verify, with the report code.
type demoVerifyError struct {
	code      string
	transient bool
	err       error
}

func (e *demoVerifyError) Error() string { return e.code + ": " + e.err.Error() }
func (e *demoVerifyError) Unwrap() error { return e.err }

func newDemoVerifier(client *demoClient, root []byte, dir string, log *slog.Logger) *demoVerifier {
	return &demoVerifier{client: client, root: root, dir: dir, log: log, entries: map[string]*verifiedTarget{}}
}

// verify checks offer o for a handset of model and build and returns the
// signed custom metadata it installs by. ready is false while the
// model's verification of the target still runs: the handset asks again
// a little later instead of holding a worker.
func (v *demoVerifier) verify(o *wire.OfferAnswer, model, build string) (custom *manifests.TargetCustom, ready bool, err error) {
	key := model + "\x00" + o.Target + "\x00" + o.SHA256 + "\x00" + strconv.FormatInt(o.Length, 10)
	v.mu.Lock()
	e, ok := v.entries[key]
	if !ok {
		e = &verifiedTarget{done: make(chan struct{})}
		v.entries[key] = e
		v.n++
		dir := filepath.Join(v.dir, fmt.Sprintf("%s-%d", model, v.n))
		// go-tuf takes no context: the HTTP client's timeout bounds it.
		v.wg.Go(func() {
			defer close(e.done)
			start := time.Now()
			e.err = v.run(e, dir, o.Target)
			var ve *demoVerifyError
			switch {
			case errors.As(e.err, &ve) && ve.transient:
				v.mu.Lock()
				delete(v.entries, key)
				v.mu.Unlock()
			case e.err == nil:
				v.log.Info("demo fleet: go-tuf verified the offered patch for a model; its handsets install it",
					slog.String("model", model), slog.String("target", o.Target), slog.String("sha256", e.sha256),
					slog.Int64("targets_version", e.targetsVersion), slog.Duration("took", time.Since(start).Round(time.Millisecond)))
			}
		})
	}
	v.mu.Unlock()
	select {
	case <-e.done:
	default:
		return nil, false, nil
	}
	if e.err != nil {
		return nil, true, e.err
	}
	switch {
	case e.length != o.Length || e.sha256 != o.SHA256:
		return nil, true, &demoVerifyError{code: "E_TUF_VERIFY", err: fmt.Errorf("offer %s (%d bytes, sha256 %s) differs from the signed target", o.Target, o.Length, o.SHA256)}
	case e.custom.PatchID != o.PatchID:
		return nil, true, &demoVerifyError{code: "E_TUF_VERIFY", err: fmt.Errorf("offer patch %s, signed patch %s", o.PatchID, e.custom.PatchID)}
	case len(e.custom.Models) > 0 && !slices.Contains(e.custom.Models, model):
		return nil, true, &demoVerifyError{code: "E_NOT_APPLICABLE", err: fmt.Errorf("signed metadata is not for model %s", model)}
	case e.custom.BuildMin != "" && handsets.CompareBuilds(build, e.custom.BuildMin) < 0,
		e.custom.BuildMax != "" && handsets.CompareBuilds(build, e.custom.BuildMax) > 0:
		return nil, true, &demoVerifyError{code: "E_NOT_APPLICABLE", err: fmt.Errorf("signed metadata is not for build %s", build)}
	}
	c := e.custom
	return &c, true, nil
}

// wait waits for the verifications running.
func (v *demoVerifier) wait() { v.wg.Wait() }

// run refreshes a new updater in dir and downloads target through it.
func (v *demoVerifier) run(e *verifiedTarget, dir, target string) error {
	metaDir, targetsDir := filepath.Join(dir, "metadata"), filepath.Join(dir, "targets")
	for _, d := range []string{metaDir, targetsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return &demoVerifyError{code: "E_DOWNLOAD", err: err}
		}
	}
	cfg, err := config.New(v.client.base+"/tuf/", v.root)
	if err != nil {
		return &demoVerifyError{code: "E_TUF_VERIFY", err: err}
	}
	cfg.RemoteTargetsURL = v.client.base + "/targets/"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = metaDir, targetsDir
	if err := cfg.SetDefaultFetcherHTTPClient(v.client.hc); err != nil {
		return &demoVerifyError{code: "E_DOWNLOAD", err: err}
	}
	up, err := updater.New(cfg)
	if err != nil {
		return &demoVerifyError{code: "E_TUF_VERIFY", err: err}
	}
	if err := up.Refresh(); err != nil {
		return classifyTUF("refresh", err)
	}
	info, err := up.GetTargetInfo(target)
	if err != nil {
		return classifyTUF("target "+target, err)
	}
	if _, _, err := up.DownloadTarget(info, filepath.Join(targetsDir, "artifact"), ""); err != nil {
		return classifyTUF("download "+target, err)
	}
	if info.Custom == nil || json.Unmarshal(*info.Custom, &e.custom) != nil {
		return &demoVerifyError{code: "E_TUF_VERIFY", err: fmt.Errorf("signed target %s has no readable custom metadata", target)}
	}
	e.length, e.sha256 = info.Length, hex.EncodeToString(info.Hashes["sha256"])
	if md := up.GetTrustedMetadataSet().Targets[metadata.TARGETS]; md != nil {
		e.targetsVersion = md.Signed.Version
	}
	return nil
}

// classifyTUF: fetching is worth retrying, content that does not verify
// is not.
func classifyTUF(what string, err error) error {
	var httpErr *metadata.ErrDownloadHTTP
	wrapped := fmt.Errorf("%s: %w", what, err)
	if errors.As(err, &httpErr) || isNetError(err) {
		return &demoVerifyError{code: "E_DOWNLOAD", transient: true, err: wrapped}
	}
	return &demoVerifyError{code: "E_TUF_VERIFY", err: wrapped}
}

func isNetError(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne)
}
