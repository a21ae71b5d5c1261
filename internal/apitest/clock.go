package apitest

import (
	"sync"
	"time"
)

// AheadClock is real time plus an offset a test moves forward: simulated
// handsets and agents run in real time, while the server (Options.Now)
// can be put past a policy's window or backoff without waiting for it.
type AheadClock struct {
	mu     sync.Mutex
	offset time.Duration
}

// Now is the real time plus the offset.
func (c *AheadClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// Advance moves the clock forward by d.
func (c *AheadClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}
