package sqlstore

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// readBatcher merges concurrent reads by key into one query. A read that
// finds no query running sends its own key at once; otherwise it waits,
// and when the query returns, everything that waited while it ran goes
// out together in the next. So a lone read pays no delay, and under load
// the database answers one statement for many handsets instead of one
// each. A full batch waiting (maxBatch reads) starts another query
// alongside, up to maxInFlight, so that one slow statement does not hold
// up every read. The answers are the same as separate reads: each key's
// rows come from one statement's snapshot.
type readBatcher[K comparable, V any] struct {
	// lookup reads keys (no duplicates) and returns what it found; a key
	// missing from the map was not found.
	lookup      func(ctx context.Context, keys []K) (map[K]V, error)
	maxInFlight int
	maxBatch    int
	// timeout bounds a query, which no one caller's context does: the
	// caller who started it may give up while others still wait on it.
	timeout time.Duration

	mu       sync.Mutex
	inFlight int
	pending  []*batchRead[K, V]
}

type batchRead[K comparable, V any] struct {
	key  K
	done chan batchAnswer[V] // buffered: delivery never waits on the reader
}

type batchAnswer[V any] struct {
	value V
	found bool
	err   error
}

// get reads key, alone or with others. It returns when the answer is in
// or ctx ends, whichever comes first.
func (b *readBatcher[K, V]) get(ctx context.Context, key K) (V, bool, error) {
	r := &batchRead[K, V]{key: key, done: make(chan batchAnswer[V], 1)}
	b.mu.Lock()
	b.pending = append(b.pending, r)
	var batch []*batchRead[K, V]
	if b.inFlight == 0 || (len(b.pending) >= b.maxBatch && b.inFlight < b.maxInFlight) {
		batch = b.takeLocked()
		b.inFlight++
	}
	b.mu.Unlock()
	if batch != nil {
		b.run(ctx, batch)
	}
	select {
	case a := <-r.done:
		return a.value, a.found, a.err
	case <-ctx.Done():
		var zero V
		return zero, false, ctx.Err()
	}
}

// takeLocked removes up to maxBatch pending reads, oldest first.
func (b *readBatcher[K, V]) takeLocked() []*batchRead[K, V] {
	n := min(len(b.pending), b.maxBatch)
	batch := make([]*batchRead[K, V], n)
	copy(batch, b.pending)
	rest := copy(b.pending, b.pending[n:])
	clear(b.pending[rest:])
	b.pending = b.pending[:rest]
	return batch
}

// run queries batch and answers its reads, then hands what waited in the
// meantime to a new goroutine, so that the caller who ran it returns with
// its own answer instead of serving others. The handed-on batch runs on
// a fresh context: deriving it from this one would chain every batch's
// context to the one before, for as long as reads keep coming.
func (b *readBatcher[K, V]) run(ctx context.Context, batch []*batchRead[K, V]) {
	keys := make([]K, 0, len(batch))
	seen := make(map[K]struct{}, len(batch))
	for _, r := range batch {
		if _, dup := seen[r.key]; !dup {
			seen[r.key] = struct{}{}
			keys = append(keys, r.key)
		}
	}
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	found, err := b.safeLookup(qctx, keys)
	cancel()
	for _, r := range batch {
		v, ok := found[r.key]
		r.done <- batchAnswer[V]{value: v, found: ok, err: err}
	}

	b.mu.Lock()
	if len(b.pending) == 0 {
		b.inFlight--
		b.mu.Unlock()
		return
	}
	next := b.takeLocked()
	b.mu.Unlock()
	go b.run(context.Background(), next)
}

// safeLookup is lookup with a panic turned into every reader's error: the
// batcher must go on (a panic past run would leave inFlight counted and
// every later read waiting), and the readers answer 500 as after any
// failed read.
func (b *readBatcher[K, V]) safeLookup(ctx context.Context, keys []K) (found map[K]V, err error) {
	defer func() {
		if p := recover(); p != nil {
			found, err = nil, fmt.Errorf("batched read panicked: %v", p)
		}
	}()
	return b.lookup(ctx, keys)
}
