package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is what load generator mode prints.
type loadResult struct {
	Mode              string           `json:"mode"`
	Handsets          int              `json:"handsets"`
	Enrolled          int              `json:"enrolled"`
	Concurrency       int              `json:"concurrency"`
	EnrollSeconds     float64          `json:"enroll_seconds"`
	DurationSeconds   float64          `json:"duration_seconds"`
	CheckIns          int64            `json:"checkins"`
	CheckInsPerSecond float64          `json:"checkins_per_second"`
	Latency           latencySummary   `json:"latency"`
	Errors            map[string]int64 `json:"errors"`
	Erased            *int64           `json:"erased,omitempty"`
}

// load checks in the enrolled handsets round-robin, as fast as
// --concurrency workers manage, for --duration. Offers are not acted on:
// this measures the check-in path. A worker told to back off (429) waits
// Retry-After; one seeing network errors backs off briefly so a dead
// server is not spun on.
func (s *sim) load(ctx context.Context, enrolled []int32) *loadResult {
	start := time.Now()
	end := start.Add(s.cfg.Duration)
	// No new request after end; those in flight finish, so that the
	// server does not log cut-off requests as errors.
	stop, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	stopProgress := s.progress(stop)
	var next atomic.Uint64
	var wg sync.WaitGroup
	for range s.cfg.Concurrency {
		wg.Go(func() {
			var failures uint8
			for stop.Err() == nil {
				// Devices are only read here, so two workers may share
				// one when there are fewer handsets than workers.
				d := &s.devs[enrolled[(next.Add(1)-1)%uint64(len(enrolled))]]
				t0 := time.Now()
				_, err := s.as(d).CheckIn(ctx, s.checkInBody(d))
				if err != nil {
					if ctx.Err() != nil {
						return // interrupted: not an error of the server
					}
					s.stats.addError("checkin", err)
					wait, ok := retryAfter(err)
					if !ok && transient(err) {
						failures = min(failures+1, 4)
						wait = backoff(failures)
					}
					sleep(stop, wait)
					continue
				}
				failures = 0
				s.stats.latency.record(time.Since(t0))
				s.stats.checkins.Add(1)
			}
		})
	}
	wg.Wait()
	stopProgress()
	elapsed := time.Since(start)
	n := s.stats.checkins.Load()
	return &loadResult{
		Mode: "load", Handsets: len(s.devs), Enrolled: len(enrolled), Concurrency: s.cfg.Concurrency,
		DurationSeconds:   round3(elapsed.Seconds()),
		CheckIns:          n,
		CheckInsPerSecond: round3(float64(n) / elapsed.Seconds()),
		Latency:           s.stats.latency.summary(),
		Errors:            s.stats.errorCounts(),
	}
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

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
