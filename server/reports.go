package server

import (
	"context"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// Reports answer the release managers' and security leads' questions
// from the rollups (rollup.go), never from the fleet: a report at
// millions of handsets is a few grouped reads of tables whose size does
// not grow with the fleet.
type Reports struct {
	Store    ReportStore
	Rollouts RolloutLookup
	// Now is the clock the API reads reports at (default time.Now).
	Now func() time.Time
}

// RolloutLookup is the part of RolloutStore that reports need.
type RolloutLookup interface {
	// Rollout returns the rollout id, or ErrNotFound.
	Rollout(ctx context.Context, id string) (*rollout.Rollout, error)
}

// ReportStore reads the rollups. Each method reads in one snapshot, so
// the parts of one report agree with each other.
type ReportStore interface {
	// RolloutRollups returns rollout rolloutID's counters, its results
	// per hour from hoursSince on, and the fleet counts of the handsets
	// fleet admits (the caller checks builds and patches).
	RolloutRollups(ctx context.Context, rolloutID string, hoursSince time.Time, fleet FleetFilter) (*RolloutRollups, error)
	// ExposureRollups returns the fleet_daily rows of day ("" is the
	// latest day with data; with none, Day is "") and the daily totals of
	// the days days before it up to it.
	ExposureRollups(ctx context.Context, day string, days int) (*ExposureRollups, error)
	// RolloutRecordTimes counts rollout rolloutID's records by the time
	// of their first offer and of their latest result, truncated to unit
	// (time.Second or time.Minute): see RecordTimeCount. It reads every
	// record of the rollout: the caller bounds it (TimelineMaxRecords).
	RolloutRecordTimes(ctx context.Context, rolloutID string, unit time.Duration) ([]RecordTimeCount, error)
	// ExposureSamples returns the exposure samples of the buckets that
	// start from since to until (both included), oldest first.
	ExposureSamples(ctx context.Context, since, until time.Time) ([]ExposureSample, error)
}

// RolloutRollups are the rows a rollout report is made of.
type RolloutRollups struct {
	// Fleet counts the enrolled handsets by what eligibility depends on.
	Fleet []FleetCount
	// Records counts the rollout's device_rollouts records.
	Records      []RolloutCount
	Failures     []handsets.FailureCount
	Hourly       []HourResults
	InstallTimes []BucketCount
	// Confirmed counts the rollout's confirmed records (rollout.Confirmed)
	// by model and starting build, in RolloutCount's State
	// handsets.StateInstalled; ConfirmTimes their offer-to-confirmation
	// times.
	Confirmed    []RolloutCount
	ConfirmTimes []BucketCount
	// StateHours are the net changes, per hour after the report's first
	// hour, of how many records are in each state.
	StateHours []StateHourDelta
	// RecordTimes, when not nil, count the records by time for a
	// timeline finer than an hour (RolloutRecordTimes).
	RecordTimes []RecordTimeCount
	// Payloads count the first and retry offers by payload.
	Payloads []PayloadCount
}

// StateHourDelta is the net change of how many of a rollout's records
// were in State during the hour that starts at Hour.
type StateHourDelta struct {
	Hour  time.Time
	State string
	N     int64
}

// HourStates is where a rollout's records stood at the end of an hour.
type HourStates struct {
	Hour        time.Time `json:"hour"`
	Pending     int64     `json:"pending"`
	Downloading int64     `json:"downloading"`
	Installed   int64     `json:"installed"`
	Failed      int64     `json:"failed"`
	RolledBack  int64     `json:"rolled_back"`
}

// FleetFilter admits the handsets whose model, channel and region are
// in its lists; an empty list admits any.
type FleetFilter struct {
	Models, Channels, Regions []string
}

// FleetCount is how many enrolled handsets (N, above 0) of a
// FleetFilter share a model, build and set of installed patches.
type FleetCount struct {
	Model, Build string
	// InstalledPatches is the patch set as the store encodes it: ",A,B,"
	// (a comma on both sides of every id), "" for none.
	InstalledPatches string
	N                int64
}

// RolloutCount is how many of a rollout's records share a model,
// starting build and state (DeviceOffered or a report state).
type RolloutCount struct {
	Model, StartingBuild, State string
	N                           int64
}

// HourResults are the results of one hour: installs that finished and
// installs that failed (a rollback counts as failed).
type HourResults struct {
	Hour      time.Time `json:"hour"`
	Installed int64     `json:"installed"`
	Failed    int64     `json:"failed"`
}

// BucketCount is how many offer-to-install times fell in bucket Bucket
// of InstallTimeBucket.
type BucketCount struct {
	Bucket int
	N      int64
}

// ExposureRollups are the rows an exposure report is made of.
type ExposureRollups struct {
	// Day is the day Segments count.
	Day string
	// Segments count the handsets seen on Day.
	Segments []ExposureCount
	// Daily count the handsets seen on each day of the series.
	Daily []DailyCount
}

// ExposureCount is how many handsets seen on a day share a model,
// region and privacy state.
type ExposureCount struct {
	Model, Region    string
	CloudMessaging   string
	NumberEncryption bool
	N                int64
}

// DailyCount is how many handsets seen on Day share a privacy state.
type DailyCount struct {
	Day              string
	CloudMessaging   string
	NumberEncryption bool
	N                int64
}

// exposed is the incident: cloud messaging that switched itself on, or
// phone numbers sent unencrypted.
func exposed(messaging string, encryption bool) bool {
	return messaging == handsets.MessagingAutoEnabled || !encryption
}

// Limits of the reports' lists.
const (
	// MaxReportRows is how many models or builds a rollout report lists
	// one by one; the rest sum up in one OtherModels (OtherBuilds) row.
	MaxReportRows = 200
	// TopFailureCodes is how many error codes a rollout report lists.
	TopFailureCodes = 10
	// ReportHours is how many hours installs_per_hour covers.
	ReportHours = 48
	// DefaultExposureDays and MaxExposureDays bound the exposure series.
	DefaultExposureDays = 30
	MaxExposureDays     = 366
	// ComplianceTarget is the compliant share the projection aims at.
	ComplianceTarget = 0.95
	// projectionDays is how many days of the series the projection's
	// trend is fitted over.
	projectionDays = 7
	// maxProjectionDays is how far ahead a projection may land.
	maxProjectionDays = 3650
)

// OtherBuilds is the starting build of the rollout report row that sums
// the builds past MaxReportRows; OtherRegions is the region of the
// exposure report row that sums the regions past its top. Neither can be
// a handset's build or region.
const (
	OtherBuilds  = "(other)"
	OtherRegions = "(other)"
	// OtherCodes is the error code of the row that sums the failure codes
	// past TopFailureCodes; error codes are upper snake case.
	OtherCodes = "(other)"
)

func (r *Reports) now() time.Time { return clock.Now(r.Now) }

// Clock is the time the API reads reports at: Now, or the wall clock.
func (r *Reports) Clock() time.Time { return r.now() }

// entry is m's value for k, a new zero one the first time: the reports
// sum rollup rows into one entry per model, build or region.
func entry[T any](m map[string]*T, k string) *T {
	c := m[k]
	if c == nil {
		c = new(T)
		m[k] = c
	}
	return c
}
