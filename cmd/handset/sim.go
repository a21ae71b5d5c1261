package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/due"
)

// sim is a run: the handsets, the shared clients and the counters.
//
// Goroutines: one dispatcher and --concurrency workers, whatever the
// number of handsets. A handset is an index in a time-ordered heap; the
// dispatcher hands due handsets to free workers, a worker runs its steps
// (a request, or a TUF update, each) while they are due at once and pushes
// the handset back with the time of its next step. Waiting for a poll or a Retry-After costs a heap
// entry, not a goroutine or a worker, and at most --concurrency requests
// are in flight because only workers send them.
type sim struct {
	cfg    Config
	server *url.URL
	policy hostPolicy
	api    *client.Client // without a token: each handset calls through s.as
	tuf    *tufClient     // nil in load mode
	devs   []device
	codes  []string
	stats  *stats
	stderr io.Writer // safe for concurrent use

	// enrollOnly stops each handset after enrolling (load mode's first
	// phase).
	enrollOnly bool

	settledN   atomic.Int64
	allSettled chan struct{}
	settleOnce sync.Once
	lastGiveUp atomic.Value // string: why the last handset gave up

	offersMu  sync.Mutex
	offers    map[offer]*offer
	warnedURL atomic.Bool
}

// settle marks a handset as having nothing left to do in this run; when
// all have, the run ends.
func (s *sim) settle(d *device) {
	if d.settled {
		return
	}
	d.settled = true
	if s.settledN.Add(1) == int64(len(s.devs)) {
		s.settleOnce.Do(func() { close(s.allSettled) })
	}
}

// resolve returns the absolute URL of an offered location, or the
// server's default when the offer names none or names a host outside the
// policy: no answer can make the simulator contact another host. A
// root-relative path (what otad answers without a public URL) is relative
// to the API, so it goes under --server's path: "/tuf/" from a server
// reached at https://gw.example/ota is https://gw.example/ota/tuf/.
func (s *sim) resolve(raw, def string) string {
	root := strings.TrimSuffix(s.server.String(), "/")
	base := root + def
	if raw == "" {
		return base
	}
	if strings.HasPrefix(raw, "/") && !strings.HasPrefix(raw, "//") {
		raw = root + raw
	}
	u, err := s.server.Parse(raw)
	if err != nil || !s.policy.allows(u) {
		if s.warnedURL.CompareAndSwap(false, true) {
			fmt.Fprintf(s.stderr, "handset: warning: ignoring offered URL %q (not the server; see --allow-hosts), using %s\n", raw, base)
		}
		return base
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String()
}

// intern shares one *offer among the handsets offered the same update.
func (s *sim) intern(o offer) *offer {
	s.offersMu.Lock()
	defer s.offersMu.Unlock()
	if p, ok := s.offers[o]; ok {
		return p
	}
	p := &o
	if len(s.offers) < 1024 {
		s.offers[o] = p
	}
	return p
}

// drive runs the scheduler and workers until stop ends. Steps in flight
// then finish (a request cut off would be a spurious error in the
// server's log), for at most --request-timeout; ctx ending cancels them
// at once.
func (s *sim) drive(ctx, stop context.Context, sched *due.Scheduler) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int32)
	var wg sync.WaitGroup
	for range s.cfg.Concurrency {
		wg.Go(func() {
			for i := range work {
				s.run(ctx, stop, sched, i)
			}
		})
	}
	sched.Dispatch(stop, work)
	close(work)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	grace := time.NewTimer(s.cfg.RequestTimeout)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		cancel()
		<-done
	}
}

// maxChain bounds how many due steps of one handset a worker runs in a
// row before handing it back to the scheduler.
const maxChain = 16

// run runs handset i's steps while they are due at once, so that an
// install goes from offer to installed without waiting behind every other
// handset's step (depth first, as real handsets run), then schedules it.
func (s *sim) run(ctx, stop context.Context, sched *due.Scheduler, i int32) {
	d := &s.devs[i]
	for n := 1; ; n++ {
		next, ok := s.step(ctx, d)
		if !ok {
			return
		}
		if n >= maxChain || next.After(time.Now()) || stop.Err() != nil {
			sched.Push(i, next)
			return
		}
	}
}

// untilSettled runs every handset from enrollment until all are settled,
// ctx ends or the timeout passes; it reports whether all settled.
func (s *sim) untilSettled(ctx context.Context, timeout time.Duration) bool {
	stop, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sched := due.New(len(s.devs))
	now := time.Now()
	for i := range s.devs {
		sched.Push(int32(i), now)
	}
	go func() {
		select {
		case <-s.allSettled:
			cancel()
		case <-stop.Done():
		}
	}()
	stopProgress := s.progress(stop)
	s.drive(ctx, stop, sched)
	stopProgress()
	select {
	case <-s.allSettled:
		return true
	default:
		return false
	}
}

// progress prints a line to stderr every --progress until stopped.
func (s *sim) progress(ctx context.Context) (stop func()) {
	if s.cfg.Progress <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.Progress)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				st := s.stats
				fmt.Fprintf(s.stderr, "handset: %s: enrolled %d/%d, installed %d, failed %d, settled %d, check-ins %d, reports %d\n",
					time.Since(start).Round(time.Second), st.enrolled.Load(), len(s.devs), st.installed.Load(), st.failed.Load(),
					s.settledN.Load(), st.checkins.Load(), st.reports.Load())
			}
		}
	}()
	return func() { cancel(); <-done }
}

// erase deletes every enrolled handset from the server, --concurrency at
// a time; it returns how many were erased.
func (s *sim) erase(ctx context.Context) int64 {
	ctx, cancel := context.WithTimeout(ctx, max(2*s.cfg.RequestTimeout, time.Minute))
	defer cancel()
	var next, erased atomic.Int64
	var wg sync.WaitGroup
	for range min(s.cfg.Concurrency, len(s.devs)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(s.devs)) {
					return
				}
				d := &s.devs[i]
				if d.token == "" {
					continue
				}
				if err := s.as(d).EraseSelf(ctx); err != nil {
					s.stats.addError("erase", err)
					continue
				}
				d.token = ""
				erased.Add(1)
			}
		})
	}
	wg.Wait()
	return erased.Load()
}

// lockedWriter serialises writes from the workers and the progress
// printer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
