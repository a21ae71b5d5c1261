package sqlstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// The report benchmarks seed a fleet of a million handsets with bulk
// SQL, compute the rollups from it with the GROUP BY inserts that define
// them, and measure the rollout and exposure reports (server.Reports:
// the store's reads and the assembly). They seed only when asked:
//
//	OTA_BENCH_1M=1 go test ./server/sqlstore -run '^$' -bench 'Report1M' -benchtime 20x
//
// with OTA_TEST_POSTGRES_DSN set for the PostgreSQL half. Each backend is
// seeded once per run and shared by both benchmarks (SQLite in a
// temporary directory, PostgreSQL in a database of its own); TestMain
// removes them when the run ends.
const benchFleetEnv = "OTA_BENCH_1M"

// What the seeded fleet is offered: one rollout of CM-2026-001, which
// installs 7.5.0, to stable and beta handsets of 17 of the 20 models on
// 7.0.0 or later, now at its third stage (50%).
const (
	seedPatch         = "CM-2026-001"
	seedTarget        = "cloudmsg/CM-2026-001/update.zip"
	seedInstallsBuild = "7.5.0"
	seedRolloutID     = "ro_bench"
)

// seedNow is the seeded fleet's present: reports are read at it.
var seedNow = time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC)

// seedStages are the rollout's stages and when each began.
var (
	seedStages      = []float64{1, 10, 50, 100}
	seedStage       = 2
	seedStageStarts = []time.Time{seedNow.Add(-12 * 24 * time.Hour), seedNow.Add(-7 * 24 * time.Hour), seedNow.Add(-3 * 24 * time.Hour)}
)

// seedModel is a handset model: its builds, oldest first, and its share
// of the fleet relative to the others.
type seedModel struct {
	name   string
	builds []string
}

// The 20 models, most popular first (Zipf-like shares, see seedWeights),
// each with 3 to 5 builds.
var seedModels = []seedModel{
	{"PX-8", []string{"7.2.3", "7.3.0", "7.4.1", "7.4.2"}},
	{"PX-8-Pro", []string{"7.2.3", "7.3.0", "7.4.1", "7.4.2"}},
	{"QZ-2", []string{"7.1.0", "7.2.3", "7.3.0", "7.4.1"}},
	{"PX-7", []string{"6.9.8", "7.0.2", "7.1.0", "7.2.3", "7.3.0"}},
	{"AB-4", []string{"7.2.3", "7.3.0", "7.4.1"}},
	{"QZ-2-Lite", []string{"7.1.0", "7.2.3", "7.3.0", "7.4.1"}},
	{"TN-11", []string{"7.0.2", "7.1.0", "7.2.3", "7.3.0", "7.4.1"}},
	{"PX-9", []string{"7.3.0", "7.4.1", "7.4.2"}},
	{"AB-4-Max", []string{"7.2.3", "7.3.0", "7.4.1"}},
	{"LM-6", []string{"7.1.0", "7.2.3", "7.3.0", "7.4.1"}},
	{"TN-12", []string{"7.3.0", "7.4.1", "7.4.2"}},
	{"PX-7a", []string{"7.0.2", "7.1.0", "7.2.3", "7.3.0"}},
	{"QZ-1", []string{"6.9.8", "7.0.2", "7.1.0", "7.2.3"}},
	{"RX-2", []string{"7.1.0", "7.2.3", "7.3.0", "7.4.1"}},
	{"LM-5", []string{"6.9.8", "7.0.2", "7.1.0", "7.2.3"}},
	{"AB-3", []string{"7.0.2", "7.1.0", "7.2.3", "7.3.0"}},
	{"RX-3", []string{"7.3.0", "7.4.1", "7.4.2"}},
	{"TN-10", []string{"7.0.2", "7.1.0", "7.2.3"}}, // the last three are not selected
	{"RX-1", []string{"7.0.2", "7.1.0", "7.2.3"}},
	{"PX-9-Pro", []string{"7.3.0", "7.4.1", "7.4.2"}},
}

// seedRegions are 30 ISO 3166-1 codes, most handsets first.
var seedRegions = strings.Fields("DE US FR GB IT ES NL PL BR IN JP SE AT CH BE MX CA TR DK NO FI PT CZ IE GR HU RO AU ZA KR")

// seedCodes are error codes of failed installs with their weights.
var seedCodes = []struct {
	code   string
	weight float64
}{
	{"E_NO_SPACE", 30}, {"E_DOWNLOAD_TIMEOUT", 20}, {"E_VERIFY_HASH", 12}, {"E_BATTERY_LOW", 10},
	{"E_INSTALL_SCRIPT", 8}, {"E_PARTITION_MOUNT", 6}, {"E_SIGNATURE", 4}, {"E_OTA_BUSY", 4},
	{"E_THERMAL", 3}, {"E_UNKNOWN", 2}, {"E_NETWORK_CHANGED", 1}, {"E_KERNEL_PANIC", 0.5},
}

// seedWeights are Zipf weights 1/(k+1)^s of n ranks as a cumulative
// distribution.
func seedWeights(n int, s float64) []float64 {
	cdf := make([]float64, n)
	var sum float64
	for k := range n {
		sum += 1 / math.Pow(float64(k+1), s)
		cdf[k] = sum
	}
	for k := range cdf {
		cdf[k] /= sum
	}
	return cdf
}

var (
	seedModelCDF  = seedWeights(len(seedModels), 1.1)
	seedRegionCDF = seedWeights(len(seedRegions), 1.2)
	seedCodeCDF   = func() []float64 {
		cdf := make([]float64, len(seedCodes))
		var sum float64
		for i, c := range seedCodes {
			sum += c.weight
			cdf[i] = sum
		}
		for i := range cdf {
			cdf[i] /= sum
		}
		return cdf
	}()
)

func pick(rng *mrand.Rand, cdf []float64) int {
	i, _ := slices.BinarySearch(cdf, rng.Float64())
	return min(i, len(cdf)-1)
}

// seedRollout is the rollout the seeded records are of.
func seedRollout() *rollout.Rollout {
	var models []string
	for _, m := range seedModels[:17] {
		models = append(models, m.name)
	}
	r, _, err := rollout.NewRollout(rollout.Rollout{ID: seedRolloutID,
		Release:  rollout.RolloutRelease{Target: seedTarget, PatchID: seedPatch, InstallsBuild: seedInstallsBuild},
		Selector: rollout.Selector{Models: models, Channels: []string{"stable", "beta"}, BuildMin: "7.0.0"},
		Stages:   seedStages, Policy: rollout.DefaultPolicy()}, "bench", seedStageStarts[0].Add(-time.Hour))
	if err != nil {
		panic(err)
	}
	r.State, r.Stage = rollout.RolloutRunning, seedStage
	r.StartedAt, r.StageStartedAt = seedStageStarts[0], seedStageStarts[seedStage]
	r.Holds = []rollout.Hold{{Model: "QZ-1", Actor: audit.SystemActor, Reason: "failure rate 9.1% over 1h0m0s",
		Installed: 50, Failed: 5, Rate: 0.091, MaxRate: 0.05, Window: time.Hour, At: seedNow.Add(-6 * time.Hour)}}
	return r
}

// seedRecordState draws where a record stands, and how many offers it
// took.
func seedRecordState(rng *mrand.Rand) (state string, attempts int) {
	u := rng.Float64()
	switch {
	case u < 0.09:
		return handsets.DeviceOffered, 1
	case u < 0.12:
		return handsets.StateDownloading, 1
	case u < 0.135:
		return handsets.StateDownloaded, 1
	case u < 0.145:
		return handsets.StateVerified, 1
	case u < 0.16:
		return handsets.StateInstalling, 1
	case u < 0.21:
		return handsets.StateFailed, 1
	case u < 0.22:
		return handsets.StateRolledBack, 1
	case u < 0.26:
		return handsets.StateInstalled, 2 // installed after a failed first attempt
	}
	return handsets.StateInstalled, 1
}

// patchesOf is the patch set of a handset on build before the rollout.
func patchesOf(build string) []string {
	switch {
	case handsets.CompareBuilds(build, "7.2.0") < 0:
		return nil
	case handsets.CompareBuilds(build, "7.4.0") < 0:
		return []string{"CM-2025-004"}
	}
	return []string{"CM-2025-004", "CM-2025-011"}
}

// seedBatch is what the seeder writes for a range of handsets, table by
// table in foreign key order.
type seedBatch struct {
	devices, records, reports, states [][]any
}

var (
	seedDeviceCols = []string{"id", "token_hash", "model", "build", "channel", "region", "installed_patches",
		"cloud_messaging", "number_encryption", "enrolled_at", "last_seen"}
	seedRecordCols = []string{"rollout_id", "device_id", "model", "starting_build", "offered_at", "last_offered_at",
		"state", "attempts", "last_failure_at", "result_at"}
	seedReportCols = []string{"device_id", "report_id", "patch_id", "target", "state", "error_code", "message", "at", "received_at"}
	seedStateCols  = []string{"device_id", "patch_id", "state", "error_code", "at"}
)

// seedDevice appends handset i, its record of the rollout and its
// reports to batch. Everything is drawn from a generator seeded by i, so
// a fleet of n handsets is the same on every backend and every run.
func seedDevice(batch *seedBatch, ro *rollout.Rollout, i int) {
	rng := mrand.New(mrand.NewPCG(0x5eed, uint64(i)))
	id := fmt.Sprintf("dev_bench%08d", i)
	m := seedModels[pick(rng, seedModelCDF)]
	// Newer builds are more common: weights 1, 2, 3, ...
	build := m.builds[int(math.Sqrt(rng.Float64())*float64(len(m.builds)))]
	channel := "stable"
	switch u := rng.Float64(); {
	case u < 0.03:
		channel = "dev"
	case u < 0.12:
		channel = "beta"
	}
	region := ""
	if rng.Float64() >= 0.02 {
		region = seedRegions[pick(rng, seedRegionCDF)]
	}
	patches := patchesOf(build)
	// Handsets of the dev channel piloted the patch: half run it already.
	if channel == "dev" && rng.Float64() < 0.5 {
		build, patches = seedInstallsBuild, append(patches, seedPatch)
	}
	// Most handsets were seen within the day, the rest over 30 days.
	var lastSeen time.Time
	if rng.Float64() < 0.7 {
		lastSeen = seedNow.Add(-time.Duration(rng.Float64() * float64(24*time.Hour)))
	} else {
		x := rng.Float64()
		lastSeen = seedNow.Add(-time.Duration((1 + 29*x*x) * float64(24*time.Hour)))
	}
	lastSeen = lastSeen.Truncate(time.Second)
	enrolled := seedNow.Add(-time.Duration(200+rng.IntN(500)) * 24 * time.Hour)
	d := &handsets.Device{ID: id, Model: m.name, Build: build, Channel: channel, Region: region, InstalledPatches: patches}

	patched := slices.Contains(patches, seedPatch)
	if ro.Selector.Matches(d) && ro.Pending(d) {
		if patched = seedRecord(batch, ro, rng, d, &lastSeen); patched {
			d.Build, d.InstalledPatches = seedInstallsBuild, append(patches, seedPatch)
		}
	}

	// Messaging and encryption follow the patch: it turns cloud messaging
	// off and number encryption on, and users change little after.
	messaging, encryption := handsets.MessagingAutoEnabled, rng.Float64() < 0.35
	if u := rng.Float64(); patched {
		messaging, encryption = handsets.MessagingOptedOut, rng.Float64() < 0.98
		switch {
		case u < 0.01:
			messaging = handsets.MessagingAutoEnabled
		case u < 0.12:
			messaging = handsets.MessagingOptedIn
		}
	} else {
		switch {
		case u < 0.10:
			messaging = handsets.MessagingOptedIn
		case u < 0.28:
			messaging = handsets.MessagingOptedOut
		}
	}
	encoded, err := encodePatches(d.InstalledPatches)
	if err != nil {
		panic(err)
	}
	batch.devices = append(batch.devices, []any{id, fmt.Sprintf("tok_bench%08d", i), d.Model, d.Build, d.Channel, d.Region,
		encoded, messaging, encryption, enrolled, lastSeen})
}

// seedRecord appends the record and the reports of a selected handset
// d, if its cohort is in a stage it was seen since, and reports whether
// it installed the patch. An installed handset checked in after it
// installed: lastSeen moves to then if it was earlier.
func seedRecord(batch *seedBatch, ro *rollout.Rollout, rng *mrand.Rand, d *handsets.Device, lastSeen *time.Time) bool {
	cohort := rollout.Cohort(ro.Salt, d.ID)
	stage := slices.IndexFunc(seedStages[:seedStage+1], func(p float64) bool { return cohort < int(math.Round(p*100)) })
	if stage < 0 || lastSeen.Before(seedStageStarts[stage].Add(time.Hour)) {
		return false // not in the cohort, or gone before its stage began
	}
	// Offered at its first check-in in the stage: within hours for most,
	// later for handsets that were off (12 hours on average), and by its
	// last check-in at the latest.
	start := seedStageStarts[stage]
	wait := min(time.Duration(rng.ExpFloat64()*float64(12*time.Hour)), lastSeen.Sub(start))
	offered := start.Add(wait).Truncate(time.Second)
	state, attempts := seedRecordState(rng)
	// Installs take a median of 90 minutes, lognormal, 3 minutes at least.
	took := func() time.Duration {
		return time.Duration(math.Max(180, 5400*math.Exp(rng.NormFloat64()))) * time.Second
	}
	var reports [][2]string // state, error code
	var times []time.Time
	report := func(st, code string, t time.Time) {
		reports = append(reports, [2]string{st, code})
		times = append(times, t)
	}
	// at is when the current attempt's offer was made.
	at, lastOffered, lastFailure := offered, offered, time.Time{}
	if attempts == 2 {
		failedAt := offered.Add(took())
		if retry := failedAt.Add(time.Hour); retry.Before(seedNow.Add(-time.Minute)) {
			report(handsets.StateDownloading, "", offered.Add(time.Minute))
			report(handsets.StateFailed, seedCodes[pick(rng, seedCodeCDF)].code, failedAt)
			at, lastOffered, lastFailure = retry, retry, failedAt
		} else {
			attempts = 1 // too recent for a retry
		}
	}
	end := at.Add(took())
	if state == handsets.StateInstalled || state == handsets.StateFailed || state == handsets.StateRolledBack {
		if end.After(seedNow) {
			state = handsets.StateInstalling // still at it
		}
	}
	var result time.Time
	switch state {
	case handsets.DeviceOffered:
	case handsets.StateDownloading, handsets.StateDownloaded, handsets.StateVerified, handsets.StateInstalling:
		mid := at.Add(time.Duration(rng.Float64() * float64(min(seedNow.Sub(at), 2*time.Hour))))
		report(handsets.StateDownloading, "", mid)
		if state != handsets.StateDownloading {
			report(state, "", mid.Add(time.Duration(rng.Float64()*float64(seedNow.Sub(mid)))))
		}
	case handsets.StateInstalled, handsets.StateRolledBack:
		report(handsets.StateDownloading, "", at.Add(time.Minute))
		report(handsets.StateInstalling, "", end.Add(-time.Minute))
		report(state, "", end)
		result = end
	case handsets.StateFailed:
		report(handsets.StateDownloading, "", at.Add(time.Minute))
		report(state, seedCodes[pick(rng, seedCodeCDF)].code, end)
		result = end
	}
	if state == handsets.StateFailed || state == handsets.StateRolledBack {
		lastFailure = end
	}
	for k, r := range reports {
		t := times[k].Truncate(time.Second)
		batch.reports = append(batch.reports, []any{d.ID, fmt.Sprintf("r%d", k+1), seedPatch, seedTarget, r[0], r[1], "", t, t})
	}
	if n := len(reports); n > 0 {
		t := times[n-1].Truncate(time.Second)
		batch.states = append(batch.states, []any{d.ID, seedPatch, reports[n-1][0], reports[n-1][1], t})
	}
	batch.records = append(batch.records, []any{ro.ID, d.ID, d.Model, d.Build, offered, lastOffered, state, attempts,
		optionalTime(lastFailure), optionalTime(result)})
	// A retry is offered at a check-in, and an installed handset checks
	// in again soon with its new build.
	if lastSeen.Before(lastOffered) {
		*lastSeen = lastOffered
	}
	installed := state == handsets.StateInstalled
	if installed && lastSeen.Before(result) {
		*lastSeen = result.Add(time.Duration(rng.Float64() * float64(min(time.Hour, seedNow.Sub(result))))).Truncate(time.Second)
	}
	return installed
}

// seedReportFleet writes n handsets, the rollout and its records and
// reports into db (migrated, empty), then computes the rollups from
// them. It returns the rollout.
func seedReportFleet(tb testing.TB, db *DB, n int) *rollout.Rollout {
	tb.Helper()
	ctx := context.Background()
	ro := seedRollout()
	ev := rollout.Event{RolloutID: ro.ID, At: ro.CreatedAt, Actor: "bench", Action: rollout.ActionCreate,
		ToState: ro.State, ToPercent: ro.Percent()}
	if err := db.Rollouts().CreateRollout(ctx, ro, 0, ev); err != nil {
		tb.Fatalf("create rollout: %v", err)
	}
	const chunk = 25_000
	for lo := 0; lo < n; lo += chunk {
		var batch seedBatch
		for i := lo; i < min(lo+chunk, n); i++ {
			seedDevice(&batch, ro, i)
		}
		if err := db.writeSeedBatch(ctx, &batch); err != nil {
			tb.Fatalf("seed handsets %d to %d: %v", lo, min(lo+chunk, n), err)
		}
	}
	if err := db.computeRollups(ctx); err != nil {
		tb.Fatalf("compute rollups: %v", err)
	}
	return ro
}

// writeSeedBatch writes a batch: with COPY on PostgreSQL, with
// multi-row INSERTs in one transaction on SQLite.
func (db *DB) writeSeedBatch(ctx context.Context, b *seedBatch) error {
	tables := []struct {
		name string
		cols []string
		rows [][]any
	}{
		{"devices", seedDeviceCols, b.devices},
		{"device_rollouts", seedRecordCols, b.records},
		{"device_reports", seedReportCols, b.reports},
		{"device_patch_states", seedStateCols, b.states},
	}
	if db.dialect == dialectPostgres {
		conn, err := db.sql.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close()
		return conn.Raw(func(dc any) error {
			pc := dc.(*stdlib.Conn).Conn()
			for _, t := range tables {
				if _, err := pc.CopyFrom(ctx, pgx.Identifier{t.name}, t.cols, pgx.CopyFromRows(t.rows)); err != nil {
					return fmt.Errorf("copy into %s: %w", t.name, err)
				}
			}
			return nil
		})
	}
	tx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// A page cache of 256 MiB for the writing connection (the default is
	// 2 MiB): the indexes of a million rows take random inserts.
	if _, err := tx.ExecContext(ctx, "PRAGMA cache_size = -262144"); err != nil {
		return err
	}
	for _, t := range tables {
		if len(t.rows) == 0 {
			continue
		}
		// One parameter, a JSON array of rows, that json_each takes apart:
		// binding a parameter per value costs the driver more than SQLite
		// takes to parse JSON. Times go in as the driver writes them.
		var sb strings.Builder
		sb.WriteByte('[')
		for i, r := range t.rows {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteByte('[')
			for j, v := range r {
				if j > 0 {
					sb.WriteByte(',')
				}
				if err := writeSeedJSON(&sb, v); err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
			}
			sb.WriteByte(']')
		}
		sb.WriteByte(']')
		sel := make([]string, len(t.cols))
		for j := range t.cols {
			sel[j] = fmt.Sprintf("value ->> %d", j)
		}
		q := "INSERT INTO " + t.name + " (" + strings.Join(t.cols, ", ") + ") SELECT " + strings.Join(sel, ", ") + " FROM json_each(?)"
		if _, err := tx.ExecContext(ctx, q, sb.String()); err != nil {
			return fmt.Errorf("insert into %s: %w", t.name, err)
		}
	}
	return tx.Commit()
}

// sqliteTimeLayout is how the SQLite driver writes a time.Time.
const sqliteTimeLayout = "2006-01-02 15:04:05.999999999-07:00"

// writeSeedJSON writes v as a JSON value SQLite stores as the driver
// would store v.
func writeSeedJSON(sb *strings.Builder, v any) error {
	switch v := v.(type) {
	case nil:
		sb.WriteString("null")
	case string:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		sb.Write(b)
	case bool:
		if v {
			sb.WriteByte('1')
		} else {
			sb.WriteByte('0')
		}
	case int:
		sb.WriteString(strconv.Itoa(v))
	case time.Time:
		sb.WriteString(`"` + v.UTC().Format(sqliteTimeLayout) + `"`)
	case *time.Time:
		if v == nil {
			sb.WriteString("null")
		} else {
			sb.WriteString(`"` + v.UTC().Format(sqliteTimeLayout) + `"`)
		}
	default:
		return fmt.Errorf("seed value %T", v)
	}
	return nil
}

// computeRollups fills the rollups of migration 7 from the seeded tables
// with the GROUP BY inserts that define them (see rollupsSchema and
// rollups.go), then refreshes the planner's statistics as autovacuum
// would have by now. Shards are drawn from the device id's last digit
// here, not server.RollupShard: readers sum them either way.
func (db *DB) computeRollups(ctx context.Context) error {
	day, hour, shard, bucket := `substr(last_seen, 1, 10)`, `strftime('%Y-%m-%d %H:00:00', r.received_at) || '+00:00'`,
		`CAST(substr(%s, -1) AS INTEGER) %% 8`,
		`CAST(floor(8 * log2(1 + (unixepoch(result_at) - unixepoch(offered_at)))) AS INTEGER)`
	if db.dialect == dialectPostgres {
		day, hour, shard = `to_char(last_seen, 'YYYY-MM-DD')`, `date_trunc('hour', r.received_at)`, `CAST(right(%s, 1) AS INTEGER) %% 8`
		bucket = `CAST(floor(8 * log(2.0, (1 + extract(epoch FROM result_at - offered_at))::numeric)) AS INTEGER)`
	}
	stmts := []string{
		`DELETE FROM fleet_counts`, `DELETE FROM fleet_daily`, `DELETE FROM fleet_daily_totals`, `DELETE FROM rollout_counts`,
		`DELETE FROM rollout_failures`, `DELETE FROM rollout_hourly`, `DELETE FROM rollout_install_times`,
		`INSERT INTO fleet_counts (model, channel, region, build, installed_patches, cloud_messaging, number_encryption, n)
SELECT model, channel, region, build, installed_patches, cloud_messaging, number_encryption, COUNT(*)
FROM devices GROUP BY model, channel, region, build, installed_patches, cloud_messaging, number_encryption`,
		`INSERT INTO fleet_daily (day, model, region, cloud_messaging, number_encryption, n)
SELECT ` + day + `, model, region, cloud_messaging, number_encryption, COUNT(*)
FROM devices GROUP BY ` + day + `, model, region, cloud_messaging, number_encryption`,
		`INSERT INTO fleet_daily_totals (day, cloud_messaging, number_encryption, shard, n)
SELECT ` + day + `, cloud_messaging, number_encryption, ` + fmt.Sprintf(shard, "id") + `, COUNT(*)
FROM devices GROUP BY ` + day + `, cloud_messaging, number_encryption, ` + fmt.Sprintf(shard, "id"),
		`INSERT INTO rollout_counts (rollout_id, model, starting_build, state, shard, n)
SELECT rollout_id, model, starting_build, state, ` + fmt.Sprintf(shard, "device_id") + `, COUNT(*)
FROM device_rollouts GROUP BY rollout_id, model, starting_build, state, ` + fmt.Sprintf(shard, "device_id"),
		// Reports carry no rollout id: each is the rollout's whose record
		// the handset has for the patch.
		`INSERT INTO rollout_failures (rollout_id, error_code, n)
SELECT dr.rollout_id, r.error_code, COUNT(*)
FROM device_reports r JOIN device_rollouts dr ON dr.device_id = r.device_id AND dr.rollout_id = '` + seedRolloutID + `'
WHERE r.patch_id = '` + seedPatch + `' AND r.state = 'failed'
GROUP BY dr.rollout_id, r.error_code`,
		`INSERT INTO rollout_hourly (rollout_id, hour, installed, failed)
SELECT dr.rollout_id, ` + hour + `,
	SUM(CASE WHEN r.state = 'installed' THEN 1 ELSE 0 END), SUM(CASE WHEN r.state <> 'installed' THEN 1 ELSE 0 END)
FROM device_reports r JOIN device_rollouts dr ON dr.device_id = r.device_id AND dr.rollout_id = '` + seedRolloutID + `'
WHERE r.patch_id = '` + seedPatch + `' AND r.state IN ('installed', 'failed', 'rolled_back')
GROUP BY dr.rollout_id, ` + hour,
		`INSERT INTO rollout_install_times (rollout_id, bucket, n)
SELECT rollout_id, ` + bucket + `, COUNT(*)
FROM device_rollouts WHERE state = 'installed' GROUP BY rollout_id, ` + bucket,
	}
	for _, q := range stmts {
		if _, err := db.sql.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%.60s...: %w", q, err)
		}
	}
	var err error
	if db.dialect == dialectPostgres {
		_, err = db.sql.ExecContext(ctx, `VACUUM ANALYZE`)
	} else {
		_, err = db.sql.ExecContext(ctx, `ANALYZE`)
	}
	return err
}

// benchFleet is a seeded database shared by the benchmarks of one run.
type benchFleet struct {
	once    sync.Once
	db      *DB
	rollout *rollout.Rollout
	err     error
	// cleanup removes the database; TestMain calls it.
	cleanup func()
}

var benchFleets = map[string]*benchFleet{"sqlite": {}, "postgres": {}}

// TestMain removes the benchmarks' seeded databases when the run ends:
// they outlive any one benchmark.
func TestMain(m *testing.M) {
	code := m.Run()
	for _, f := range benchFleets {
		if f.cleanup != nil {
			f.cleanup()
		}
	}
	os.Exit(code)
}

// benchReports returns reports over a fleet of benchFleetSize handsets
// on backend be, seeding it on the first call of the run.
func benchReports(b *testing.B, be backend) *server.Reports {
	b.Helper()
	if os.Getenv(benchFleetEnv) == "" {
		b.Skip(benchFleetEnv + " not set: the report benchmarks seed a million handsets only when asked")
	}
	if be.name == "postgres" && os.Getenv(postgresDSNEnv) == "" {
		b.Skip(postgresDSNEnv + " not set")
	}
	f := benchFleets[be.name]
	f.once.Do(func() {
		start := time.Now()
		f.db, f.cleanup, f.err = openBenchDB(be.name)
		if f.err != nil {
			return
		}
		f.rollout = seedReportFleet(b, f.db, benchFleetSize)
		if f.err = addUnfoldedTail(f.db, f.rollout, benchTail); f.err != nil {
			return
		}
		b.Logf("%s: seeded %d handsets in %s; %s", be.name, benchFleetSize, time.Since(start).Round(time.Second), rollupSizes(b, f.db))
	})
	if f.err != nil {
		b.Fatal(f.err)
	}
	if f.rollout == nil {
		b.Fatal("seeding failed in an earlier benchmark")
	}
	return &server.Reports{Store: f.db.Reports(), Rollouts: f.db.Rollouts()}
}

// benchFleetSize is how many handsets the benchmarks seed; benchTail
// how many state-changing check-ins and as many reports are then left
// unfolded in the rollups' delta logs, for the reports to add: about
// 30,000 log rows, twice what a second of a 5,000/s wave appends before
// the next fold.
const (
	benchFleetSize = 1_000_000
	benchTail      = 5000
)

// addUnfoldedTail makes n state-changing check-ins (a new build) and n
// reports (downloading, of handsets offered the rollout) through the
// store, from 16 goroutines, and does not fold them.
func addUnfoldedTail(db *DB, ro *rollout.Rollout, n int) error {
	ctx := context.Background()
	var hashes, offered []string
	if err := db.gorm.Raw(`SELECT token_hash FROM devices ORDER BY id LIMIT ?`, n).Scan(&hashes).Error; err != nil {
		return err
	}
	if err := db.gorm.Raw(`SELECT device_id FROM device_rollouts WHERE rollout_id = ? AND state = ? ORDER BY device_id LIMIT ?`,
		ro.ID, handsets.DeviceOffered, n).Scan(&offered).Error; err != nil {
		return err
	}
	s := db.Devices()
	work := make(chan func() error)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range 16 {
		wg.Go(func() {
			for fn := range work {
				if err := fn(); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
				}
			}
		})
	}
	for i, h := range hashes {
		work <- func() error {
			d, _, err := s.CheckInState(ctx, h)
			if err != nil {
				return err
			}
			ci := handsets.CheckIn{Build: "7.9.9", Model: d.Model, Channel: d.Channel, InstalledPatches: d.InstalledPatches,
				CloudMessaging: d.CloudMessaging, NumberEncryption: d.NumberEncryption}
			return s.SaveCheckIn(ctx, d, d.AfterCheckIn(ci, seedNow.Add(-time.Duration(i)*time.Millisecond)), nil)
		}
	}
	for i, id := range offered {
		work <- func() error {
			_, err := s.AddReport(ctx, handsets.Report{ID: fmt.Sprintf("tail-%d", i), DeviceID: id, PatchID: seedPatch,
				RolloutID: ro.ID, Target: seedTarget, State: handsets.StateDownloading,
				At: seedNow.Add(-time.Minute), ReceivedAt: seedNow.Add(-time.Minute)})
			return err
		}
	}
	close(work)
	wg.Wait()
	return first
}

// openBenchDB opens a migrated, empty database for the run: SQLite in a
// temporary directory, or a new database on the server of
// OTA_TEST_POSTGRES_DSN.
func openBenchDB(dialect string) (*DB, func(), error) {
	ctx := context.Background()
	if dialect == "sqlite" {
		dir, err := os.MkdirTemp("", "ota-report-bench-")
		if err != nil {
			return nil, nil, err
		}
		db, err := Open(ctx, "sqlite:"+filepath.Join(dir, "ota.db"), Options{})
		if err == nil {
			_, err = db.Migrate(ctx)
		}
		return db, func() {
			if db != nil {
				db.Close()
			}
			os.RemoveAll(dir)
		}, err
	}
	base := os.Getenv(postgresDSNEnv)
	u, err := url.Parse(base)
	if err != nil {
		return nil, nil, err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, nil, err
	}
	name := "ota_report_bench_" + hex.EncodeToString(rnd[:])
	admin := func(q string) error {
		db, err := Open(ctx, base, Options{MaxOpenConns: 1})
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.sql.ExecContext(ctx, q)
		return err
	}
	if err := admin("CREATE DATABASE " + name + " TEMPLATE template0"); err != nil {
		return nil, nil, err
	}
	u.Path = "/" + name
	db, err := Open(ctx, u.String(), Options{})
	if err == nil {
		_, err = db.Migrate(ctx)
	}
	return db, func() {
		if db != nil {
			db.Close()
		}
		_ = admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
	}, err
}

// rollupSizes says how many rows the seeded tables and rollups hold.
func rollupSizes(tb testing.TB, db *DB) string {
	var parts []string
	tables := []string{"devices", "device_rollouts", "device_reports", "fleet_counts", "fleet_daily",
		"fleet_daily_totals", "rollout_counts", "rollout_failures", "rollout_hourly", "rollout_install_times"}
	for _, t := range counterTables {
		tables = append(tables, t.log())
	}
	for _, t := range tables {
		var n int64
		if err := db.sql.QueryRowContext(context.Background(), "SELECT COUNT(*) FROM "+t).Scan(&n); err != nil {
			tb.Fatalf("count %s: %v", t, err)
		}
		parts = append(parts, fmt.Sprintf("%s %d", t, n))
	}
	return strings.Join(parts, ", ")
}

// BenchmarkRolloutReport1M measures a rollout report (the store's reads
// and the assembly) over a million seeded handsets.
func BenchmarkRolloutReport1M(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			reports := benchReports(b, be)
			for b.Loop() {
				rep, err := reports.RolloutReport(b.Context(), seedRolloutID, seedNow)
				if err != nil {
					b.Fatal(err)
				}
				if rep.Offered == 0 {
					b.Fatal("the seeded rollout has no records")
				}
			}
		})
	}
}

// BenchmarkExposureReport1M measures an exposure report of the latest
// day and the 30 days before it over a million seeded handsets.
func BenchmarkExposureReport1M(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			reports := benchReports(b, be)
			for b.Loop() {
				rep, err := reports.ExposureReport(b.Context(), server.ExposureOptions{}, seedNow)
				if err != nil {
					b.Fatal(err)
				}
				if rep.Active == 0 {
					b.Fatal("the seeded fleet has no active handsets")
				}
			}
		})
	}
}

// TestSeededReports seeds 2,000 handsets with the benchmarks' seeder and
// checks the reports, read from the rollups, against counts made by
// scanning devices, device_rollouts and device_reports: the seeder's
// rollups and the reports agree with the fleet they count.
func TestSeededReports(t *testing.T) {
	runStoreSuite(t, []storeCase{{"Agree", testSeededReports}})
}

func testSeededReports(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	ro := seedReportFleet(t, db, n)
	reports := &server.Reports{Store: db.Reports(), Rollouts: db.Rollouts()}
	rep, err := reports.RolloutReport(t.Context(), ro.ID, seedNow)
	if err != nil {
		t.Fatal(err)
	}
	g := db.gorm.WithContext(t.Context())

	type device struct {
		ID, Model, Build, Channel, Region, InstalledPatches, CloudMessaging string
		NumberEncryption                                                    bool
		LastSeen                                                            time.Time
	}
	var devices []device
	if err := g.Raw(`SELECT id, model, build, channel, region, installed_patches, cloud_messaging, number_encryption, last_seen FROM devices`).
		Scan(&devices).Error; err != nil {
		t.Fatal(err)
	}
	if len(devices) != n {
		t.Fatalf("%d devices, want %d", len(devices), n)
	}
	type record struct {
		Model, StartingBuild, State string
		OfferedAt                   time.Time
		ResultAt                    *time.Time
	}
	var records []record
	if err := g.Raw(`SELECT model, starting_build, state, offered_at, result_at FROM device_rollouts WHERE rollout_id = ?`, ro.ID).
		Scan(&records).Error; err != nil {
		t.Fatal(err)
	}
	type result struct {
		State, ErrorCode string
		ReceivedAt       time.Time
	}
	var results []result
	if err := g.Raw(`SELECT r.state, r.error_code, r.received_at FROM device_reports r
WHERE r.patch_id = ? AND r.state IN ('installed', 'failed', 'rolled_back')
	AND EXISTS (SELECT 1 FROM device_rollouts dr WHERE dr.device_id = r.device_id AND dr.rollout_id = ?)`, seedPatch, ro.ID).
		Scan(&results).Error; err != nil {
		t.Fatal(err)
	}

	// The rollout, counted handset by handset with the check-in's rules.
	byModel := map[string]*server.CohortCounts{}
	at := func(m string) *server.CohortCounts {
		if byModel[m] == nil {
			byModel[m] = &server.CohortCounts{}
		}
		return byModel[m]
	}
	var want server.CohortCounts
	for _, d := range devices {
		var patches []string
		if d.InstalledPatches != "" {
			patches = strings.Split(strings.Trim(d.InstalledPatches, ","), ",")
		}
		hd := &handsets.Device{ID: d.ID, Model: d.Model, Build: d.Build, Channel: d.Channel, Region: d.Region, InstalledPatches: patches}
		if ro.Selector.Matches(hd) && ro.Pending(hd) {
			want.Eligible++
			at(d.Model).Eligible++
		}
	}
	var installTimes []time.Duration
	for _, r := range records {
		c := at(r.Model)
		for _, cc := range []*server.CohortCounts{&want, c} {
			cc.Offered++
			switch r.State {
			case handsets.DeviceOffered:
				cc.Pending++
			case handsets.StateInstalled:
				cc.Installed++
			case handsets.StateFailed:
				cc.Failed++
			case handsets.StateRolledBack:
				cc.RolledBack++
			default:
				cc.Downloading++
			}
		}
		if r.State == handsets.StateInstalled {
			installTimes = append(installTimes, r.ResultAt.Sub(r.OfferedAt))
		}
	}
	want.Target = server.CohortTarget(want.Eligible, want.Installed, ro.Percent())
	if rep.CohortCounts != want {
		t.Errorf("rollout totals:\n got %+v\nwant %+v", rep.CohortCounts, want)
	}
	if want.Offered < n/4 || want.Installed < want.Offered/2 || want.Pending == 0 || want.Downloading == 0 || want.Failed == 0 || want.RolledBack == 0 {
		t.Errorf("the seeder made an unrealistic rollout: %+v", want)
	}
	for _, m := range rep.ByModel {
		c := byModel[m.Model]
		if c == nil {
			t.Errorf("model %s in the report, not in the fleet", m.Model)
			continue
		}
		c.Target = server.CohortTarget(c.Eligible, c.Installed, ro.Percent())
		if m.CohortCounts != *c {
			t.Errorf("model %s:\n got %+v\nwant %+v", m.Model, m.CohortCounts, *c)
		}
		if m.Held != (m.Model == "QZ-1") {
			t.Errorf("model %s held %v, want only QZ-1 held", m.Model, m.Held)
		}
		delete(byModel, m.Model)
	}
	for m := range byModel {
		t.Errorf("model %s missing from the report", m)
	}

	codes := map[string]int64{}
	hours := map[time.Time]server.HourResults{}
	first := seedNow.Truncate(time.Hour).Add(-47 * time.Hour)
	for _, r := range results {
		if r.State == handsets.StateFailed {
			codes[r.ErrorCode]++
		}
		h := r.ReceivedAt.UTC().Truncate(time.Hour)
		if h.Before(first) {
			continue
		}
		hr := hours[h]
		if r.State == handsets.StateInstalled {
			hr.Installed++
		} else {
			hr.Failed++
		}
		hours[h] = hr
	}
	var wantCodes []handsets.FailureCount
	for c, k := range codes {
		wantCodes = append(wantCodes, handsets.FailureCount{ErrorCode: c, Count: k})
	}
	slices.SortFunc(wantCodes, func(a, b handsets.FailureCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.ErrorCode, b.ErrorCode))
	})
	if len(wantCodes) > server.TopFailureCodes {
		var rest int64
		for _, c := range wantCodes[server.TopFailureCodes:] {
			rest += c.Count
		}
		wantCodes = append(wantCodes[:server.TopFailureCodes], handsets.FailureCount{ErrorCode: server.OtherCodes, Count: rest})
	}
	if !slices.Equal(rep.FailureCodes, wantCodes) {
		t.Errorf("failure codes:\n got %v\nwant %v", rep.FailureCodes, wantCodes)
	}
	var resultsInWindow int64
	for _, h := range rep.InstallsPerHour {
		w := hours[h.Hour]
		if h.Installed != w.Installed || h.Failed != w.Failed {
			t.Errorf("hour %s: got %d installed, %d failed; want %d, %d", h.Hour, h.Installed, h.Failed, w.Installed, w.Failed)
		}
		resultsInWindow += h.Installed + h.Failed
	}
	if resultsInWindow == 0 {
		t.Error("no results in the last 48 hours: the seeder's times are off")
	}
	slices.Sort(installTimes)
	if it := rep.OfferToInstall; it.Count != int64(len(installTimes)) || it.P50 == nil || it.P95 == nil {
		t.Errorf("offer to install %+v, want %d installs", it, len(installTimes))
	} else {
		for _, p := range []struct {
			q   float64
			got float64
		}{{0.5, *it.P50}, {0.95, *it.P95}} {
			exact := installTimes[int(math.Ceil(p.q*float64(len(installTimes))))-1].Seconds()
			if math.Abs(p.got-exact)/exact > 0.09 {
				t.Errorf("p%.0f %.0f s, want within 9%% of the exact %.0f s", p.q*100, p.got, exact)
			}
		}
	}

	// Exposure, counted handset by handset on the day of its last_seen.
	exp, err := reports.ExposureReport(t.Context(), server.ExposureOptions{Top: 5}, seedNow)
	if err != nil {
		t.Fatal(err)
	}
	latest := ""
	perDay := map[string]*server.DayExposure{}
	var wantExp server.ExposureCounts
	models := map[string]int64{}
	for _, d := range devices {
		day := d.LastSeen.UTC().Format(time.DateOnly)
		latest = max(latest, day)
		de := perDay[day]
		if de == nil {
			de = &server.DayExposure{Day: day}
			perDay[day] = de
		}
		de.Active++
		if d.CloudMessaging == handsets.MessagingAutoEnabled || !d.NumberEncryption {
			de.Exposed++
		}
	}
	for _, d := range devices {
		if d.LastSeen.UTC().Format(time.DateOnly) != latest {
			continue
		}
		wantExp.Active++
		auto, unenc := d.CloudMessaging == handsets.MessagingAutoEnabled, !d.NumberEncryption
		if auto {
			wantExp.AutoEnabled++
		}
		if unenc {
			wantExp.Unencrypted++
		}
		if auto || unenc {
			wantExp.Exposed++
			models[d.Model]++
		} else {
			wantExp.Compliant++
		}
	}
	wantExp.ShareExposed = math.Round(float64(wantExp.Exposed)/float64(wantExp.Active)*1e6) / 1e6
	if exp.Day != latest || exp.ExposureCounts != wantExp {
		t.Errorf("exposure of %s:\n got %+v\nwant %+v of %s", exp.Day, exp.ExposureCounts, wantExp, latest)
	}
	if len(exp.ByModel) != 6 || exp.ByModel[5].Model != handsets.OtherModels {
		t.Fatalf("by model %+v, want the top 5 and (other)", exp.ByModel)
	}
	var sum int64
	for _, m := range exp.ByModel[:5] {
		if m.Exposed != models[m.Model] {
			t.Errorf("model %s: %d exposed, want %d", m.Model, m.Exposed, models[m.Model])
		}
		sum += m.Exposed
	}
	if sum+exp.ByModel[5].Exposed != wantExp.Exposed {
		t.Errorf("models sum to %d exposed, want %d", sum+exp.ByModel[5].Exposed, wantExp.Exposed)
	}
	if len(exp.Daily) != server.DefaultExposureDays || exp.Daily[len(exp.Daily)-1].Day != latest {
		t.Fatalf("%d days up to %s, want %d up to %s", len(exp.Daily), exp.Daily[len(exp.Daily)-1].Day, server.DefaultExposureDays, latest)
	}
	for _, d := range exp.Daily {
		w := perDay[d.Day]
		if w == nil {
			w = &server.DayExposure{}
		}
		if d.Active != w.Active || d.Exposed != w.Exposed {
			t.Errorf("day %s: %d active, %d exposed; want %d, %d", d.Day, d.Active, d.Exposed, w.Active, w.Exposed)
		}
	}
}
