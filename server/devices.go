package server

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
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
	Model          string
	Build          string
	Channel        string
	Region         string
	// InstalledPatches are the patch ids the handset runs, sorted.
	InstalledPatches []string
	CloudMessaging   string
	NumberEncryption bool
	EnrolledAt       time.Time
	LastSeen         time.Time
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
}

// Report is one install state change of a handset, with the id the
// handset made for it so a retried report is stored once.
type Report struct {
	ID        string
	DeviceID  string
	PatchID   string
	Target    string
	State     string
	ErrorCode string
	Message   string
	// At is when the handset saw the change; reports may arrive out of
	// order and the latest At decides the current state.
	At         time.Time
	ReceivedAt time.Time
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
	// Enroll stores d with tokenHash. When d.KeyFingerprint is set and a
	// device with that fingerprint exists, it is updated instead (its
	// token replaced) and its id returned with created false.
	Enroll(ctx context.Context, d *Device, tokenHash string) (id string, created bool, err error)
	// CheckIn records a check-in of the device holding tokenHash and
	// returns the device as updated; ErrUnauthorized for an unknown token.
	CheckIn(ctx context.Context, tokenHash string, ci CheckIn, now time.Time) (*Device, error)
	// DeviceByToken returns the device holding tokenHash, or ErrUnauthorized.
	DeviceByToken(ctx context.Context, tokenHash string) (*Device, error)
	// AddReport stores r once per (device, report id) and moves the
	// device's state for the patch to r if r is the latest; duplicate is
	// true for a retry of a stored report. A nil error means committed.
	AddReport(ctx context.Context, r Report) (duplicate bool, err error)
	// DeleteDevice erases a device with its reports and states.
	DeleteDevice(ctx context.Context, id string) error
	// DeleteReportsBefore erases reports received before t.
	DeleteReportsBefore(ctx context.Context, t time.Time) (int64, error)
	// PatchStates returns a device's current state per patch.
	PatchStates(ctx context.Context, deviceID string) ([]PatchState, error)
	// Reports returns a device's reports, oldest first.
	Reports(ctx context.Context, deviceID string) ([]Report, error)
	// FleetSummary counts the fleet for patchID among devices seen since
	// activeSince.
	FleetSummary(ctx context.Context, patchID string, activeSince time.Time) (*FleetSummary, error)
}

// FleetSummary is the rollout at a glance.
type FleetSummary struct {
	PatchID    string         `json:"patch_id"`
	ActiveDays int            `json:"active_days"`
	Enrolled   int64          `json:"enrolled"`
	Active     int64          `json:"active"`
	Patched    int64          `json:"patched"`
	Compliant  int64          `json:"compliant"`
	ByModel    []ModelSummary `json:"by_model"`
	// States counts active devices by their current state for the patch.
	States   map[string]int64 `json:"states"`
	Failures []FailureCount   `json:"failures"`
}

// ModelSummary is FleetSummary for one model.
type ModelSummary struct {
	Model     string `json:"model"`
	Active    int64  `json:"active"`
	Patched   int64  `json:"patched"`
	Compliant int64  `json:"compliant"`
}

// FailureCount is how many active devices' latest state for the patch is
// failed with a code.
type FailureCount struct {
	ErrorCode string `json:"error_code"`
	Count     int64  `json:"count"`
}

// FieldError is a validation error that names the request field at fault.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Is makes a FieldError an ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

var (
	modelPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	buildPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	channelPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	regionPattern  = regexp.MustCompile(`^[A-Z]{2}$`)
	idPattern      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	codePattern    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
)

// ValidateDeviceInfo checks the fields a handset sends on enrollment.
func ValidateDeviceInfo(model, build, channel, region string) error {
	switch {
	case !modelPattern.MatchString(model):
		return fieldErr("model", "want 1-64 letters, digits, '.', '_' or '-'")
	case !buildPattern.MatchString(build):
		return fieldErr("build", "want a version string of 1-64 letters, digits, '.', '_', '+' or '-'")
	case !channelPattern.MatchString(channel):
		return fieldErr("channel", "want 1-32 lowercase letters, digits or '-', starting with a letter")
	case region != "" && !regionPattern.MatchString(region):
		return fieldErr("region", "want an ISO 3166-1 alpha-2 code such as DE, or nothing")
	}
	return nil
}

// Validate checks a check-in, naming the field at fault.
func (ci *CheckIn) Validate() error {
	if err := ValidateDeviceInfo(ci.Model, ci.Build, ci.Channel, ""); err != nil {
		return err
	}
	if len(ci.InstalledPatches) > 64 {
		return fieldErr("installed_patches", "at most 64")
	}
	for i, p := range ci.InstalledPatches {
		if !idPattern.MatchString(p) {
			return fieldErr(fmt.Sprintf("installed_patches[%d]", i), "want a patch id of 1-64 letters, digits, '.', '_' or '-'")
		}
	}
	switch ci.CloudMessaging {
	case MessagingOptedIn, MessagingOptedOut, MessagingAutoEnabled:
	default:
		return fieldErr("cloud_messaging", "want opted_in, opted_out or auto_enabled")
	}
	ci.InstalledPatches = slices.Compact(slices.Sorted(slices.Values(ci.InstalledPatches)))
	return nil
}

// Validate checks a report, naming the field at fault.
func (r *Report) Validate(now time.Time) error {
	switch {
	case !idPattern.MatchString(r.ID):
		return fieldErr("report_id", "want 1-64 letters, digits, '.', '_' or '-' (a UUID fits)")
	case !idPattern.MatchString(r.PatchID):
		return fieldErr("patch_id", "want a patch id of 1-64 letters, digits, '.', '_' or '-'")
	case len(r.Target) > 512 || strings.ContainsFunc(r.Target, func(c rune) bool { return c < 0x20 }):
		return fieldErr("target", "at most 512 printable characters")
	case !slices.Contains(ReportStates, r.State):
		return fieldErr("state", "want one of %s", strings.Join(ReportStates, ", "))
	case r.State == StateFailed && !codePattern.MatchString(r.ErrorCode):
		return fieldErr("error_code", "a failed report needs an error code of 1-64 letters, digits, '.', '_' or '-'")
	case r.State != StateFailed && r.ErrorCode != "":
		return fieldErr("error_code", "only failed reports carry an error code")
	case len(r.Message) > 256 || strings.ContainsFunc(r.Message, func(c rune) bool { return c < 0x20 && c != '\t' }):
		return fieldErr("message", "at most 256 characters on one line")
	case r.At.IsZero():
		return fieldErr("at", "want the RFC 3339 time the state changed")
	case r.At.After(now.Add(24 * time.Hour)):
		return fieldErr("at", "more than a day in the future; check the handset clock")
	}
	return nil
}

// CompareBuilds orders build strings: dot, dash and plus separated
// segments, numeric segments by number, others as text ("7.10.0" > "7.9.1").
func CompareBuilds(a, b string) int {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '+' || r == '_' })
	}
	as, bs := split(a), split(b)
	for i := range min(len(as), len(bs)) {
		if c := compareSegment(as[i], bs[i]); c != 0 {
			return c
		}
	}
	return len(as) - len(bs)
}

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

// RateLimitError is returned when a token exceeds its rate; RetryAfter
// says when to try again.
type RateLimitError struct{ RetryAfter time.Duration }

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("too many requests; retry after %s", e.RetryAfter.Round(time.Second))
}
