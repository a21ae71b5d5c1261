// Package due schedules simulated handsets: a heap of (due time, handset
// index) that a dispatcher hands to a pool of workers as each comes due.
// The handset simulator (cmd/handset) and the demo's fleet (otad demo)
// both drive their handsets with it, so a waiting handset is a heap
// entry, not a goroutine.
package due

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// Scheduler is safe for concurrent use: workers push the next due time
// of the handset they just ran while Dispatch runs.
type Scheduler struct {
	mu   sync.Mutex
	h    items
	wake chan struct{}
}

type item struct {
	at  int64 // unix nanoseconds
	idx int32
}

type items []item

func (h items) Len() int { return len(h) }
func (h items) Less(i, j int) bool {
	return h[i].at < h[j].at || (h[i].at == h[j].at && h[i].idx < h[j].idx)
}
func (h items) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *items) Push(x any)   { *h = append(*h, x.(item)) }
func (h *items) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// New returns a Scheduler with room for n handsets.
func New(n int) *Scheduler {
	return &Scheduler{h: make(items, 0, n), wake: make(chan struct{}, 1)}
}

// Push makes handset idx due at at.
func (s *Scheduler) Push(idx int32, at time.Time) {
	s.mu.Lock()
	heap.Push(&s.h, item{at: at.UnixNano(), idx: idx})
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Dispatch sends due handsets to work, earliest first, until ctx ends.
// The send blocks while all workers are busy: that is the concurrency
// limit.
func (s *Scheduler) Dispatch(ctx context.Context, work chan<- int32) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if len(s.h) == 0 {
			s.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		top := s.h[0]
		wait := time.Duration(top.at - time.Now().UnixNano())
		if wait <= 0 {
			heap.Pop(&s.h)
			s.mu.Unlock()
			select {
			case work <- top.idx:
				continue
			case <-ctx.Done():
				return
			}
		}
		s.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}
