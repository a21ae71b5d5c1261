package handsetsim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// verifier verifies offers for every handset of a fleet with the
// agent's go-tuf verifier (agent.Verifier), sharing its work.
//
// 10,000 handsets must not each download all metadata: handsets share a
// view, one go-tuf update refreshed at most every maxAge per repository
// URL, whose trusted metadata persists in a per-fleet folder so that the
// next view starts from it (rollback protection holds across views, as on
// a real handset across polls). An offer a view does not find signed
// refreshes it once before it counts as failed: the release may be younger
// than the view. Target bytes are downloaded and verified once per sha256
// and length; a handset whose offer resolves, through a fresh view, to a
// signed target with that sha256 and length uses the verified copy.
type verifier struct {
	root      []byte // the trusted root, as shipped in firmware
	hc        *http.Client
	dir       string
	maxAge    time.Duration
	userAgent string
	say       func(string)
	now       func() time.Time

	images map[string]string // build -> its full image (Config.Images)

	mu       sync.Mutex
	sources  map[string]*tufSource
	verified map[string]bool // artifactKey -> downloaded and verified; "delta-" + key + build -> applied
	wg       sync.WaitGroup  // refreshes and downloads running
}

// wait waits for the refreshes and downloads running, which handsets may
// have stopped waiting for.
func (c *verifier) wait() { c.wg.Wait() }

func newVerifier(root []byte, hc *http.Client, dir string, maxAge time.Duration, userAgent string, say func(string)) *verifier {
	return &verifier{root: root, hc: hc, dir: dir, maxAge: maxAge, userAgent: userAgent, say: say, now: time.Now,
		sources: map[string]*tufSource{}, verified: map[string]bool{}}
}

// tufSource is one repository (metadata URL and targets URL) and its
// current view.
type tufSource struct {
	verifier   agent.Verifier
	targetsDir string

	mu         sync.Mutex
	cur        *tufView
	refreshing chan struct{} // closed when the running refresh ends
}

// tufView is one refreshed go-tuf update and the downloads through it.
type tufView struct {
	view *agent.View // nil when err is set
	at   time.Time
	err  error

	mu      sync.Mutex
	fetches map[string]*fetchCall
}

// fetchCall is one artifact download that handsets wanting the same
// artifact wait for.
type fetchCall struct {
	done chan struct{}
	err  error
}

// verify runs a go-tuf update for offer o on a handset of model and build:
// the target must be in the signed metadata, match the offer, apply to the
// handset, and its bytes must verify. It returns the signed custom
// metadata, or an error that agent.Code and agent.Transient classify.
func (c *verifier) verify(ctx context.Context, o *offer, model, build string) (*manifests.TargetCustom, error) {
	src, err := c.source(o.MetadataURL, o.TargetsURL)
	if err != nil {
		return nil, err
	}
	asked := c.now()
	v, err := src.view(ctx, c, time.Time{})
	if err != nil {
		return nil, err
	}
	offered := wire.OfferAnswer{Target: o.Target, Length: o.Length, SHA256: o.SHA256, PatchID: o.PatchID}
	t, err := v.view.Check(offered)
	if err != nil && v.at.Before(asked) {
		// A view made before this offer may predate its release: look
		// again, once, in a view at least as young as the question.
		if v, err = src.view(ctx, c, asked); err != nil {
			return nil, err
		}
		t, err = v.view.Check(offered)
	}
	if err != nil {
		return nil, err
	}
	if err := t.For(model, build); err != nil {
		return nil, err
	}
	var full *agent.Target
	if t.Custom.Incremental != nil {
		if full, err = v.view.Full(t, build); err != nil {
			return nil, err
		}
	}
	key := t.SHA256 + "-" + strconv.FormatInt(t.Length, 10)
	c.mu.Lock()
	ok := c.verified[key]
	c.mu.Unlock()
	if !ok {
		if err := v.download(ctx, c, src, t, key); err != nil {
			return nil, err
		}
	}
	if full != nil && t.Custom.Incremental.Format == manifests.FormatZstdPatch {
		if err := c.applyDelta(src, t, key, build, full); err != nil {
			return nil, err
		}
	}
	if ok {
		return &t.Custom, nil
	}
	c.mu.Lock()
	first := !c.verified[key]
	c.verified[key] = true
	c.mu.Unlock()
	if first {
		c.say(fmt.Sprintf("go-tuf verified %s (patch %s, sha256 %.12s..., targets v%d); handsets install it",
			o.Target, o.PatchID, t.SHA256, v.view.TargetsVersion()))
	}
	return &t.Custom, nil
}

// applyDelta applies the verified delta t (downloaded as key) to the
// image of build, once per delta and build, as agent.ApplyDelta does on
// a handset: the result must match the full image's signed hash. The
// handsets of one build share the result, as they share the download.
func (c *verifier) applyDelta(s *tufSource, t *agent.Target, key, build string, full *agent.Target) error {
	done := "delta-" + key + "-" + build
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.verified[done] {
		return nil
	}
	dst := filepath.Join(s.targetsDir, done)
	if err := agent.ApplyDelta(c.images[build], filepath.Join(s.targetsDir, key), dst, full); err != nil {
		return err
	}
	os.Remove(dst) // only its hash matters here
	c.verified[done] = true
	c.say(fmt.Sprintf("a delta from build %s applied and matched the signed full image %s", build, full.Path))
	return nil
}

// source returns the repository at metadataURL and targetsURL, creating
// its cache folders on first use.
func (c *verifier) source(metadataURL, targetsURL string) (*tufSource, error) {
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
	s := &tufSource{targetsDir: filepath.Join(base, "targets"), verifier: agent.Verifier{
		MetadataURL: metadataURL, TargetsURL: targetsURL, Root: c.root, Dir: filepath.Join(base, "metadata"),
		HTTPClient: c.hc, UserAgent: c.userAgent}}
	for _, d := range []string{s.verifier.Dir, s.targetsDir} {
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

// view returns a view younger than maxAge and made no earlier than
// notBefore, refreshing it when needed; handsets arriving during a refresh
// wait for it rather than start their own. go-tuf takes no context, so
// the refresh runs on its own goroutine (bounded by the HTTP client's
// timeout) and a handset stops waiting when its ctx ends.
func (s *tufSource) view(ctx context.Context, c *verifier, notBefore time.Time) (*tufView, error) {
	for {
		s.mu.Lock()
		if v := s.cur; v != nil && !v.at.Before(notBefore) {
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
			c.wg.Go(func() {
				v := &tufView{at: c.now(), fetches: map[string]*fetchCall{}}
				// Each refresh is a new updater starting from the newest
				// root this fleet verified (the verifier's folder).
				v.view, v.err = s.verifier.Refresh()
				s.mu.Lock()
				s.cur, s.refreshing = v, nil
				s.mu.Unlock()
				close(ch)
			})
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// The view of the refresh waited for, however young maxAge is,
		// unless it started before notBefore: then wait for the next.
		s.mu.Lock()
		v := s.cur
		s.mu.Unlock()
		if !v.at.Before(notBefore) {
			return v, v.err
		}
	}
}

// download fetches and verifies the artifact once per view; handsets
// wanting it meanwhile wait. A verification failure is kept for the view's
// life (the same mirror gives the same bytes); a network failure is not.
// The download serves many handsets, so it runs on its own goroutine,
// bounded by the HTTP client's timeout, not by one handset's ctx.
func (v *tufView) download(ctx context.Context, c *verifier, s *tufSource, t *agent.Target, key string) error {
	v.mu.Lock()
	call, ok := v.fetches[key]
	if !ok {
		call = &fetchCall{done: make(chan struct{})}
		v.fetches[key] = call
		c.wg.Go(func() {
			defer close(call.done)
			// The verified copy is written under its sha256, never under
			// the target's name, so two versions of one path cannot
			// collide.
			_, err := t.Fetch(context.Background(), filepath.Join(s.targetsDir, key),
				agent.FetchOptions{Client: c.hc, UserAgent: c.userAgent})
			if err == nil {
				return
			}
			call.err = err
			if agent.Transient(err) {
				v.mu.Lock()
				delete(v.fetches, key)
				v.mu.Unlock()
			}
		})
	}
	v.mu.Unlock()
	select {
	case <-call.done:
		return call.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
