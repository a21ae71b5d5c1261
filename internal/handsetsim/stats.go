package handsetsim

import (
	"maps"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// stats are the counters of a run, shared by all workers.
type stats struct {
	enrolled    atomic.Int64 // devices enrolled at least once
	enrolledNew atomic.Int64 // 201 answers
	reenrolled  atomic.Int64 // 200 answers
	offered     atomic.Int64 // handsets offered a patch at least once
	checkins    atomic.Int64
	reports     atomic.Int64
	duplicates  atomic.Int64
	retries     atomic.Int64
	dropped     atomic.Int64
	installed   atomic.Int64 // handsets whose last install succeeded
	failed      atomic.Int64 // handsets whose last install failed
	gaveUp      atomic.Int64
	silent      atomic.Int64 // bricked by an install (Outcome.Silent)
	latency     histogram    // successful check-ins

	mu      sync.Mutex
	errors  map[string]int64
	noOffer map[string]int64 // check-ins answered without an offer, by the no_offer reason
}

func newStats() *stats { return &stats{errors: map[string]int64{}, noOffer: map[string]int64{}} }

// Counts are a fleet's counters at one moment.
type Counts struct {
	// Enrolled handsets enrolled at least once in this run; EnrolledNew
	// were new to the server (201), Reenrolled known to it (200).
	Enrolled, EnrolledNew, Reenrolled int64
	// Offered handsets were offered a patch at least once.
	Offered int64
	// Installed and Failed count handsets by their last install's
	// result; GaveUp those the server refused for good.
	Installed, Failed, GaveUp int64
	// Silent handsets went silent after an install (Outcome.Silent).
	Silent   int64
	CheckIns int64
	// Reports acknowledged, of which Duplicates the server already had;
	// Retries sent again, Dropped never acknowledged.
	Reports, Duplicates, Retries, Dropped int64
	// CheckInLatency is of successful check-ins.
	CheckInLatency LatencySummary
	// Errors counts failed requests as "op:kind" (ErrorKind), e.g.
	// "checkin:rate_limited" or "tuf:E_DOWNLOAD".
	Errors map[string]int64
	// NoOffer counts check-ins answered without an offer, by reason.
	NoOffer map[string]int64
}

// ErrorCount is the number of failed requests of every kind.
func (c Counts) ErrorCount() int64 {
	var n int64
	for _, v := range c.Errors {
		n += v
	}
	return n
}

func (s *stats) counts() Counts {
	return Counts{Enrolled: s.enrolled.Load(), EnrolledNew: s.enrolledNew.Load(), Reenrolled: s.reenrolled.Load(),
		Offered: s.offered.Load(), Installed: s.installed.Load(), Failed: s.failed.Load(), GaveUp: s.gaveUp.Load(), Silent: s.silent.Load(),
		CheckIns: s.checkins.Load(), Reports: s.reports.Load(), Duplicates: s.duplicates.Load(),
		Retries: s.retries.Load(), Dropped: s.dropped.Load(), CheckInLatency: s.latency.summary(),
		Errors: s.errorCounts(), NoOffer: s.noOfferCounts()}
}

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

// addError counts err under "op:kind", e.g. "checkin:rate_limited",
// and says whether it is the first of its kind.
func (s *stats) addError(op string, err error) (first bool) {
	return s.addErrorKind(op + ":" + ErrorKind(err))
}

func (s *stats) addErrorKind(kind string) (first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors[kind]++
	return s.errors[kind] == 1
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

// LatencySummary is a histogram as a run's result shows it, in
// milliseconds.
type LatencySummary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func (h *histogram) summary() LatencySummary {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*1000) / 1000 }
	return LatencySummary{Count: h.n.Load(), P50: ms(h.quantile(0.50)), P95: ms(h.quantile(0.95)),
		P99: ms(h.quantile(0.99)), Max: ms(time.Duration(h.max.Load()))}
}
