package sqlstore

import (
	"context"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// BenchmarkRolloutTimeline1M measures what a young rollout's timeline
// costs over the million seeded handsets:
//
//	OTA_BENCH_1M=1 go test ./server/sqlstore -run '^$' -bench 'RolloutTimeline1M' -benchtime 10x
//
// "records" is the read of every record of the seeded rollout by minute
// (RolloutRecordTimes), which a report makes only for a rollout under
// server.TimelineRecordsAge with at most server.TimelineMaxRecords
// records; the seeded rollout has more, so this bounds that read from
// above. "report" is the whole rollout report with the seeded rollout
// made 5 hours old: its timeline then wants 10-minute buckets, and the
// bound decides whether the records are read.
func BenchmarkRolloutTimeline1M(b *testing.B) {
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			reports := benchReports(b, be)
			f := benchFleets[be.name]
			b.Run("records", func(b *testing.B) {
				var n int64
				for b.Loop() {
					rows, err := f.db.Reports().RolloutRecordTimes(b.Context(), seedRolloutID, time.Minute)
					if err != nil {
						b.Fatal(err)
					}
					n = 0
					for _, r := range rows {
						if r.State == handsets.DeviceOffered {
							n += r.N
						}
					}
				}
				b.ReportMetric(float64(n), "records")
				if n > 0 {
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
				}
			})
			b.Run("report", func(b *testing.B) {
				young := &server.Reports{Store: reports.Store, Rollouts: youngLookup{reports.Rollouts, seedNow.Add(-5 * time.Hour)}}
				var kind string
				for b.Loop() {
					rep, err := young.RolloutReport(b.Context(), seedRolloutID, seedNow)
					if err != nil {
						b.Fatal(err)
					}
					kind = rep.Timeline.Kind
				}
				b.Logf("timeline %s", kind)
			})
		})
	}
}

// youngLookup returns rollouts as if they had started at started.
type youngLookup struct {
	server.RolloutLookup
	started time.Time
}

func (y youngLookup) Rollout(ctx context.Context, id string) (*rollout.Rollout, error) {
	ro, err := y.RolloutLookup.Rollout(ctx, id)
	if err != nil {
		return nil, err
	}
	c := *ro
	c.StartedAt = y.started
	return &c, nil
}
