package sqlstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"gorm.io/gorm"
)

// claimOffersSQL takes n offers at once from a minute's budget in one
// statement: the first claim of a minute inserts n, later ones add n
// while the sum stays within the cap. PostgreSQL locks the conflicting
// row and evaluates the DO UPDATE's WHERE on its latest version, and
// SQLite has one writer at a time, so concurrent claims from any number
// of replicas never pass the cap; a claim that does not fit changes no
// row.
//
// The claim takes n or nothing, not min(n, cap - taken): both dialects
// return only the row after the change (RETURNING has no old values
// before PostgreSQL 18), so a claim clipped at the cap could not tell
// how many it got. A claim that does not fit is tried again with half
// as many (offerBudget.take), which takes the rest of the minute's
// budget exactly, in at most log2(chunk) more statements per replica.
const claimOffersSQL = `INSERT INTO rollout_offer_budget (rollout_id, minute, n) VALUES (?, ?, ?)
ON CONFLICT (rollout_id, minute) DO UPDATE SET n = rollout_offer_budget.n + excluded.n
WHERE rollout_offer_budget.n + excluded.n <= ?`

// maxOfferChunk bounds offerChunk: see there.
const maxOfferChunk = 32

// offerChunk is how many offers a replica claims at once from the
// shared budget of a rollout capped at limit a minute: an eighth of the
// cap, at least 1 and at most maxOfferChunk.
//
// The trade-off: the shared row is written once a chunk instead of once
// an offer (8 to 11 full chunks a minute for caps from 16 to 256,
// limit/32 above, plus a few claims of the rest at the end of the
// minute, whatever the number of replicas and check-ins), but the offers
// a replica claimed and did not make before the minute ends are lost
// for that minute: the cap is never exceeded, but each replica may
// make up to chunk-1 offers fewer than the cap allows (chunk when its
// last offer raced and was given back). That matters only when a
// rollout's demand is near its cap: above it, every replica uses up
// what it claimed before it is refused. An eighth keeps the loss to at
// most an eighth of the cap per replica; 32 keeps it small for large
// caps, where limit/32 claims a minute (313 at 10,000 offers a minute,
// 5 a second) are still far from a hot row. Below a cap of 16 the chunk
// is 1, one claim per offer as before: at most 15 offers a minute do
// not make a hot row.
func offerChunk(limit int) int {
	return max(1, min(maxOfferChunk, limit/8))
}

// offerBudget is a replica's allowance of offers per rollout: offers it
// claimed from the shared budget (rollout_offer_budget) in chunks of
// offerChunk and hands out one by one without touching the database, so
// that the offers of a rollout wave do not all queue on the lock of one
// row. One DB (one otad replica) has one; it is safe for concurrent use.
//
// It keeps only the newest minute it was asked about (its clock is the
// check-ins' time): the allowances of a minute are dropped when a later
// one is asked for, and a minute that has passed is never claimed again
// (a check-in of that minute that comes late is refused, as if the cap
// were reached, and told to come back in a minute). So it holds one
// allowance per rollout offering in the current minute, at most the
// open rollouts (--max-open-rollouts).
type offerBudget struct {
	db *gorm.DB

	mu     sync.Mutex
	minute time.Time             // the newest minute asked for
	by     map[string]*allowance // by rollout id, all of minute
}

// allowance is one rollout's offers of the current minute.
type allowance struct {
	limit int  // the cap its offers were claimed under
	left  int  // claimed and not handed out
	next  int  // how many the next claim asks for
	full  bool // the shared budget had no room even for one: claim no more
	// claiming is closed when the claim in flight ends; nil when none
	// is. One claim at a time per rollout: the others wait for it
	// rather than each claim a chunk, which would leave up to a chunk
	// per waiting goroutine unused.
	claiming chan struct{}
}

func newOfferBudget(db *gorm.DB) *offerBudget {
	return &offerBudget{db: db, by: map[string]*allowance{}}
}

// take takes one offer of rollout rolloutID for the minute that holds
// minute from the allowance, claiming a chunk from the shared budget
// (capped at limit, above 0) when the allowance is spent, and reports
// whether there was one. It waits for a claim of the same rollout in
// flight, or for ctx to end.
func (b *offerBudget) take(ctx context.Context, rolloutID string, minute time.Time, limit int) (bool, error) {
	minute = dbTime(minute).Truncate(time.Minute)
	b.mu.Lock()
	for {
		switch {
		case minute.Before(b.minute):
			b.mu.Unlock()
			return false, nil
		case minute.After(b.minute):
			b.minute = minute
			clear(b.by)
		}
		a := b.by[rolloutID]
		if a == nil {
			a = &allowance{limit: limit, next: offerChunk(limit)}
			b.by[rolloutID] = a
		}
		if limit != a.limit {
			// The cap was changed within the minute. What was claimed
			// under a higher cap could pass a lower one: drop it. A
			// higher cap may have room again.
			if limit < a.limit {
				a.left = 0
			}
			a.limit, a.next, a.full = limit, offerChunk(limit), false
		}
		if a.left > 0 {
			a.left--
			b.mu.Unlock()
			return true, nil
		}
		if a.full {
			b.mu.Unlock()
			return false, nil
		}
		if ch := a.claiming; ch != nil {
			b.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return false, fmt.Errorf("wait for the claim of offers in flight: %w", ctx.Err())
			}
			b.mu.Lock()
			continue
		}
		n, ch := a.next, make(chan struct{})
		a.claiming = ch
		b.mu.Unlock()
		res := b.db.WithContext(ctx).Exec(claimOffersSQL, rolloutID, minute, n, limit)
		b.mu.Lock()
		a.claiming = nil
		close(ch)
		if res.Error != nil {
			// Whether it committed is unknown: count it as not, which
			// may lose offers and never passes the cap.
			b.mu.Unlock()
			return false, fmt.Errorf("claim %d offers: %w", n, res.Error)
		}
		if res.RowsAffected == 1 {
			// One for this offer, the rest for the next ones. An
			// allowance dropped meanwhile (a later minute was asked
			// for, or the cap changed) loses the rest; this offer is of
			// the minute it was claimed for.
			if a.limit == limit {
				a.left += n - 1
			}
			b.mu.Unlock()
			return true, nil
		}
		if a.limit == limit {
			if n > 1 {
				a.next = n / 2
			} else {
				a.full = true
			}
		}
	}
}

// giveBack returns to the allowance an offer that take handed out and
// that was surely not made (another check-in of the handset made it):
// the next offer of the minute takes it without a claim.
// An offer of a passed minute, or taken under another cap, is dropped.
func (b *offerBudget) giveBack(rolloutID string, minute time.Time, limit int) {
	minute = dbTime(minute).Truncate(time.Minute)
	b.mu.Lock()
	defer b.mu.Unlock()
	if a := b.by[rolloutID]; a != nil && minute.Equal(b.minute) && a.limit == limit {
		a.left++
	}
}
