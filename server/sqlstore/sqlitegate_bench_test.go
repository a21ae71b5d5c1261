package sqlstore

import (
	"context"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"gorm.io/gorm"
)

// BenchmarkSQLiteGroupCommit measures small write transactions (one
// UPDATE of the writer's own row each) on SQLite with the durable
// pragmas, through the store's gorm: the shape of a fleet's
// state-changing check-ins. writers=64 runs 64 goroutines at once (the
// default concurrency of the rollout wave benchmark, BenchmarkWave in
// cmd/otad); writers=1 one alone, which group commit must not slow down. It
// reports logical commits/s and how many logical commits share one real
// COMMIT (one fsync).
//
//	go test ./server/sqlstore -run '^$' -bench SQLiteGroupCommit -benchtime 3s
func BenchmarkSQLiteGroupCommit(b *testing.B) {
	for _, writers := range []int{1, 64} {
		b.Run("writers="+strconv.Itoa(writers), func(b *testing.B) { benchGroupCommit(b, writers) })
	}
}

func benchGroupCommit(b *testing.B, writers int) {
	ctx := context.Background()
	db, err := Open(ctx, "sqlite:"+filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	g := db.gorm.WithContext(ctx)
	if err := g.Exec("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)").Error; err != nil {
		b.Fatal(err)
	}
	for i := range writers {
		if err := g.Exec("INSERT INTO bench_rows (id, n) VALUES (?, 0)", i).Error; err != nil {
			b.Fatal(err)
		}
	}
	update := func(id int64) error {
		return g.Transaction(func(tx *gorm.DB) error {
			return tx.Exec("UPDATE bench_rows SET n = n + 1 WHERE id = ?", id).Error
		})
	}
	real0, logical0 := gateCommits(db)
	b.ResetTimer()
	if writers == 1 {
		for b.Loop() {
			if err := update(0); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		var next atomic.Int64
		b.SetParallelism((writers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			id := next.Add(1) % int64(writers)
			for pb.Next() {
				if err := update(id); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
	real1, logical1 := gateCommits(db)
	if real1 > real0 {
		b.ReportMetric(float64(logical1-logical0)/float64(real1-real0), "logical/real")
	}
	var sum int64
	if err := g.Raw("SELECT SUM(n) FROM bench_rows").Scan(&sum).Error; err != nil {
		b.Fatal(err)
	}
	if sum != int64(b.N) {
		b.Fatalf("rows counted %d updates, want %d", sum, b.N)
	}
}
