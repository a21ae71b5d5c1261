package sqlstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"gorm.io/gorm"
)

// The rollups' write path: a delta log per rollup table, folded in
// batches.
//
// A change to what a rollup counts (a check-in that moves a handset to a
// new build, an offer, a report, an erasure) appends its deltas to the
// rollup's log table (fleet_counts_delta for fleet_counts, ...), in the
// same statement or transaction as the change itself, so a rollup and
// its rows never disagree. An append takes no lock another handset's
// change waits for: the counters themselves are written only by the
// fold, which moves the whole log into them in one transaction (see
// FoldRollups), about once a second. Readers add the log's unfolded
// tail to the counters in the same snapshot (tailed), so reports stay
// exact whatever the fold's progress.
//
// Before migration 13 every change upserted its counter rows in its own
// transaction: during a rollout every handset moves the same few rows
// (one model's old build to its new one), and on PostgreSQL the
// check-ins of a wave queued on those row locks (42–59% of active
// backends waiting, 1,070 state changes/s; see the README's "The
// rollout wave").

// counterColumn is a column of a rollup's key and its PostgreSQL type,
// for the casts of a delta insert built inside a CTE (where PostgreSQL
// cannot infer a parameter's type from the target column).
type counterColumn struct{ name, pgType string }

// counterTable is a rollup table and its delta log, which has the same
// columns and no key.
type counterTable struct {
	name   string
	keys   []counterColumn
	counts []string // the counted columns, all BIGINT
	// dropEmpty deletes rows a fold leaves at zero: tables whose counts
	// go down (a handset moving away, an erasure), so that no row counts
	// no one (an erased handset's model must not outlive it).
	dropEmpty bool
}

func (t *counterTable) log() string { return t.name + "_delta" }

func (t *counterTable) keyNames() []string {
	out := make([]string, len(t.keys))
	for i, c := range t.keys {
		out[i] = c.name
	}
	return out
}

func (t *counterTable) columns() []string { return append(t.keyNames(), t.counts...) }

var (
	fleetCountsTable = &counterTable{name: "fleet_counts", keys: []counterColumn{
		{"model", "text"}, {"channel", "text"}, {"region", "text"}, {"build", "text"},
		{"installed_patches", "text"}, {"cloud_messaging", "text"}, {"number_encryption", "boolean"},
	}, counts: []string{"n"}, dropEmpty: true}
	fleetDailyTable = &counterTable{name: "fleet_daily", keys: []counterColumn{
		{"day", "text"}, {"model", "text"}, {"region", "text"}, {"cloud_messaging", "text"}, {"number_encryption", "boolean"},
	}, counts: []string{"n"}, dropEmpty: true}
	fleetTotalsTable = &counterTable{name: "fleet_daily_totals", keys: []counterColumn{
		{"day", "text"}, {"cloud_messaging", "text"}, {"number_encryption", "boolean"}, {"shard", "integer"},
	}, counts: []string{"n"}, dropEmpty: true}
	rolloutCountsTable = &counterTable{name: "rollout_counts", keys: []counterColumn{
		{"rollout_id", "text"}, {"model", "text"}, {"starting_build", "text"}, {"state", "text"}, {"shard", "integer"},
	}, counts: []string{"n"}, dropEmpty: true}
	stateHourlyTable = &counterTable{name: "rollout_state_hourly", keys: []counterColumn{
		{"rollout_id", "text"}, {"hour", "timestamp"}, {"state", "text"}, {"shard", "integer"},
	}, counts: []string{"n"}}
	rolloutHourlyTable = &counterTable{name: "rollout_hourly", keys: []counterColumn{
		{"rollout_id", "text"}, {"hour", "timestamp"},
	}, counts: []string{"installed", "failed"}}
	installTimesTable = &counterTable{name: "rollout_install_times", keys: []counterColumn{
		{"rollout_id", "text"}, {"bucket", "integer"},
	}, counts: []string{"n"}}
	failuresTable = &counterTable{name: "rollout_failures", keys: []counterColumn{
		{"rollout_id", "text"}, {"error_code", "text"},
	}, counts: []string{"n"}}
	// payloadsTable counts a rollout's first and retry offers by payload
	// (from_build "" for the full image): their bytes, and what the full
	// image would have cost (migration 16).
	payloadsTable = &counterTable{name: "rollout_payloads", keys: []counterColumn{
		{"rollout_id", "text"}, {"from_build", "text"},
	}, counts: []string{"offers", "bytes", "full_bytes"}}
	// confirmationsTable counts a rollout's confirmed records by model
	// and starting build (rollout.Confirmed): the check-in that confirms
	// one adds it; a check-in off the build or patch, a report on the
	// record and an erasure take it out (migration 17).
	confirmationsTable = &counterTable{name: "rollout_confirmations", keys: []counterColumn{
		{"rollout_id", "text"}, {"model", "text"}, {"starting_build", "text"},
	}, counts: []string{"n"}, dropEmpty: true}
	// confirmTimesTable counts the offer-to-confirmation times in
	// buckets of server.InstallTimeBucket (migration 17).
	confirmTimesTable = &counterTable{name: "rollout_confirm_times", keys: []counterColumn{
		{"rollout_id", "text"}, {"bucket", "integer"},
	}, counts: []string{"n"}}
)

// counterTables are every rollup with a delta log, in the order a fold
// takes them.
var counterTables = []*counterTable{
	fleetCountsTable, fleetDailyTable, fleetTotalsTable, rolloutCountsTable,
	stateHourlyTable, rolloutHourlyTable, installTimesTable, failuresTable,
	payloadsTable, confirmationsTable, confirmTimesTable,
}

// deltaLogSchema is a log table per rollup of tables, with the rollup's
// columns and no key (appends never conflict), and on the rollups whose
// counts go down an index of the rows at zero, which each fold deletes:
// migration 13 for the rollups of migration 7, and the logs of the
// rollups added since.
func deltaLogSchema(tables ...*counterTable) []string {
	var out []string
	for _, t := range tables {
		out = append(out, "CREATE TABLE "+t.log()+" (\n\t"+strings.Join(t.columnDefs(), ",\n\t")+"\n)")
		if t.dropEmpty {
			out = append(out, "CREATE INDEX "+t.name+"_empty ON "+t.name+" (n) WHERE n <= 0")
		}
	}
	return out
}

// columnDefs are t's columns as CREATE TABLE declares them: the key
// columns, then the counts, all NOT NULL.
func (t *counterTable) columnDefs() []string {
	cols := make([]string, 0, len(t.keys)+len(t.counts)+1)
	for _, c := range t.keys {
		cols = append(cols, c.name+" "+strings.ToUpper(c.pgType)+" NOT NULL")
	}
	for _, c := range t.counts {
		cols = append(cols, c+" BIGINT NOT NULL")
	}
	return cols
}

// counterSchema creates the rollups tables, each keyed by its key
// columns, with their delta logs (deltaLogSchema).
func counterSchema(tables ...*counterTable) []string {
	var out []string
	for _, t := range tables {
		cols := append(t.columnDefs(), "PRIMARY KEY ("+strings.Join(t.keyNames(), ", ")+")")
		out = append(out, "CREATE TABLE "+t.name+" (\n\t"+strings.Join(cols, ",\n\t")+"\n)")
	}
	return append(out, deltaLogSchema(tables...)...)
}

// tailed is a FROM item that reads rollup t with its unfolded deltas:
// the rollup's rows and the log's, with the columns cols (the counted
// columns among them), for reads that scan the whole rollup anyway
// (VerifyRollups). In one snapshot (ReportStore.snapshot, or one
// statement) a fold is either entirely in the counters or entirely still
// in the log, so sums over it are exact at any point of a fold.
func tailed(t *counterTable, cols ...string) string {
	list := strings.Join(cols, ", ")
	return "(SELECT " + list + " FROM " + t.name + " UNION ALL SELECT " + list + " FROM " + t.log() + ") " + t.name
}

// tailedSum is the reports' read of rollup t with its unfolded deltas:
// the counted columns sums summed by the columns group, over the rows
// that match where (a condition on t's columns; its arguments go twice,
// once for each part). Each part is grouped on its own, so that the
// rollup's part reads through the rollup's key or index (SQLite does not
// push a GROUP BY into a UNION ALL: summed over the union, the rollout
// report took 296 ms at a million handsets instead of 25), and the few
// rows of the two parts are then added. The sums are cast to BIGINT and
// named as the columns; a caller appends HAVING and ORDER BY.
func tailedSum(t *counterTable, group, sums []string, where string) string {
	g := strings.Join(group, ", ")
	inner := make([]string, len(sums))
	outer := make([]string, len(sums))
	for i, c := range sums {
		inner[i] = "SUM(" + c + ") AS " + c
		outer[i] = "CAST(SUM(" + c + ") AS BIGINT) AS " + c
	}
	part := func(table string) string {
		return "SELECT " + g + ", " + strings.Join(inner, ", ") + " FROM " + table + " WHERE " + where + " GROUP BY " + g
	}
	return "SELECT " + g + ", " + strings.Join(outer, ", ") + " FROM (" + part(t.name) + " UNION ALL " + part(t.log()) +
		") " + t.name + " GROUP BY " + g
}

// twice is args, then args again: the arguments of a tailedSum's where.
func twice(args ...any) []any { return append(append([]any(nil), args...), args...) }

// deltaBatch is the deltas of one change, by rollup: each row is the
// key's values then the counts, in the order of the table's columns.
type deltaBatch struct {
	rows map[*counterTable][][]any
}

// add appends a delta to t.
func (b *deltaBatch) add(t *counterTable, values ...any) {
	if len(values) != len(t.keys)+len(t.counts) {
		panic(fmt.Sprintf("delta of %s: %d values for %d columns", t.name, len(values), len(t.keys)+len(t.counts)))
	}
	if b.rows == nil {
		b.rows = make(map[*counterTable][][]any)
	}
	b.rows[t] = append(b.rows[t], values)
}

// merge appends o's deltas to b.
func (b *deltaBatch) merge(o deltaBatch) {
	for _, t := range counterTables {
		for _, r := range o.rows[t] {
			b.add(t, r...)
		}
	}
}

func (b *deltaBatch) empty() bool { return len(b.rows) == 0 }

// insert appends the batch to the logs, a statement per rollup.
func (b *deltaBatch) insert(x sqlExec) error {
	for _, t := range counterTables {
		rows := b.rows[t]
		if len(rows) == 0 {
			continue
		}
		cols := t.columns()
		row := "(?" + strings.Repeat(", ?", len(cols)-1) + ")"
		args := make([]any, 0, len(rows)*len(cols))
		values := make([]string, len(rows))
		for i, r := range rows {
			values[i] = row
			args = append(args, r...)
		}
		if _, err := x.exec("INSERT INTO "+t.log()+" ("+strings.Join(cols, ", ")+") VALUES "+strings.Join(values, ", "), args...); err != nil {
			return fmt.Errorf("append to %s: %w", t.log(), err)
		}
	}
	return nil
}

// withChange is a PostgreSQL statement that runs change (an INSERT or
// UPDATE of at most one row, without RETURNING) and appends the batch
// to the logs only if change wrote a row, returning how many it wrote:
// the change and its deltas in one statement, so that no lock is held
// between round trips and no transaction is needed.
func (b *deltaBatch) withChange(change string, changeArgs []any) (string, []any) {
	var sb strings.Builder
	args := append([]any(nil), changeArgs...)
	sb.WriteString("WITH changed AS (" + change + " RETURNING 1)")
	for i, t := range counterTables {
		rows := b.rows[t]
		if len(rows) == 0 {
			continue
		}
		casts := make([]string, 0, len(t.keys)+len(t.counts))
		for _, c := range t.keys {
			casts = append(casts, "CAST(? AS "+c.pgType+")")
		}
		for range t.counts {
			casts = append(casts, "CAST(? AS bigint)")
		}
		row := "(" + strings.Join(casts, ", ") + ")"
		values := make([]string, len(rows))
		for j, r := range rows {
			values[j] = row
			args = append(args, r...)
		}
		fmt.Fprintf(&sb, ", d%d AS (INSERT INTO %s (%s) SELECT * FROM (VALUES %s) v WHERE EXISTS (SELECT 1 FROM changed))",
			i, t.log(), strings.Join(t.columns(), ", "), strings.Join(values, ", "))
	}
	sb.WriteString(" SELECT COUNT(*) FROM changed")
	return sb.String(), args
}

// changeWithDeltas runs change (an INSERT or UPDATE of at most one row)
// in the write x and, if it wrote a row, appends b's deltas; on
// PostgreSQL in one statement. It reports whether change wrote a row.
func (db *DB) changeWithDeltas(x sqlExec, change string, args []any, b deltaBatch) (bool, error) {
	if db.dialect != dialectPostgres || b.empty() {
		n, err := x.exec(change, args...)
		if err != nil || n == 0 {
			return false, err
		}
		return true, b.insert(x)
	}
	q, qargs := b.withChange(change, args)
	rows, err := x.query(q, qargs...)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var n int64
	if rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return false, err
		}
	}
	return n > 0, rows.Close()
}

// foldLockKey is the PostgreSQL advisory lock a fold holds for its
// transaction ("ota/fold"): replicas that fold at the same moment take
// turns instead of deleting the same log rows in opposite orders (a
// deadlock PostgreSQL would have to break).
const foldLockKey int64 = 0x6f74612f666f6c64

// FoldRollups moves every rollup's delta log into the rollup, in one
// transaction, and deletes the rows it leaves at zero; it returns how
// many log rows it folded. Any replica may run it at any time: folds
// take turns (on PostgreSQL an advisory lock, on SQLite the write lock),
// and each log row is folded exactly once (on PostgreSQL the log is read
// by the DELETE that removes it; on SQLite the fold holds the write lock
// throughout). The running otad folds about once a second
// (app.Config.FoldInterval); an erasure folds at once (DeleteDevice).
func (db *DB) FoldRollups(ctx context.Context) (int64, error) {
	var folded int64
	err := db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if db.dialect == dialectPostgres {
			if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", foldLockKey).Error; err != nil {
				return err
			}
		}
		for _, t := range counterTables {
			n, err := db.foldTable(tx, t)
			if err != nil {
				return fmt.Errorf("fold %s: %w", t.log(), err)
			}
			folded += n
			if db.foldHook != nil {
				db.foldHook(t.name)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("fold rollups: %w", err)
	}
	if db.dialect == dialectPostgres && folded > 0 {
		db.vacuumLogs(ctx)
	}
	return folded, nil
}

// vacuumLogs vacuums the delta logs on PostgreSQL after a fold emptied
// them. Autovacuum visits a database at most once a minute
// (autovacuum_naptime), and in a minute of a rollout wave a log
// accumulates a hundred thousand dead rows that every fold's DELETE and
// every report's read of the tail would scan (during the wave benchmark
// a fold of rollout_counts took 12-17 ms without this, 5-6 ms with it).
// Vacuumed each time, a log stays a few pages.
// SKIP_LOCKED: a log another replica's fold or vacuum holds is left to
// it. TRUNCATE false: giving the empty pages back to the file system
// needs an exclusive lock, which every append then queued behind (a
// third of the active backends waited on it); the pages are reused
// instead. A failure only costs the next fold time.
func (db *DB) vacuumLogs(ctx context.Context) {
	logs := make([]string, len(counterTables))
	for i, t := range counterTables {
		logs[i] = t.log()
	}
	if _, err := db.sql.ExecContext(ctx, "VACUUM (SKIP_LOCKED, TRUNCATE false) "+strings.Join(logs, ", ")); err != nil && ctx.Err() == nil {
		db.logger.WarnContext(ctx, "vacuuming the rollups' delta logs after a fold", slog.Any("error", err))
	}
}

// foldTable folds t's log into t in tx and returns how many log rows it
// folded.
func (db *DB) foldTable(tx *gorm.DB, t *counterTable) (int64, error) {
	keys := strings.Join(t.keyNames(), ", ")
	all := strings.Join(t.columns(), ", ")
	sums := make([]string, len(t.counts))
	nonZero := make([]string, len(t.counts))
	set := make([]string, len(t.counts))
	for i, c := range t.counts {
		sums[i] = "SUM(" + c + ")"
		nonZero[i] = "SUM(" + c + ") <> 0"
		set[i] = c + " = " + t.name + "." + c + " + excluded." + c
	}
	aggregate := func(from string) string {
		// WHERE true: SQLite's parser needs a WHERE before an upsert's
		// ON CONFLICT in an INSERT ... SELECT.
		return "SELECT " + keys + ", " + strings.Join(sums, ", ") + " FROM " + from + " WHERE true GROUP BY " + keys +
			" HAVING " + strings.Join(nonZero, " OR ") + " ORDER BY " + keys
	}
	upsert := " ON CONFLICT (" + keys + ") DO UPDATE SET " + strings.Join(set, ", ")
	var folded int64
	if db.dialect == dialectPostgres {
		// One statement: the DELETE reads the log rows it removes, so a
		// delta committed meanwhile is neither folded nor deleted. The
		// ORDER BY inserts (and locks) the rollup's rows in key order.
		var n []int64
		err := tx.Raw("WITH d AS (DELETE FROM " + t.log() + " RETURNING " + all + "), f AS (INSERT INTO " + t.name + " (" + all + ") " +
			aggregate("d") + upsert + ") SELECT COUNT(*) FROM d").Scan(&n).Error
		if err != nil {
			return 0, err
		}
		if len(n) == 1 {
			folded = n[0]
		}
	} else {
		// SQLite: the fold's transaction holds the write lock, so no
		// delta arrives between the two statements.
		if err := tx.Exec("INSERT INTO " + t.name + " (" + all + ") " + aggregate(t.log()) + upsert).Error; err != nil {
			return 0, err
		}
		res := tx.Exec("DELETE FROM " + t.log())
		if res.Error != nil {
			return 0, res.Error
		}
		folded = res.RowsAffected
	}
	if t.dropEmpty && folded > 0 {
		if err := tx.Exec("DELETE FROM " + t.name + " WHERE n <= 0").Error; err != nil {
			return 0, fmt.Errorf("delete empty rows: %w", err)
		}
	}
	return folded, nil
}
