package handsets

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
)

// Messaging states a handset reports for its cloud-messaging service.
const (
	MessagingOptedIn     = "opted_in"     // the user turned it on
	MessagingOptedOut    = "opted_out"    // off (the patched default)
	MessagingAutoEnabled = "auto_enabled" // switched itself on at first boot: the incident
)

// Install states a handset reports for a patch.
const (
	StateDownloading = "downloading"
	StateDownloaded  = "downloaded"
	StateVerified    = "verified"
	StateInstalling  = "installing"
	StateInstalled   = "installed"
	StateFailed      = "failed"
	StateRolledBack  = "rolled_back"
)

// ReportStates lists the valid report states in install order.
var ReportStates = []string{StateDownloading, StateDownloaded, StateVerified, StateInstalling,
	StateInstalled, StateFailed, StateRolledBack}

// Device is an enrolled handset as the server knows it. It holds nothing
// that identifies a person or a SIM: no IMEI, IMSI, phone number, contact,
// message or IP address.
type Device struct {
	ID string
	// KeyFingerprint is the sha256 of the device's public key when it
	// enrolled with one; re-enrolling with the same key finds the device.
	KeyFingerprint string
	// KeySignedAt is the signed timestamp of the key enrollment that last
	// set the device's token; the next one must be newer, so a captured
	// enrollment cannot be replayed. Zero for a device without a key.
	KeySignedAt time.Time
	Model       string
	Build       string
	Channel     string
	Region      string
	// InstalledPatches are the patch ids the handset runs, sorted.
	InstalledPatches []string
	CloudMessaging   string
	NumberEncryption bool
	EnrolledAt       time.Time
	LastSeen         time.Time
	// Rev is the store's revision of the device, one more at each write:
	// SaveCheckIn writes only over the revision it was read at, so two
	// check-ins of one handset at once cannot both count it in the
	// rollups.
	Rev int64
}

// Patched reports whether the device runs patchID.
func (d *Device) Patched(patchID string) bool { return slices.Contains(d.InstalledPatches, patchID) }

// Compliant reports whether the device runs patchID with cloud messaging
// not switched on by itself and number encryption on.
func (d *Device) Compliant(patchID string) bool {
	return d.Patched(patchID) && d.CloudMessaging != MessagingAutoEnabled && d.NumberEncryption
}

// CheckIn is what a handset reports when it polls.
type CheckIn struct {
	Build            string
	Model            string
	Channel          string
	InstalledPatches []string
	CloudMessaging   string
	NumberEncryption bool
	// UTCOffsetMinutes, optional, is the handset's offset from UTC, for
	// maintenance windows in its local hours. It is used for the
	// decision and never stored: it is coarse (a time zone), and the
	// server keeps no location.
	UTCOffsetMinutes *int
}

// AfterCheckIn is d after the check-in ci at now: what the store saves.
func (d *Device) AfterCheckIn(ci CheckIn, now time.Time) *Device {
	next := *d
	next.Build, next.Model, next.Channel = ci.Build, ci.Model, ci.Channel
	next.InstalledPatches = slices.Compact(slices.Sorted(slices.Values(ci.InstalledPatches)))
	if next.InstalledPatches == nil {
		next.InstalledPatches = []string{}
	}
	next.CloudMessaging, next.NumberEncryption = ci.CloudMessaging, ci.NumberEncryption
	next.LastSeen = now
	return &next
}

// sameState reports whether d and o hold the same handset state: all
// that a check-in can change but last_seen.
func (d *Device) sameState(o *Device) bool {
	return d.Build == o.Build && d.Model == o.Model && d.Channel == o.Channel &&
		slices.Equal(d.InstalledPatches, o.InstalledPatches) &&
		d.CloudMessaging == o.CloudMessaging && d.NumberEncryption == o.NumberEncryption
}

// NeedsWrite reports whether the check-in that made next from d must be
// written: when the handset's state changed, when it is the device's
// first check-in of a UTC day (the daily rollups count it), or when the
// stored last_seen is resolution old or older. Most check-ins change
// nothing else, and skipping their write is what lets one database
// answer thousands a second; last_seen is then up to resolution behind,
// which counts of handsets active over days do not notice.
func NeedsWrite(d, next *Device, resolution time.Duration) bool {
	return !d.sameState(next) || !SameDay(d.LastSeen, next.LastSeen) || next.LastSeen.Sub(d.LastSeen) >= resolution
}

// SameDay reports whether a and b fall on the same UTC day.
func SameDay(a, b time.Time) bool {
	ay, am, ad := a.UTC().Date()
	by, bm, bd := b.UTC().Date()
	return ay == by && am == bm && ad == bd
}

// Report is one install state change of a handset, with the id the
// handset made for it so a retried report is stored once.
type Report struct {
	ID       string
	DeviceID string
	PatchID  string
	// RolloutID, optional, is the rollout of the offer the report is
	// about. Without one (or with one the handset has no record of) the
	// report is attributed to the handset's latest offer of the patch.
	// It is not stored with the report.
	RolloutID string
	Target    string
	State     string
	ErrorCode string
	Message   string
	// At is when the handset saw the change; reports may arrive out of
	// order and the latest At decides the current state.
	At         time.Time
	ReceivedAt time.Time
}

// ReportOutcome is what storing a report did.
type ReportOutcome struct {
	Duplicate bool
	// RolloutID and RolloutState are the rollout record the report moved
	// and its new state; empty when it moved none (no record of the
	// patch, or a state that does not move it).
	RolloutID    string
	RolloutState string
}

// PatchState is a device's current install state for one patch.
type PatchState struct {
	PatchID   string
	State     string
	ErrorCode string
	At        time.Time
}

// DeviceStore keeps devices, their reports and install states.
type DeviceStore interface {
	// Enroll stores d with tokenHash. When d.KeyFingerprint is set (and
	// with it d.KeySignedAt) and a device with that fingerprint exists, it
	// is updated instead (its token replaced) and its id returned with
	// created false, but only if d.KeySignedAt is after the stored one:
	// otherwise ErrConflict, and nothing changes. The check and the update
	// are one atomic step, so of concurrent replays at most one passes.
	Enroll(ctx context.Context, d *Device, tokenHash string) (id string, created bool, err error)
	// CheckInState returns the device holding tokenHash, with its Rev,
	// and its records of the rollouts that made it offers, in one read;
	// ErrDeviceToken for an unknown token.
	CheckInState(ctx context.Context, tokenHash string) (*Device, []*DeviceRollout, error)
	// SaveCheckIn writes next, the device old after a check-in, with the
	// rollups it moves, if the stored device is still at old.Rev: it then
	// sets next.Rev. A stored device at another revision is ErrConflict
	// and nothing is written: read it again. An erased device is
	// ErrDeviceToken. confirmations are the changes the check-in makes to
	// the confirmation of old's records (rollout.Confirmations): they
	// are counted with the write, and the offer-to-confirmation time of
	// each record it confirms.
	SaveCheckIn(ctx context.Context, old, next *Device, confirmations []Confirmation) error
	// DeviceByToken returns the device holding tokenHash, or ErrDeviceToken.
	DeviceByToken(ctx context.Context, tokenHash string) (*Device, error)
	// AddReport stores r once per (device, report id), moves the
	// device's state for the patch to r if r is the latest, and moves the
	// device's record of the rollout the report is about (r.RolloutID, or
	// else its latest offer of the patch) by DeviceRollout.Observe, with
	// the rollups, all in one transaction. Duplicate is true for a retry
	// of a stored report (same patch, target, state, error code, message
	// and time), which changes nothing. A report id already stored with
	// other content is ErrConflict. A nil error means committed.
	AddReport(ctx context.Context, r Report) (ReportOutcome, error)
	// DeleteDevice erases a device with its reports, states and rollout
	// records.
	DeleteDevice(ctx context.Context, id string) error
	// DeleteReportsBefore erases reports received before t.
	DeleteReportsBefore(ctx context.Context, t time.Time) (int64, error)
	// DeleteDailyRollupsBefore erases the daily fleet rollups of the UTC
	// days before the day of t, and returns how many rows.
	DeleteDailyRollupsBefore(ctx context.Context, t time.Time) (int64, error)
	// PatchStates returns a device's current state per patch.
	PatchStates(ctx context.Context, deviceID string) ([]PatchState, error)
	// Reports returns a device's reports, oldest first.
	Reports(ctx context.Context, deviceID string) ([]Report, error)
	// FleetSummary counts the fleet for patchID among devices seen since
	// activeSince. ByModel lists at most maxModels models, those with the
	// most active devices, and one OtherModels row summing the rest.
	FleetSummary(ctx context.Context, patchID string, activeSince time.Time, maxModels int) (*FleetSummary, error)
}

// FleetSummary is the rollout at a glance.
type FleetSummary struct {
	PatchID    string `json:"patch_id"`
	ActiveDays int    `json:"active_days"`
	Enrolled   int64  `json:"enrolled"`
	Active     int64  `json:"active"`
	Patched    int64  `json:"patched"`
	Compliant  int64  `json:"compliant"`
	// ByModel lists the models with active devices, most active first
	// (ties by name), capped; an OtherModels row last sums the rest.
	ByModel []ModelSummary `json:"by_model"`
	// States counts active devices by their current state for the patch.
	States   map[string]int64 `json:"states"`
	Failures []FailureCount   `json:"failures"`
}

// ModelSummary is FleetSummary for one model, or for the OtherModels.
type ModelSummary struct {
	Model     string `json:"model"`
	Active    int64  `json:"active"`
	Patched   int64  `json:"patched"`
	Compliant int64  `json:"compliant"`
	// Models is how many models the OtherModels row sums; zero (and
	// left out) on the row of a single model.
	Models int64 `json:"models,omitempty"`
}

// OtherModels is the model name of the FleetSummary row that sums the
// models past the cap. No handset model can be called that: model names
// start with a letter or digit.
const OtherModels = "(other)"

// Default and largest number of models FleetSummary lists one by one.
const (
	DefaultSummaryModels = 20
	MaxSummaryModels     = 200
)

// FailureCount is how many active devices' latest state for the patch is
// failed with a code.
type FailureCount struct {
	ErrorCode string `json:"error_code"`
	Count     int64  `json:"count"`
}

// Validate checks a check-in, naming the field at fault.
func (ci *CheckIn) Validate() error {
	if err := ValidateDeviceInfo(ci.Model, ci.Build, ci.Channel, ""); err != nil {
		return err
	}
	if len(ci.InstalledPatches) > 64 {
		return errs.Fieldf("installed_patches", "at most 64")
	}
	for i, p := range ci.InstalledPatches {
		if err := ValidatePatchID(fmt.Sprintf("installed_patches[%d]", i), p); err != nil {
			return err
		}
	}
	switch ci.CloudMessaging {
	case MessagingOptedIn, MessagingOptedOut, MessagingAutoEnabled:
	default:
		return errs.Fieldf("cloud_messaging", "want opted_in, opted_out or auto_enabled")
	}
	if o := ci.UTCOffsetMinutes; o != nil && (*o < MinUTCOffsetMinutes || *o > MaxUTCOffsetMinutes || *o%15 != 0) {
		return errs.Fieldf("utc_offset_minutes", "want the time zone's offset from UTC in minutes, a multiple of 15 from -720 to 840")
	}
	ci.InstalledPatches = slices.Compact(slices.Sorted(slices.Values(ci.InstalledPatches)))
	return nil
}

// MaxReportSkew is how far ahead of the server's clock a report's time
// may be. The latest time decides a device's state, so a handset whose
// clock runs fast would otherwise pin its state against later reports;
// a report further ahead is refused, never clamped.
const MaxReportSkew = 10 * time.Minute

// Validate checks what a report says on its own, naming the field at
// fault; Fleet.Report checks the rest against the device and the
// published patches.
func (r *Report) Validate(now time.Time) error {
	// A UUID is what most handset code makes for an id; in its fixed
	// groups of at most 12 hex digits no IMEI or IMSI fits, and it is made
	// by code, not typed, so it is accepted as it is.
	if !uuidPattern.MatchString(r.ID) {
		if err := tight("report_id", r.ID, textrule.IDPattern, textrule.MaxIDDigits, "want a UUID, or 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"); err != nil {
			return err
		}
	}
	if err := ValidatePatchID("patch_id", r.PatchID); err != nil {
		return err
	}
	// The rollout id only picks the record the report moves; it is never
	// stored with the report, so the id pattern is all it needs.
	if r.RolloutID != "" && !textrule.IDPattern.MatchString(r.RolloutID) {
		return errs.Fieldf("rollout_id", "want the rollout_id of the offer, or nothing")
	}
	switch {
	case len(r.Target) > MaxTargetLen || strings.ContainsFunc(r.Target, unicode.IsControl):
		return errs.Fieldf("target", "want the path of the offered target, at most %d printable characters", MaxTargetLen)
	case !slices.Contains(ReportStates, r.State):
		return errs.Fieldf("state", "want one of %s", strings.Join(ReportStates, ", "))
	case r.State != StateFailed && r.ErrorCode != "":
		return errs.Fieldf("error_code", "only failed reports carry an error code")
	case len(r.Message) > maxMessageLen || strings.ContainsFunc(r.Message, func(c rune) bool { return unicode.IsControl(c) && c != '\t' }):
		return errs.Fieldf("message", "at most %d bytes on one line", maxMessageLen)
	case r.At.IsZero():
		return errs.Fieldf("at", "want the RFC 3339 time the state changed")
	case r.At.After(now.Add(MaxReportSkew)):
		return errs.Fieldf("at", "more than 10 minutes ahead of the server's clock; check the handset clock")
	}
	if r.State == StateFailed {
		if r.ErrorCode == "" {
			return errs.Fieldf("error_code", "a failed report needs an upper snake case code such as E_DISK_FULL")
		}
		return ValidateErrorCode(r.ErrorCode)
	}
	return nil
}

// CompareBuilds orders build strings: dot, dash and plus separated
// segments, numeric segments by number, others as text ("7.10.0" > "7.9.1").
// It runs on every check-in a rollout considers, so it walks the strings
// in place instead of splitting them.
func CompareBuilds(a, b string) int {
	for {
		as, arest, aok := nextBuildSegment(a)
		bs, brest, bok := nextBuildSegment(b)
		switch {
		case !aok && !bok:
			return 0
		case !aok:
			return -1
		case !bok:
			return 1
		}
		if c := compareSegment(as, bs); c != 0 {
			return c
		}
		a, b = arest, brest
	}
}

// nextBuildSegment returns the first segment of s and what follows it;
// ok is false when s has no segment left. Runs of separators count as
// one, as at the ends.
func nextBuildSegment(s string) (seg, rest string, ok bool) {
	i := 0
	for i < len(s) && isBuildSeparator(s[i]) {
		i++
	}
	if i == len(s) {
		return "", "", false
	}
	j := i
	for j < len(s) && !isBuildSeparator(s[j]) {
		j++
	}
	return s[i:j], s[j:], true
}

func isBuildSeparator(c byte) bool { return c == '.' || c == '-' || c == '+' || c == '_' }

func compareSegment(a, b string) int {
	an, aok := number(a)
	bn, bok := number(b)
	switch {
	case aok && bok:
		return cmpInt(an, bn)
	case aok:
		return -1 // numbers sort before text (7.0 < 7.beta is unusual, but total)
	case bok:
		return 1
	}
	return strings.Compare(a, b)
}

func number(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
