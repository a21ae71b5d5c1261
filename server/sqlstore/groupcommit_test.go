package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestGroupCommit checks the PostgreSQL write batcher (DB.write): writes
// that wait while a batch runs commit together, a failing write fails
// alone, and a write withdrawn before a batch took it never runs.
func TestGroupCommit(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"GroupsWaitingWrites", testGroupsWaitingWrites},
		{"FailingWriteFailsAlone", testFailingWriteFailsAlone},
		{"WithdrawnWriteNeverRuns", testWithdrawnWriteNeverRuns},
	})
}

// groupDB opens a migrated PostgreSQL database with a scratch table and
// a batcher that starts no second batch beside the first (so that what
// waits makes one batch).
func groupDB(t *testing.T, b backend) *DB {
	t.Helper()
	if b.name != "postgres" {
		t.Skip("group commit of the handset path is PostgreSQL's; SQLite's is its write gate's (TestSQLiteGroup*)")
	}
	db := mustOpen(t, b.newDSN(t))
	if err := db.gorm.Exec("CREATE TABLE scratch (k INTEGER PRIMARY KEY)").Error; err != nil {
		t.Fatal(err)
	}
	db.writes.parallelAt = 1 << 20
	return db
}

func insertScratch(k int) func(sqlExec) error {
	return func(x sqlExec) error {
		_, err := x.exec("INSERT INTO scratch (k) VALUES (?)", k)
		return err
	}
}

// holdBatch starts a write that runs until release is closed, so that
// the writes started after it wait for the next batch; it returns when
// the write runs, and the write's outcome arrives on the channel.
func holdBatch(t *testing.T, db *DB, release <-chan struct{}) <-chan error {
	t.Helper()
	running := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- db.write(t.Context(), false, func(x sqlExec) error {
			close(running)
			<-release
			return insertScratch(0)(x)
		})
	}()
	<-running
	return done
}

// waitWrites waits until n writes wait for a batch.
func waitWrites(t *testing.T, db *DB, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // only bounds a hang
	for {
		db.writes.mu.Lock()
		got := len(db.writes.pending)
		db.writes.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes pending, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func scratchKeys(t *testing.T, db *DB) int64 {
	t.Helper()
	return countRows(t, db, "scratch", "1 = 1")
}

func testGroupsWaitingWrites(t *testing.T, b backend) {
	db := groupDB(t, b)
	release := make(chan struct{})
	first := holdBatch(t, db, release)
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = db.write(t.Context(), true, insertScratch(i+1)) })
	}
	waitWrites(t, db, n)
	commitsBefore := db.writes.commits.Load()
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d: %v", i+1, err)
		}
	}
	if got := db.writes.commits.Load() - commitsBefore; got != 2 {
		t.Errorf("%d commits for the held write and the %d that waited, want 2", got, n)
	}
	if got := scratchKeys(t, db); got != n+1 {
		t.Errorf("%d rows after %d acknowledged writes", got, n+1)
	}
}

func testFailingWriteFailsAlone(t *testing.T, b backend) {
	db := groupDB(t, b)
	release := make(chan struct{})
	first := holdBatch(t, db, release)
	const n = 10
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		fn := insertScratch(i + 1)
		switch i {
		case 3:
			fn = insertScratch(0) // the held write's key: a unique violation
		case 6:
			fn = func(sqlExec) error { panic("boom") }
		}
		wg.Go(func() { errs[i] = db.write(t.Context(), true, fn) })
	}
	waitWrites(t, db, n)
	close(release)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	for i, err := range errs {
		switch i {
		case 3:
			if err == nil || !strings.Contains(err.Error(), "duplicate key") {
				t.Errorf("duplicate key write: %v, want a unique violation", err)
			}
		case 6:
			if err == nil || !strings.Contains(err.Error(), "panicked: boom") {
				t.Errorf("panicking write: %v, want its panic as an error", err)
			}
		default:
			if err != nil {
				t.Errorf("write %d failed with its batch: %v", i+1, err)
			}
		}
	}
	if got, want := scratchKeys(t, db), int64(1+n-2); got != want {
		t.Errorf("%d rows, want %d: the held write and every write but the two that failed", got, want)
	}
}

func testWithdrawnWriteNeverRuns(t *testing.T, b backend) {
	db := groupDB(t, b)
	release := make(chan struct{})
	first := holdBatch(t, db, release)
	ctx, cancel := context.WithCancel(t.Context())
	withdrawn := make(chan error, 1)
	go func() { withdrawn <- db.write(ctx, true, insertScratch(99)) }()
	waitWrites(t, db, 1)
	cancel()
	if err := <-withdrawn; !errors.Is(err, context.Canceled) {
		t.Errorf("withdrawn write: %v, want context.Canceled", err)
	}
	waitWrites(t, db, 0)
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// A write after it runs in a batch of its own and sees no row 99.
	if err := db.write(t.Context(), true, insertScratch(100)); err != nil {
		t.Fatal(err)
	}
	if got := countRows(t, db, "scratch", "k = 99"); got != 0 {
		t.Errorf("the withdrawn write ran: %s", fmt.Sprint(got, " rows"))
	}
}
