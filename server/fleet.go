package server

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/textrule"
)

// Offer is an update offered to a handset: which target to fetch through
// TUF, and where. The handset installs it only if TUF verifies it.
type Offer struct {
	Target    string
	Length    int64
	SHA256    string
	PatchID   string
	RolloutID string
	// Custom is the target's signed custom metadata; the handset trusts
	// only what its TUF client verifies, this is for display and logs.
	Custom manifests.TargetCustom
	// Incremental says Target is an incremental payload of the release
	// for the handset's build; FullLength is the full image's size.
	Incremental bool
	FullLength  int64
	// Urgent: the rollout's deadline passed (rollout.Decision.Urgent).
	Urgent bool
}

// Fleet is the handset side of the server: enrollment, check-ins, reports,
// erasure and the fleet summary.
type Fleet struct {
	Store       handsets.DeviceStore
	Eligibility Eligibility
	// Catalog lists the published patches that reports may name; with
	// none, no report is accepted (but for patches the device reported
	// on before, see Report).
	Catalog Catalog
	// EnrollmentSecret, when set, must be presented to enroll.
	EnrollmentSecret string
	// SecretFailures, when set, limits wrong enrollment secrets: while
	// it is empty every enrollment is refused with a RateLimitError
	// before its secret is checked (see Enroll).
	SecretFailures *FailureBucket
	// PollInterval is the mean time between check-ins; each answer is
	// jittered by ±10% so a fleet does not poll in lockstep.
	PollInterval time.Duration
	// LastSeenResolution is how stale a device's stored last_seen may
	// get before a check-in that changes nothing else writes it (see
	// NeedsWrite); default DefaultLastSeenResolution.
	LastSeenResolution time.Duration
	// Observer, when set, hears each rollout decision and each report
	// that moved a rollout record (metrics).
	Observer RolloutObserver
	Now      func() time.Time
}

// DefaultLastSeenResolution is Fleet.LastSeenResolution's default: a
// handset polling hourly writes about every other check-in, one polling
// more often (a user pressing "check for updates", a benchmark) once an
// hour, and every handset at least once a UTC day.
const DefaultLastSeenResolution = time.Hour

func (f *Fleet) now() time.Time { return clock.Now(f.Now) }

// EnrollRequest is what a handset sends to enroll.
type EnrollRequest struct {
	Model, Build, Channel, Region string
	Secret                        string
	// DeviceKey, optional, is the hex ed25519 public key of the handset;
	// the device id derives from it and re-enrolling finds the device.
	// Signature (hex) over EnrollMessage of the request proves the
	// handset holds the key and chose every field; Timestamp must be
	// within 10 minutes of the server's clock and after the timestamp of
	// the last enrollment accepted for the key.
	DeviceKey string
	Signature string
	Timestamp time.Time
}

// EnrollMessageVersion is the first line of EnrollMessage. Version 1
// signed only the key and the time, so a captured enrollment could be
// replayed with another model, build, channel or region; it is refused.
const EnrollMessageVersion = "otad-enroll-v2"

// EnrollMessage is what a handset signs with its device key to enroll:
// the line EnrollMessageVersion, then one line "name:length:value" for
// each of device_key, model, build, channel, region and timestamp, in
// that order, each ended by "\n". length is the value's length in bytes,
// in decimal, so no value can pass for another whatever it contains; an
// absent region is "region:0:". The timestamp is written in UTC as
// time.RFC3339Nano does: "Z", fractional seconds without trailing zeros,
// none when whole ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00.25Z").
// The enrollment secret is left out: it is the fleet's, not the handset's.
func EnrollMessage(req EnrollRequest) []byte {
	var b strings.Builder
	b.WriteString(EnrollMessageVersion + "\n")
	for _, f := range [...]struct{ name, value string }{
		{"device_key", req.DeviceKey},
		{"model", req.Model},
		{"build", req.Build},
		{"channel", req.Channel},
		{"region", req.Region},
		{"timestamp", req.Timestamp.UTC().Format(time.RFC3339Nano)},
	} {
		fmt.Fprintf(&b, "%s:%d:%s\n", f.name, len(f.value), f.value)
	}
	return []byte(b.String())
}

// enrollSkew is how far an enrollment's timestamp may be from the
// server's clock. The stored timestamp of the last accepted enrollment
// stops replays within it.
const enrollSkew = 10 * time.Minute

// Enrollment is the answer to an enrollment: the device id and its bearer
// token, which the server keeps only as a hash.
type Enrollment struct {
	DeviceID string
	Token    string
	Created  bool
}

const deviceTokenPrefix = "otadev_"

// Enroll registers a handset.
//
// A wrong enrollment secret takes one from SecretFailures; while that
// is empty, every enrollment is refused (429) until it refills, the
// right secret too. Letting the right secret through while wrong ones
// are refused would tell a guesser which guess was right, at full
// speed: a limit on guesses, with no client address to tell guessers
// from handsets, is a limit on enrollments while someone guesses. The
// enrolled fleet does not notice (check-ins need no secret), and a
// refused handset comes back after Retry-After.
func (f *Fleet) Enroll(ctx context.Context, req EnrollRequest) (*Enrollment, error) {
	if f.EnrollmentSecret != "" {
		now := f.now()
		if wait := f.SecretFailures.wait(now); wait > 0 {
			return nil, &errs.RateLimitError{RetryAfter: wait}
		}
		if !secretMatches(req.Secret, f.EnrollmentSecret) {
			f.SecretFailures.take(now)
			return nil, fmt.Errorf("%w: enrollment secret does not match", errs.ErrUnauthorized)
		}
	}
	if err := handsets.ValidateDeviceInfo(req.Model, req.Build, req.Channel, req.Region); err != nil {
		return nil, err
	}
	now := f.now().UTC()
	d := &handsets.Device{Model: req.Model, Build: req.Build, Channel: req.Channel, Region: req.Region,
		CloudMessaging: handsets.MessagingAutoEnabled, EnrolledAt: now, LastSeen: now, InstalledPatches: []string{}}
	if req.DeviceKey != "" {
		pub, err := hex.DecodeString(req.DeviceKey)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, errs.Fieldf("device_key", "want the 64 hex digits of an ed25519 public key")
		}
		sig, err := hex.DecodeString(req.Signature)
		if err != nil || !ed25519.Verify(pub, EnrollMessage(req), sig) {
			return nil, errs.Fieldf("signature", "want the hex ed25519 signature by device_key of the "+EnrollMessageVersion+" enrollment message over every field")
		}
		if d := now.Sub(req.Timestamp); d > enrollSkew || d < -enrollSkew {
			return nil, errs.Fieldf("timestamp", "more than 10 minutes from the server's time; check the handset clock")
		}
		fp := sha256.Sum256(pub)
		d.KeyFingerprint = hex.EncodeToString(fp[:])
		// The store refuses it unless it is newer than the last one
		// accepted for the key: a replay within enrollSkew gets 409.
		d.KeySignedAt = req.Timestamp.UTC()
		d.ID = "dev_" + hex.EncodeToString(fp[:16])
	} else {
		var b [16]byte
		rand.Read(b[:])
		d.ID = "dev_" + hex.EncodeToString(b[:])
	}
	token := newDeviceToken()
	id, created, err := f.Store.Enroll(ctx, d, identity.HashToken(token))
	if err != nil {
		return nil, err
	}
	return &Enrollment{DeviceID: id, Token: token, Created: created}, nil
}

// secretMatches compares in constant time, whatever the lengths: the
// sha256 of each, not the secrets (hmac.Equal returns at once on a
// length mismatch, which tells a guesser the secret's length).
func secretMatches(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return hmac.Equal(g[:], w[:])
}

// FailureBucket is a token bucket of failures shared by every client
// (per replica): it holds up to Burst, refills at PerMinute, and each
// failure takes one. Times are passed in, so that the fleet's clock
// drives it. A nil bucket never waits.
type FailureBucket struct {
	PerMinute float64
	Burst     int

	mu     sync.Mutex
	tokens float64
	at     time.Time
}

// NewFailureBucket allows burst failures at once and perMinute a minute
// after; nil (no limit) when perMinute is not positive.
func NewFailureBucket(perMinute float64, burst int) *FailureBucket {
	if perMinute <= 0 {
		return nil
	}
	return &FailureBucket{PerMinute: perMinute, Burst: max(burst, 1)}
}

// level refills the bucket up to now and returns what it holds; b.mu is
// held.
func (b *FailureBucket) level(now time.Time) float64 {
	if b.at.IsZero() {
		b.tokens, b.at = float64(b.Burst), now
	}
	if now.After(b.at) {
		b.tokens = min(float64(b.Burst), b.tokens+now.Sub(b.at).Minutes()*b.PerMinute)
		b.at = now
	}
	return b.tokens
}

// wait is how long until the bucket holds a failure again, 0 if it does.
func (b *FailureBucket) wait(now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// The tolerance keeps a client that comes back after exactly the
	// wait from finding the bucket a rounding error short.
	if t := b.level(now); t < 1-1e-9 {
		return max(time.Duration((1-t)/b.PerMinute*float64(time.Minute)).Round(time.Millisecond), time.Millisecond)
	}
	return 0
}

// take counts a failure.
func (b *FailureBucket) take(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = max(b.level(now)-1, 0)
}

func newDeviceToken() string {
	var b [32]byte
	rand.Read(b[:])
	return deviceTokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// hashDeviceToken refuses anything that cannot be a device token before
// any lookup, with the answer an unknown token gets.
func hashDeviceToken(token string) (string, error) {
	if !strings.HasPrefix(token, deviceTokenPrefix) || len(token) > 128 {
		return "", errs.ErrDeviceToken
	}
	return identity.HashToken(token), nil
}

// tokenErr makes any refusal of a token by the store the one answer
// ErrDeviceToken, whatever words the store used, so that a malformed, an
// unknown and an erased token cannot be told apart.
func tokenErr(err error) error {
	if errors.Is(err, errs.ErrUnauthorized) {
		return errs.ErrDeviceToken
	}
	return err
}

// deviceByToken is Store.DeviceByToken with tokenErr's answer.
func (f *Fleet) deviceByToken(ctx context.Context, hash string) (*handsets.Device, error) {
	d, err := f.Store.DeviceByToken(ctx, hash)
	return d, tokenErr(err)
}

// CheckInResult is the answer to a check-in.
type CheckInResult struct {
	PollAfter time.Duration
	Offer     *Offer
	// Refusal, when no offer is made and a rollout considered the
	// handset, is why (one of the ErrX refusals of server/rollout/decide.go).
	Refusal error
}

// maxCheckInSaves bounds the read-and-save loop of a check-in: a save
// fails only when another check-in of the same handset wrote in between.
const maxCheckInSaves = 4

// CheckIn records a handset's state and decides what it is offered.
func (f *Fleet) CheckIn(ctx context.Context, token string, ci handsets.CheckIn) (*CheckInResult, error) {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return nil, err
	}
	if err := ci.Validate(); err != nil {
		return nil, err
	}
	now := f.now().UTC()
	d, records, err := f.save(ctx, hash, ci, now)
	if err != nil {
		return nil, err
	}
	poll := f.pollInterval()
	res := &CheckInResult{PollAfter: jitter(poll)}
	if f.Eligibility == nil {
		return res, nil
	}
	ans, err := f.Eligibility.Decide(ctx, d, records, rollout.DecisionInput{Now: now, UTCOffsetMinutes: ci.UTCOffsetMinutes})
	if err != nil {
		return nil, err
	}
	dec := ans.Decision
	if dec.RolloutID != "" && f.Observer != nil {
		f.Observer.Decided(dec)
	}
	res.Offer = ans.Offer
	if res.Offer == nil {
		res.Refusal = dec.Reason
		if dec.PollAfter > 0 && dec.PollAfter < poll {
			res.PollAfter = jitter(dec.PollAfter)
		}
	}
	return res, nil
}

// save records check-in ci of the device holding hash at now, writing only
// what NeedsWrite asks for, and returns the device as saved with its
// rollout records.
func (f *Fleet) save(ctx context.Context, hash string, ci handsets.CheckIn, now time.Time) (*handsets.Device, []*handsets.DeviceRollout, error) {
	resolution := f.LastSeenResolution
	if resolution <= 0 {
		resolution = DefaultLastSeenResolution
	}
	for range maxCheckInSaves {
		d, records, err := f.Store.CheckInState(ctx, hash)
		if err != nil {
			return nil, nil, tokenErr(err)
		}
		next := d.AfterCheckIn(ci, now)
		confirmations := rollout.Confirmations(d, next, records, func(id string) (rollout.RolloutRelease, bool) {
			return f.rolloutRelease(ctx, id, now)
		})
		// A handset back after an install began writes last_seen at once:
		// rollouts that count silent handsets see it back. (A check-in
		// that changes a confirmation is one of those, or changes the
		// build or patches.)
		if !handsets.NeedsWrite(d, next, resolution) && !handsets.BackFromInstall(d, records) && len(confirmations) == 0 {
			return next, records, nil
		}
		err = f.Store.SaveCheckIn(ctx, d, next, confirmations)
		if err == nil {
			return next, records, nil
		}
		if !errors.Is(err, errs.ErrConflict) {
			return nil, nil, tokenErr(err)
		}
	}
	return nil, nil, fmt.Errorf("%w: the device changed under %d check-ins in a row; check in again", errs.ErrUnavailable, maxCheckInSaves)
}

// ReleaseLookup is implemented by an Eligibility that knows the release
// of each rollout it offers from without a query (RolloutEligibility's
// copy of the rollouts): the check-in path asks it which build and patch
// confirm an install (rollout.Confirmations).
type ReleaseLookup interface {
	// RolloutRelease returns the release of rollout id, false when the
	// copy does not hold it.
	RolloutRelease(ctx context.Context, id string, now time.Time) (rollout.RolloutRelease, bool)
}

// rolloutRelease is the release of rollout id from the Eligibility, if
// it is a ReleaseLookup: without one, no install is confirmed.
func (f *Fleet) rolloutRelease(ctx context.Context, id string, now time.Time) (rollout.RolloutRelease, bool) {
	l, ok := f.Eligibility.(ReleaseLookup)
	if !ok {
		return rollout.RolloutRelease{}, false
	}
	return l.RolloutRelease(ctx, id, now)
}

func (f *Fleet) pollInterval() time.Duration {
	if f.PollInterval <= 0 {
		return time.Hour
	}
	return f.PollInterval
}

// jitter is base ±10%, uniformly: a fleet enrolled at once spreads out
// within a few polls.
func jitter(base time.Duration) time.Duration {
	return time.Duration(float64(base) * (0.9 + 0.2*mrand.Float64()))
}

// Report records an install state change; duplicate is true for a retry
// of a report already stored. A nil error means it is committed.
func (f *Fleet) Report(ctx context.Context, token string, r handsets.Report) (bool, error) {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return false, err
	}
	now := f.now().UTC()
	if err := r.Validate(now); err != nil {
		return false, err
	}
	d, err := f.deviceByToken(ctx, hash)
	if err != nil {
		return false, err
	}
	if r.At.Before(d.EnrolledAt.Add(-reportBeforeEnrollment)) {
		return false, errs.Fieldf("at", "before the device enrolled; check the handset clock")
	}
	if err := f.checkPatch(ctx, d, &r); err != nil {
		return false, err
	}
	r.DeviceID, r.ReceivedAt, r.At = d.ID, now, r.At.UTC()
	// The one free-text field: identifiers in it never reach storage.
	r.Message = textrule.Scrub(r.Message)
	out, err := f.Store.AddReport(ctx, r)
	if err != nil {
		return false, err
	}
	if out.RolloutID != "" && f.Observer != nil {
		f.Observer.Reported(out.RolloutID, out.RolloutState)
	}
	return out.Duplicate, nil
}

// reportBeforeEnrollment is how long before its device's enrollment a
// report may say its state changed. A handset is offered patches only
// once enrolled, so an earlier time is a wrong clock (or year 0001); the
// day allows for a clock that runs slow. Unlike a fixed date, the floor
// keeps a report from claiming a time before the device existed.
const reportBeforeEnrollment = 24 * time.Hour

// checkPatch accepts a report of a published patch naming one of its
// published targets (or none). A patch yanked while handsets were
// installing it is no longer published, yet their next reports (installed,
// failed, a retry) matter: they are accepted when the device already
// reported the same patch and target while it was published. A first
// report after the yank is refused: the handset's TUF client no longer
// finds the target either.
func (f *Fleet) checkPatch(ctx context.Context, d *handsets.Device, r *handsets.Report) error {
	var paths []string
	known := false
	if f.Catalog != nil {
		paths, known = f.Catalog.PatchTargets(r.PatchID)
	}
	if known && (r.Target == "" || slices.Contains(paths, r.Target)) {
		return nil
	}
	reports, err := f.Store.Reports(ctx, d.ID)
	if err != nil {
		return err
	}
	for _, old := range reports {
		if old.PatchID == r.PatchID && (r.Target == "" || old.Target == r.Target) {
			return nil
		}
	}
	if known {
		return errs.Fieldf("target", "want the path of a published target of the patch, or nothing")
	}
	return errs.Fieldf("patch_id", "want the id of a published patch")
}

// Erase deletes everything the server holds about the calling device.
func (f *Fleet) Erase(ctx context.Context, token string) error {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return err
	}
	d, err := f.deviceByToken(ctx, hash)
	if err != nil {
		return err
	}
	return f.Store.DeleteDevice(ctx, d.ID)
}

// Summary counts the fleet for patchID among devices seen in the last
// activeDays days, listing up to models models by name (the others sum
// up in one OtherModels row): a flood of invented models cannot make the
// answer grow.
func (f *Fleet) Summary(ctx context.Context, patchID string, activeDays, models int) (*handsets.FleetSummary, error) {
	if !textrule.IDPattern.MatchString(patchID) {
		return nil, errs.Fieldf("patch", "want a patch id")
	}
	if activeDays < 1 || activeDays > 3650 {
		return nil, errs.Fieldf("active_days", "want 1 to 3650")
	}
	if models < 1 || models > handsets.MaxSummaryModels {
		return nil, errs.Fieldf("models", "want 1 to %d", handsets.MaxSummaryModels)
	}
	s, err := f.Store.FleetSummary(ctx, patchID, f.now().Add(-time.Duration(activeDays)*24*time.Hour), models)
	if err != nil {
		return nil, err
	}
	s.PatchID, s.ActiveDays = patchID, activeDays
	return s, nil
}

// DailyRollupRetention is how long the daily fleet rollups (the exposure
// report's history) are kept: a year and a month, for a series of up to
// 366 days.
const DailyRollupRetention = 400 * 24 * time.Hour

// PruneReports deletes reports older than retention, and the daily fleet
// rollups older than DailyRollupRetention.
func (f *Fleet) PruneReports(ctx context.Context, retention time.Duration) (int64, error) {
	n, err := f.Store.DeleteReportsBefore(ctx, f.now().Add(-retention))
	if err != nil {
		return n, err
	}
	if _, err := f.Store.DeleteDailyRollupsBefore(ctx, f.now().Add(-DailyRollupRetention)); err != nil {
		return n, err
	}
	return n, nil
}
