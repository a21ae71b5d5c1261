package sqlstore

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sqlitelib "github.com/glebarez/go-sqlite"
	"gorm.io/gorm"
)

// mustGateDB opens a fresh SQLite database with a gate_rows table. The
// gate's time cap is lifted, so that a batch ends only when no writer
// waits or at the count cap, whatever the machine's speed.
func mustGateDB(t *testing.T) (*DB, string) {
	t.Helper()
	dsn := newSQLiteDSN(t)
	db := mustOpen(t, dsn)
	withGateTurn(t, db, func(g *writeGate) { g.maxDelay = time.Hour })
	if err := db.gorm.WithContext(t.Context()).Exec("CREATE TABLE gate_rows (id TEXT PRIMARY KEY, v INTEGER NOT NULL DEFAULT 0)").Error; err != nil {
		t.Fatalf("create table: %v", err)
	}
	return db, dsn
}

func insertRow(tx *gorm.DB, id string) error {
	return tx.Exec("INSERT INTO gate_rows (id) VALUES (?)", id).Error
}

// insertTx inserts id in a write transaction of its own.
func insertTx(ctx context.Context, db *DB, id string) error {
	return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return insertRow(tx, id) })
}

// gateRows returns the ids in gate_rows, read on a pool connection (so
// only what is committed).
func gateRows(t *testing.T, db *DB) []string {
	t.Helper()
	var ids []string
	if err := db.gorm.WithContext(t.Context()).Raw("SELECT id FROM gate_rows ORDER BY id").Scan(&ids).Error; err != nil {
		t.Fatalf("read gate_rows: %v", err)
	}
	return ids
}

func checkRows(t *testing.T, db *DB, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := gateRows(t, db); !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q", got, want)
	}
}

// waitUntil polls cond (no timing is asserted: it only waits for
// goroutines to reach a state).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		runtime.Gosched()
	}
}

// runBatch starts the writers one after the other while the test holds
// the write turn, each once the one before is queued, then lets go: they
// run in this order, each handing the batch on to the next, and the last
// one commits them all. It returns their errors and the real commits
// made meanwhile.
func runBatch(t *testing.T, db *DB, writers ...func() error) ([]error, int64) {
	t.Helper()
	real0, _ := gateCommits(db)
	errs := make([]error, len(writers))
	var wg sync.WaitGroup
	withGateTurn(t, db, func(*writeGate) {
		for i, w := range writers {
			wg.Go(func() { errs[i] = w() })
			waitUntil(t, fmt.Sprintf("writer %d is queued", i), func() bool { return queuedWriters(db) == i+1 })
		}
	})
	wg.Wait()
	real1, _ := gateCommits(db)
	return errs, real1 - real0
}

func checkErrs(t *testing.T, errs []error, want ...error) {
	t.Helper()
	for i, err := range errs {
		if !errors.Is(err, want[i]) || (want[i] == nil) != (err == nil) {
			t.Errorf("writer %d: got error %v, want %v", i, err, want[i])
		}
	}
}

var errBoom = errors.New("boom")

// TestSQLiteGroupCommitDurable: 64 writers at once share COMMITs, and
// every write acknowledged is in the database after it is reopened.
func TestSQLiteGroupCommitDurable(t *testing.T) {
	db, dsn := mustGateDB(t)
	const writers, each = 64, 8
	real0, logical0 := gateCommits(db)
	var acked sync.Map
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%02d-%d", w, i)
				var err error
				if i%4 == 0 {
					// A plain Exec outside a transaction joins too.
					err = insertRow(db.gorm.WithContext(t.Context()), id)
				} else {
					err = insertTx(t.Context(), db, id)
				}
				if err != nil {
					t.Errorf("write %s: %v", id, err)
					continue
				}
				acked.Store(id, true)
			}
		})
	}
	wg.Wait()
	real1, logical1 := gateCommits(db)
	real, logical := real1-real0, logical1-logical0
	t.Logf("%d logical commits in %d real ones", logical, real)
	if logical != writers*each {
		t.Errorf("%d logical commits, want %d", logical, writers*each)
	}
	if real*4 > logical || real < logical/maxBatchTxs {
		t.Errorf("%d logical commits in %d real ones, want at most a quarter and at least one in %d", logical, real, maxBatchTxs)
	}

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = mustOpen(t, dsn)
	var want []string
	acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	if len(want) != writers*each {
		t.Fatalf("%d writes acknowledged, want %d", len(want), writers*each)
	}
	checkRows(t, db, want...)
}

// TestSQLiteGroupRollbackInBatch: a logical transaction that rolls back
// (an error or a panic in gorm's Transaction) undoes its own writes
// alone, and the batch commits the others.
func TestSQLiteGroupRollbackInBatch(t *testing.T) {
	db, _ := mustGateDB(t)
	ctx := t.Context()
	errs, real := runBatch(t, db,
		func() error { return insertRow(db.gorm.WithContext(ctx), "a") },
		func() error {
			return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				if err := insertRow(tx, "b"); err != nil {
					return err
				}
				return errBoom
			})
		},
		func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("%w: %v", errBoom, p)
				}
			}()
			return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				if err := insertRow(tx, "c"); err != nil {
					return err
				}
				panic("writer gives up")
			})
		},
		func() error { return insertTx(ctx, db, "d") },
	)
	checkErrs(t, errs, nil, errBoom, errBoom, nil)
	if real != 1 {
		t.Errorf("%d real commits, want 1 (one batch)", real)
	}
	checkRows(t, db, "a", "d")
	// The turn was given back.
	if err := insertTx(ctx, db, "e"); err != nil {
		t.Fatal(err)
	}
	checkRows(t, db, "a", "d", "e")
}

// testHooks are called by the SQL function otad_test_hook(name, i),
// registered with the driver for the tests.
var (
	testHooks        sync.Map // name -> func()
	registerTestHook sync.Once
)

func setTestHook(t *testing.T, name string, fn func()) {
	registerTestHook.Do(func() {
		err := sqlitelib.RegisterScalarFunction("otad_test_hook", 2, func(_ *sqlitelib.FunctionContext, args []driver.Value) (driver.Value, error) {
			if name, ok := args[0].(string); ok {
				if fn, ok := testHooks.Load(name); ok {
					fn.(func())()
				}
			}
			return args[1], nil
		})
		if err != nil {
			panic(err)
		}
	})
	testHooks.Store(name, fn)
	t.Cleanup(func() { testHooks.Delete(name) })
}

// TestSQLiteGroupCancelMidTransaction: a caller whose context ends
// while its statement runs loses its own transaction, not the batch's
// other writes. The statement calls otad_test_hook 20,000 times and
// the first call cancels the caller's context: the driver would
// interrupt the statement, and SQLite would then roll back the whole
// real transaction.
func TestSQLiteGroupCancelMidTransaction(t *testing.T) {
	name := t.Name()
	ctx2, cancel := context.WithCancel(t.Context())
	defer cancel()
	setTestHook(t, name, cancel)
	db, _ := mustGateDB(t)
	ctx := t.Context()
	errs, real := runBatch(t, db,
		func() error { return insertTx(ctx, db, "a") },
		func() error {
			return db.gorm.WithContext(ctx2).Transaction(func(tx *gorm.DB) error {
				if err := insertRow(tx, "b"); err != nil {
					return err
				}
				return tx.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
					UPDATE gate_rows SET v = (SELECT MAX(otad_test_hook(?, i)) FROM n) WHERE id = 'b'`, name).Error
			})
		},
		func() error { return insertRow(db.gorm.WithContext(ctx), "c") },
	)
	checkErrs(t, errs, nil, context.Canceled, nil)
	if real != 1 {
		t.Errorf("%d real commits, want 1 (one batch)", real)
	}
	checkRows(t, db, "a", "c")
}

// TestSQLiteGroupCommitFailure: when the real COMMIT fails, every
// logical commit of its batch fails and none of their writes stays.
func TestSQLiteGroupCommitFailure(t *testing.T) {
	db, _ := mustGateDB(t)
	ctx := t.Context()
	errDisk := errors.New("disk on fire")
	var failed atomic.Bool
	withGateTurn(t, db, func(g *writeGate) {
		g.beforeCommit = func() error {
			if failed.CompareAndSwap(false, true) {
				return errDisk
			}
			return nil
		}
	})
	errs, _ := runBatch(t, db,
		func() error { return insertTx(ctx, db, "a") },
		func() error { return insertRow(db.gorm.WithContext(ctx), "b") },
		func() error {
			return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				if err := insertRow(tx, "c"); err != nil {
					return err
				}
				return tx.Exec("UPDATE gate_rows SET v = 1 WHERE id = 'a'").Error
			})
		},
	)
	checkErrs(t, errs, errDisk, errDisk, errDisk)
	for i, err := range errs {
		if !errors.Is(err, errBatchAborted) {
			t.Errorf("writer %d: got error %v, want errBatchAborted", i, err)
		}
	}
	checkRows(t, db)
	// The database and the gate still work.
	if err := insertTx(ctx, db, "d"); err != nil {
		t.Fatal(err)
	}
	checkRows(t, db, "d")
}

// TestSQLiteGroupNestedTransaction: gorm's nested transaction
// (a savepoint) inside a logical transaction rolls back its part alone.
func TestSQLiteGroupNestedTransaction(t *testing.T) {
	db, _ := mustGateDB(t)
	ctx := t.Context()
	errs, real := runBatch(t, db,
		func() error { return insertTx(ctx, db, "a") },
		func() error {
			return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				if err := insertRow(tx, "b"); err != nil {
					return err
				}
				err := tx.Transaction(func(tx *gorm.DB) error {
					if err := insertRow(tx, "c"); err != nil {
						return err
					}
					return errBoom
				})
				if !errors.Is(err, errBoom) {
					return fmt.Errorf("nested transaction: got %v, want errBoom", err)
				}
				if err := tx.Transaction(func(tx *gorm.DB) error { return insertRow(tx, "d") }); err != nil {
					return err
				}
				return insertRow(tx, "e")
			})
		},
		func() error { return insertTx(ctx, db, "f") },
	)
	checkErrs(t, errs, nil, nil, nil)
	if real != 1 {
		t.Errorf("%d real commits, want 1 (one batch)", real)
	}
	checkRows(t, db, "a", "b", "d", "e", "f")
}

// TestSQLiteGroupBrokenBatch: a logical transaction that ends the real
// transaction under the batch fails the batch's pending commits (they
// were not applied), its own later statements are refused rather than
// committed one by one, and the next writer starts a batch afresh. A raw
// ROLLBACK stands in for the errors after which SQLite rolls back the
// whole transaction (disk full, I/O error).
func TestSQLiteGroupBrokenBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		wreck func(tx *gorm.DB) error
		// want is what the wrecking writer's Transaction returns.
		want error
	}{
		{
			// A statement error with the transaction gone: found at once.
			name: "StatementError",
			wreck: func(tx *gorm.DB) error {
				if err := tx.Exec("ROLLBACK; SELECT * FROM no_such_table").Error; err == nil {
					return errors.New("statement succeeded")
				}
				if err := insertRow(tx, "b2"); !errors.Is(err, errBatchAborted) {
					return fmt.Errorf("insert after the batch ended: got %v, want errBatchAborted", err)
				}
				return errBoom
			},
			want: errBoom,
		},
		{
			// No error until the rollback to the savepoint fails.
			name: "RollbackToFails",
			wreck: func(tx *gorm.DB) error {
				if err := tx.Exec("ROLLBACK").Error; err != nil {
					return err
				}
				return errBoom
			},
			want: errBoom,
		},
		{
			// No error until the savepoint's release fails.
			name: "ReleaseFails",
			wreck: func(tx *gorm.DB) error {
				return tx.Exec("ROLLBACK").Error
			},
			want: errBatchAborted,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := mustGateDB(t)
			ctx := t.Context()
			errs, _ := runBatch(t, db,
				func() error { return insertTx(ctx, db, "a") },
				func() error {
					return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
						if err := insertRow(tx, "b"); err != nil {
							return err
						}
						return tc.wreck(tx)
					})
				},
				func() error { return insertTx(ctx, db, "c") },
			)
			checkErrs(t, errs, errBatchAborted, tc.want, nil)
			checkRows(t, db, "c")
		})
	}
}

// TestSQLiteGateBetweenBatches: a maintenance statement queued among
// writers runs after the batch before it has committed and before the
// next one begins.
func TestSQLiteGateBetweenBatches(t *testing.T) {
	db, _ := mustGateDB(t)
	ctx := t.Context()
	var seen []string
	var open bool
	errs, real := runBatch(t, db,
		func() error { return insertTx(ctx, db, "a") },
		func() error {
			return db.betweenBatches(ctx, func(ctx context.Context) error {
				open = db.sqliteGate().batch != nil
				seen = gateRows(t, db)
				return nil
			})
		},
		func() error { return insertTx(ctx, db, "b") },
	)
	checkErrs(t, errs, nil, nil, nil)
	if open || !slices.Equal(seen, []string{"a"}) {
		t.Errorf("between batches: batch open %v, rows %q; want no batch and [a] committed", open, seen)
	}
	if real != 2 {
		t.Errorf("%d real commits, want 2", real)
	}
	checkRows(t, db, "a", "b")
}
