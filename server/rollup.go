package server

import (
	"hash/fnv"
	"math"
	"time"

	"github.com/patchfleet/ota/server/rollout"
)

// Rollups are the counters reports read instead of the fleet. The store
// keeps them in the transactions that change what they count; these are
// the definitions both sides share.

// RollupShards is how many rows a hot counter is spread over: a counter
// row that every first offer of a wide stage increments would otherwise
// serialise those check-ins on PostgreSQL's row lock. Readers sum the
// shards.
const RollupShards = 8

// RollupShard is the shard of deviceID's counter increments: fixed per
// device, so that a device's decrement finds the row its increment made.
func RollupShard(deviceID string) int {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return int(h.Sum32() % RollupShards)
}

// installTimeSteps is how many buckets InstallTimeBucket makes per
// doubling of the time: bounds about 9% apart, so a percentile read from
// the buckets is within 9% of the true one.
const installTimeSteps = 8

// InstallTimeBucket is the bucket of an offer-to-install time d (the
// rollout_install_times rollup): floor(8 * log2(1 + seconds)), so bucket
// 0 holds times under about 0.09 s and bucket 200 about 34 years.
// Negative times (clock steps) fall in bucket 0.
func InstallTimeBucket(d time.Duration) int {
	s := max(d.Seconds(), 0)
	return int(math.Floor(installTimeSteps * math.Log2(1+s)))
}

// InstallTimeBucketBounds is the range of times bucket b holds: [lo, hi).
func InstallTimeBucketBounds(b int) (lo, hi time.Duration) {
	at := func(b int) time.Duration {
		return time.Duration((math.Exp2(float64(b)/installTimeSteps) - 1) * float64(time.Second))
	}
	return at(b), at(b + 1)
}

// RolloutObserver hears what the check-in and report paths decide, for
// metrics: the HTTP layer implements it with Prometheus counters.
// Methods are called on the request's goroutine and must be cheap.
type RolloutObserver interface {
	// Decided is called for each check-in that some rollout decided on:
	// an offer (dec.Kind) or a refusal (dec.Reason).
	Decided(dec rollout.Decision)
	// Reported is called for each stored report that moved a handset's
	// record of rollout rolloutID to state.
	Reported(rolloutID, state string)
}
