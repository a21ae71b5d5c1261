package api

import (
	"crypto/sha256"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"

	"github.com/patchfleet/ota/server/errs"
)

// limiter is a token bucket per device (keyed by a hash of its bearer
// token). Only a token that has been accepted gets a bucket: a bucket made
// for every bearer string presented would let anyone fill memory with
// random tokens. Buckets idle for longer than idleTTL are swept, so memory
// follows the active fleet, not the enrolled one. Limits are per replica.
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

// take charges key's bucket for one request, if key has a bucket. known
// reports whether it has; wait, when positive, is how long until it may
// make a request (and nothing was charged).
func (l *limiter) take(key [32]byte, now time.Time) (known bool, wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	b, ok := l.buckets[key]
	if !ok {
		return false, 0
	}
	b.used = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return true, d
	}
	return true, 0
}

// admit gives key a bucket charged with the request it just made; key has
// proved to be a device's token.
func (l *limiter) admit(key [32]byte, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[key] = b
	}
	b.used = now
	b.lim.ReserveN(now, 1)
}

// sweep drops idle buckets, at most once a minute; l.mu is held.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.lastSweep) <= time.Minute {
		return
	}
	for k, b := range l.buckets {
		if now.Sub(b.used) > idleTTL {
			delete(l.buckets, k)
		}
	}
	l.lastSweep = now
}

func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// limit applies a per-device rate limit. A token with a bucket is charged
// before anything touches storage, and refused with 429 once its bucket
// is empty. A token without one gets a bucket only when its request
// succeeded: the check-in and report handlers answer 2xx only after the
// store matched the token to a device, so a random or erased token (401),
// or a junk token with a bad body (400), never allocates anything.
func (s *Server) limit(l *limiter) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		if l == nil {
			return next
		}
		return func(c echo.Context) error {
			key := sha256.Sum256([]byte(bearer(c)))
			known, wait := l.take(key, s.now())
			if wait > 0 {
				return &errs.RateLimitError{RetryAfter: wait}
			}
			err := next(c)
			if !known && succeeded(c, err) {
				l.admit(key, s.now())
			}
			return err
		}
	}
}

// succeeded reports whether the handler answered with a 2xx; handlers
// return errors without writing, so err != nil is a failure.
func succeeded(c echo.Context, err error) bool {
	st := c.Response().Status
	return err == nil && c.Response().Committed && st >= http.StatusOK && st < http.StatusMultipleChoices
}

// newGlobalLimiter is one token bucket shared by every client: perMinute
// a minute with bursts of burst; a zero perMinute disables it.
func newGlobalLimiter(perMinute float64, burst int) *rate.Limiter {
	if perMinute <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perMinute/60), max(burst, 1))
}

// limitTotal caps the successful requests of a route across all clients,
// for enrollment: each one creates a device, and a flood of them inflates
// the fleet counts. Only a request that succeeded is charged, so that
// refused ones (a wrong enrollment secret, a bad body) cannot use up the
// bucket and lock real handsets out; the check comes before the handler,
// so concurrent requests may overdraw the bucket by as many as are in
// flight, and the debt is paid before the next one is let in. The bucket
// refills on the server's clock.
func (s *Server) limitTotal(l *rate.Limiter) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		if l == nil {
			return next
		}
		return func(c echo.Context) error {
			now := s.now()
			if tokens := l.TokensAt(now); tokens < 1 {
				wait := time.Duration((1 - tokens) / float64(l.Limit()) * float64(time.Second))
				return &errs.RateLimitError{RetryAfter: wait}
			}
			err := next(c)
			if succeeded(c, err) {
				l.ReserveN(s.now(), 1)
			}
			return err
		}
	}
}
