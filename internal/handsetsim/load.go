package handsetsim

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchfleet/ota/client"
)

// Load checks in the fleet's enrolled handsets (those with a token)
// round-robin, as fast as Workers workers manage, for d, and returns how
// many check-ins succeeded; Counts has their latency and the errors.
// Offers are not acted on: this measures the check-in path. A worker told
// to back off (429) waits Retry-After; one seeing network errors backs
// off so a dead server is not spun on. Requests in flight at the end
// finish, so that the server does not log cut-off requests as errors.
func (f *Fleet) Load(ctx context.Context, d time.Duration) (checkIns int64, elapsed time.Duration) {
	var enrolled []int32
	for i := range f.devs {
		if f.devs[i].Token != "" {
			enrolled = append(enrolled, int32(i))
		}
	}
	if len(enrolled) == 0 {
		return 0, 0
	}
	start := time.Now()
	stop, cancel := context.WithDeadline(ctx, start.Add(d))
	defer cancel()
	var next atomic.Uint64
	var n atomic.Int64
	var wg sync.WaitGroup
	for range f.cfg.Workers {
		wg.Go(func() {
			failures := 0
			for stop.Err() == nil {
				// Handsets are only read here, so two workers may share
				// one when there are fewer handsets than workers.
				h := &f.devs[enrolled[(next.Add(1)-1)%uint64(len(enrolled))]]
				t0 := time.Now()
				_, err := f.as(h).CheckIn(ctx, f.checkInBody(h))
				if err != nil {
					if ctx.Err() != nil {
						return // interrupted: not an error of the server
					}
					f.addError("checkin", err)
					wait, ok := client.RetryAfter(err)
					if !ok && client.Temporary(err) {
						failures = min(failures+1, 4)
						wait = f.backoff(failures)
					}
					sleep(stop, wait)
					continue
				}
				failures = 0
				f.stats.latency.record(time.Since(t0))
				f.stats.checkins.Add(1)
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), time.Since(start)
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
