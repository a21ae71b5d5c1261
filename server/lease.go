package server

import (
	"context"
	"time"
)

// Lease elects the one replica that runs a background job, such as the
// rollout policies: a named row in the store shared by all replicas that
// one holder has until it expires. A holder renews it by acquiring it
// again before then; a replica that dies stops renewing, and another
// takes the lease over once it expires.
type Lease interface {
	// Acquire takes the lease for holder until now+ttl and reports
	// whether holder has it: when nobody holds it, when its holder let
	// it expire before now, or when holder has it already (a renewal).
	// Of replicas acquiring at once, at most one gets it.
	Acquire(ctx context.Context, holder string, ttl time.Duration, now time.Time) (bool, error)
	// Release gives the lease up if holder has it, so that another
	// replica need not wait for it to expire.
	Release(ctx context.Context, holder string) error
}
