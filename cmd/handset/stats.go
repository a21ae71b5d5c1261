package main

import (
	"maps"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// stats are the counters of a run, shared by all workers.
type stats struct {
	enrolled    atomic.Int64 // devices enrolled at least once
	enrolledNew atomic.Int64 // 201 answers
	reenrolled  atomic.Int64 // 200 answers
	checkins    atomic.Int64
	reports     atomic.Int64
	duplicates  atomic.Int64
	retries     atomic.Int64
	dropped     atomic.Int64
	installed   atomic.Int64
	failed      atomic.Int64
	gaveUp      atomic.Int64
	latency     histogram // successful check-ins

	mu      sync.Mutex
	errors  map[string]int64
	noOffer map[string]int64 // check-ins answered without an offer, by the no_offer reason
}

func newStats() *stats { return &stats{errors: map[string]int64{}, noOffer: map[string]int64{}} }

// maxNoOfferReasons bounds the reasons counted apart: a server sending a
// new reason on every answer must not grow the map without end.
const maxNoOfferReasons = 32

// addNoOffer counts a check-in answered no_offer reason, and says
// whether it is the first of that reason (the run prints those).
func (s *stats) addNoOffer(reason string) (first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.noOffer[reason]; !ok && len(s.noOffer) >= maxNoOfferReasons {
		reason = "other"
	}
	s.noOffer[reason]++
	return s.noOffer[reason] == 1
}

func (s *stats) noOfferCounts() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.noOffer)
}

// addError counts err under "op:kind", e.g. "checkin:rate_limited".
func (s *stats) addError(op string, err error) { s.addErrorKind(op + ":" + errorKind(err)) }

func (s *stats) addErrorKind(kind string) {
	s.mu.Lock()
	s.errors[kind]++
	s.mu.Unlock()
}

func (s *stats) errorCounts() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.errors)
}

// histogram counts durations in logarithmic buckets: 16 per power of two
// of microseconds, so a quantile is off by at most 1/16 (6%). It is a
// fixed 5 KB however many samples it takes, and lock-free.
type histogram struct {
	counts [histPowers * histSub]atomic.Uint64
	n      atomic.Uint64
	max    atomic.Int64
}

const (
	histPowers = 40 // 2^40 µs is 12 days
	histSub    = 16
)

func histBucket(d time.Duration) int {
	us := uint64(max(d.Microseconds(), 1))
	e := bits.Len64(us) - 1
	if e >= histPowers {
		return histPowers*histSub - 1
	}
	sub := 0
	if e > 0 {
		sub = int((us - 1<<e) * histSub >> e)
	}
	return e*histSub + sub
}

// histUpper is the largest duration bucket i holds.
func histUpper(i int) time.Duration {
	e, sub := i/histSub, i%histSub
	lo := float64(uint64(1) << e)
	return time.Duration(lo*(1+float64(sub+1)/histSub)) * time.Microsecond
}

func (h *histogram) record(d time.Duration) {
	h.counts[histBucket(d)].Add(1)
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// quantile returns the duration below which a fraction q of the samples
// fall (rounded up to its bucket), never more than the maximum seen.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	maxSeen := time.Duration(h.max.Load())
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			if i == len(h.counts)-1 {
				return maxSeen // the overflow bucket has no upper bound
			}
			return min(histUpper(i), maxSeen)
		}
	}
	return maxSeen
}

// latencySummary is a histogram as the result shows it, in milliseconds.
type latencySummary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func (h *histogram) summary() latencySummary {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*1000) / 1000 }
	return latencySummary{Count: h.n.Load(), P50: ms(h.quantile(0.50)), P95: ms(h.quantile(0.95)),
		P99: ms(h.quantile(0.99)), Max: ms(time.Duration(h.max.Load()))}
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
