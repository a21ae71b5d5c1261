package due

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestDispatchOrder: handsets come out earliest due first, ties by
// index, each at its due time (the bubble's clock: no wait, and exact).
func TestDispatchOrder(t *testing.T) { synctest.Test(t, testDispatchOrder) }

func testDispatchOrder(t *testing.T) {
	s := New(4)
	now := time.Now()
	s.Push(2, now.Add(60*time.Millisecond))
	s.Push(1, now.Add(30*time.Millisecond))
	s.Push(3, now.Add(30*time.Millisecond))
	s.Push(0, now)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	work := make(chan int32)
	go s.Dispatch(ctx, work)
	var got []int32
	for range 4 {
		idx := <-work
		due := map[int32]time.Duration{0: 0, 1: 30 * time.Millisecond, 3: 30 * time.Millisecond, 2: 60 * time.Millisecond}[idx]
		if got := time.Since(now); got != due {
			t.Errorf("handset %d dispatched after %s, want at its due time %s", idx, got, due)
		}
		got = append(got, idx)
	}
	want := []int32{0, 1, 3, 2}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("dispatched %v, want %v", got, want)
		}
	}
}

// TestDispatchStops: Dispatch returns when its ctx ends, also while it
// waits on a handset not yet due or on a busy worker pool.
func TestDispatchStops(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   time.Duration
	}{{"waiting for a due time", time.Hour}, {"waiting for a worker", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := New(1)
				s.Push(0, time.Now().Add(tc.at))
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan struct{})
				go func() { s.Dispatch(ctx, make(chan int32)); close(done) }()
				synctest.Wait() // Dispatch waits: for the due time, or for a worker
				select {
				case <-done:
					t.Fatal("Dispatch returned before its ctx ended")
				default:
				}
				cancel()
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatal("Dispatch did not return after its ctx ended")
				}
			})
		})
	}
}
