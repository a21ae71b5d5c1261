package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeLookup answers keys with "v:"+key, except "missing", and records
// each call's keys. Each call waits for a value on release, if it is set.
type fakeLookup struct {
	mu      sync.Mutex
	calls   [][]string
	ctxErrs []error       // each call's ctx.Err() when it returned
	values  []any         // each call's ctx.Value(readerKey{})
	started chan []string // each call's keys, when set
	release chan error    // what each call returns, when set
}

func (f *fakeLookup) lookup(ctx context.Context, keys []string) (map[string]string, error) {
	f.mu.Lock()
	f.calls = append(f.calls, slices.Clone(keys))
	f.values = append(f.values, ctx.Value(readerKey{}))
	f.mu.Unlock()
	if f.started != nil {
		f.started <- slices.Clone(keys)
	}
	var err error
	if f.release != nil {
		err = <-f.release
	}
	f.mu.Lock()
	f.ctxErrs = append(f.ctxErrs, ctx.Err())
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, k := range keys {
		if k != "missing" {
			out[k] = "v:" + k
		}
	}
	return out, nil
}

func (f *fakeLookup) callKeys() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeLookup) contextErrs() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ctxErrs)
}

// readerKey marks a reader's context, to see which contexts lookups run on.
type readerKey struct{}

func newTestBatcher(f *fakeLookup, maxInFlight, maxBatch int) *readBatcher[string, string] {
	return &readBatcher[string, string]{lookup: f.lookup, maxInFlight: maxInFlight, maxBatch: maxBatch, timeout: 10 * time.Second}
}

type getResult struct {
	key, value string
	found      bool
	err        error
}

func goGet(ctx context.Context, b *readBatcher[string, string], key string, out chan<- getResult) {
	go func() {
		v, ok, err := b.get(ctx, key)
		out <- getResult{key, v, ok, err}
	}()
}

// waitPending waits, in a synctest bubble, until every reader has
// queued or returned, and checks that n reads are queued behind the
// running query.
func waitPending(t *testing.T, b *readBatcher[string, string], n int) {
	t.Helper()
	synctest.Wait()
	b.mu.Lock()
	got := len(b.pending)
	b.mu.Unlock()
	if got != n {
		t.Fatalf("pending reads: got %d, want %d", got, n)
	}
}

func TestReadBatcherLoneReadGoesAtOnce(t *testing.T) {
	f := &fakeLookup{}
	b := newTestBatcher(f, 4, 64)
	for _, key := range []string{"a", "missing", "a"} {
		v, ok, err := b.get(t.Context(), key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if want := key != "missing"; ok != want || (ok && v != "v:"+key) {
			t.Errorf("get %s: got (%q, %v), want (%q, %v)", key, v, ok, "v:"+key, want)
		}
	}
	if got := f.callKeys(); !slices.EqualFunc(got, [][]string{{"a"}, {"missing"}, {"a"}}, slices.Equal) {
		t.Errorf("lookups: got %v, want one per read", got)
	}
}

// Reads that arrive while a query runs go out together, once each key,
// when it returns, and each gets its own answer.
func TestReadBatcherMergesWaitingReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeLookup{started: make(chan []string, 8), release: make(chan error, 8)}
		b := newTestBatcher(f, 4, 64)
		out := make(chan getResult, 8)
		goGet(context.WithValue(t.Context(), readerKey{}, "first"), b, "first", out)
		if got := <-f.started; !slices.Equal(got, []string{"first"}) {
			t.Fatalf("first lookup: got %v", got)
		}
		waiting := []string{"b", "c", "c", "missing", "d"}
		for _, k := range waiting {
			goGet(t.Context(), b, k, out)
		}
		waitPending(t, b, len(waiting))
		select {
		case keys := <-f.started:
			t.Fatalf("a second lookup %v started while the first ran and no batch was full", keys)
		default: // waitPending saw every reader queued or blocked
		}
		f.release <- nil
		second := <-f.started
		slices.Sort(second)
		if want := []string{"b", "c", "d", "missing"}; !slices.Equal(second, want) {
			t.Errorf("second lookup: got %v, want %v (each key once)", second, want)
		}
		f.release <- nil
		for range 1 + len(waiting) {
			r := <-out
			if r.err != nil {
				t.Errorf("get %s: %v", r.key, r.err)
				continue
			}
			if want := r.key != "missing"; r.found != want || (r.found && r.value != "v:"+r.key) {
				t.Errorf("get %s: got (%q, %v)", r.key, r.value, r.found)
			}
		}
		if n := len(f.callKeys()); n != 2 {
			t.Errorf("lookups: got %d, want 2", n)
		}
		// The first lookup runs on its reader's context (less its
		// cancellation); the handed-on one on a fresh context, so that under
		// steady load contexts do not chain from batch to batch.
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.values[0] != "first" || f.values[1] != nil {
			t.Errorf("lookup contexts carry %v, want [first <nil>]", f.values)
		}
	})
}

// A full batch waiting starts another query beside the running one, up to
// maxInFlight; what is left waits.
func TestReadBatcherFullBatchRunsAlongside(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeLookup{started: make(chan []string, 8), release: make(chan error, 8)}
		b := newTestBatcher(f, 2, 2)
		out := make(chan getResult, 8)
		goGet(t.Context(), b, "k0", out)
		<-f.started
		goGet(t.Context(), b, "k1", out)
		waitPending(t, b, 1)
		goGet(t.Context(), b, "k2", out) // the batch of two is full
		second := <-f.started
		slices.Sort(second)
		if !slices.Equal(second, []string{"k1", "k2"}) {
			t.Fatalf("second lookup: got %v, want [k1 k2] beside the first", second)
		}
		goGet(t.Context(), b, "k3", out)
		goGet(t.Context(), b, "k4", out)
		waitPending(t, b, 2) // two in flight: a full batch waits
		for range 2 {
			f.release <- nil
		}
		third := <-f.started
		slices.Sort(third)
		if !slices.Equal(third, []string{"k3", "k4"}) {
			t.Errorf("third lookup: got %v, want [k3 k4]", third)
		}
		f.release <- nil
		for range 5 {
			if r := <-out; r.err != nil || r.value != "v:"+r.key {
				t.Errorf("get %s: got (%q, %v)", r.key, r.value, r.err)
			}
		}
	})
}

// A failed query fails every read in it, and the next batch is tried
// afresh.
func TestReadBatcherErrorReachesItsBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeLookup{started: make(chan []string, 8), release: make(chan error, 8)}
		b := newTestBatcher(f, 4, 64)
		out := make(chan getResult, 8)
		goGet(t.Context(), b, "a", out)
		<-f.started
		goGet(t.Context(), b, "b", out)
		goGet(t.Context(), b, "c", out)
		waitPending(t, b, 2)
		boom := errors.New("connection reset")
		f.release <- boom
		<-f.started
		f.release <- nil
		got := map[string]getResult{}
		for range 3 {
			r := <-out
			got[r.key] = r
		}
		if !errors.Is(got["a"].err, boom) {
			t.Errorf("a: got %v, want the lookup's error", got["a"].err)
		}
		for _, k := range []string{"b", "c"} {
			if got[k].err != nil || got[k].value != "v:"+k {
				t.Errorf("%s: got (%q, %v), want its value from the next lookup", k, got[k].value, got[k].err)
			}
		}
	})
}

// A reader that gives up returns at once with its context's error, and
// the query goes on for the others: not even the reader that started it
// cancels it.
func TestReadBatcherReaderGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeLookup{started: make(chan []string, 8), release: make(chan error, 8)}
		b := newTestBatcher(f, 4, 64)
		out := make(chan getResult, 8)
		leadCtx, cancelLead := context.WithCancel(t.Context())
		goGet(leadCtx, b, "lead", out)
		<-f.started
		cancelLead()
		quitCtx, quit := context.WithCancel(t.Context())
		goGet(quitCtx, b, "quitter", out)
		goGet(t.Context(), b, "stayer", out)
		waitPending(t, b, 2)
		quit()
		synctest.Wait() // the quitter has returned, or never will
		select {
		case r := <-out:
			if r.key != "quitter" || !errors.Is(r.err, context.Canceled) {
				t.Fatalf("first answer: got %s %v, want quitter with context.Canceled", r.key, r.err)
			}
		default:
			t.Fatal("a reader whose context ended did not return")
		}
		f.release <- nil
		<-f.started
		f.release <- nil
		for range 2 {
			r := <-out
			switch r.key {
			case "lead":
				// It ran the query itself and its context ended meanwhile:
				// either answer will do, but a value must be its own.
				if r.err == nil && r.value != "v:lead" {
					t.Errorf("lead: got %q", r.value)
				}
			case "stayer":
				if r.err != nil || r.value != "v:stayer" {
					t.Errorf("stayer: got (%q, %v), want its value", r.value, r.err)
				}
			default:
				t.Errorf("unexpected answer for %s", r.key)
			}
		}
		for i, err := range f.contextErrs() {
			if err != nil {
				t.Errorf("lookup %d: its context ended (%v); no reader's context may end a query", i, err)
			}
		}
	})
}

// A lookup that panics fails its readers, and the batcher goes on.
func TestReadBatcherSurvivesAPanic(t *testing.T) {
	f := &fakeLookup{}
	b := newTestBatcher(f, 1, 64)
	inner := b.lookup
	b.lookup = func(ctx context.Context, keys []string) (map[string]string, error) {
		if slices.Contains(keys, "boom") {
			panic("scan went wrong")
		}
		return inner(ctx, keys)
	}
	if _, _, err := b.get(t.Context(), "boom"); err == nil {
		t.Fatal("a read whose lookup panicked: got no error")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // only bounds a hang
	defer cancel()
	if v, ok, err := b.get(ctx, "after"); err != nil || !ok || v != "v:after" {
		t.Errorf("read after the panic: got (%q, %v, %v), want its value", v, ok, err)
	}
}

// Many readers at once each get their own key's value.
func TestReadBatcherConcurrentReaders(t *testing.T) {
	f := &fakeLookup{}
	b := newTestBatcher(f, 2, 8)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Go(func() {
			for j := range 50 {
				key := fmt.Sprintf("k%d-%d", i, j%5)
				v, ok, err := b.get(t.Context(), key)
				if err != nil || !ok || v != "v:"+key {
					errs <- fmt.Errorf("get %s: got (%q, %v, %v)", key, v, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inFlight != 0 || len(b.pending) != 0 {
		t.Errorf("after the readers: %d in flight, %d pending, want none", b.inFlight, len(b.pending))
	}
}
