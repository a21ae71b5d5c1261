// Package clock is the one fallback for the clock otad's parts share.
// It sits at the bottom of the package graph (it imports only "time"), so
// that the domain, the repository and the pages can all use it.
//
// The wiring (internal/app, from cmd/otad's wall clock or a test's fake)
// passes one func() time.Time to every part's config, so that a rollout's
// soak, a token's expiry, an audit entry's time and a rate limit's refill
// all read the same clock. A part built without the wiring (a unit test,
// a command-line tool) gets the wall clock from here, rather than each
// part repeating "if Now is nil, use time.Now".
package clock

import "time"

// Or returns now, or time.Now when now is nil: for a part that keeps its
// clock.
func Or(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}

// Now returns now(), or the wall clock's time when now is nil: for a part
// that reads its configured clock where it needs the time.
func Now(now func() time.Time) time.Time {
	if now == nil {
		return time.Now()
	}
	return now()
}
