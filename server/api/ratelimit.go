package api

import (
	"crypto/sha256"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter is a token bucket per key (a hash of the bearer token). Entries
// idle for longer than idleTTL are swept, so memory follows the active
// fleet, not the enrolled one. Limits are per replica.
type limiter struct {
	rate  rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[[32]byte]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

const idleTTL = 10 * time.Minute

// newLimiter allows perMinute requests a minute with bursts of burst; a
// zero perMinute disables limiting.
func newLimiter(perMinute float64, burst int) *limiter {
	if perMinute <= 0 {
		return nil
	}
	return &limiter{rate: rate.Limit(perMinute / 60), burst: max(burst, 1), buckets: map[[32]byte]*bucket{}}
}

// allow reports whether key may make a request now, and if not, how long
// until it may.
func (l *limiter) allow(key string, now time.Time) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	h := sha256.Sum256([]byte(key))
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) > time.Minute {
		for k, b := range l.buckets {
			if now.Sub(b.used) > idleTTL {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b, ok := l.buckets[h]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[h] = b
	}
	b.used = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
