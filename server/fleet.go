package server

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/patchfleet/ota/manifests"
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
}

// Eligibility decides which release, if any, a device is offered. The
// rollout issue plugs staged rollouts in here.
type Eligibility interface {
	// Offer returns nil when nothing is offered.
	Offer(ctx context.Context, d *Device) (*Offer, error)
}

// Fleet is the handset side of the server: enrollment, check-ins, reports,
// erasure and the fleet summary.
type Fleet struct {
	Store       DeviceStore
	Eligibility Eligibility
	// EnrollmentSecret, when set, must be presented to enroll.
	EnrollmentSecret string
	// PollInterval is the mean time between check-ins; each answer is
	// jittered by ±10% so a fleet does not poll in lockstep.
	PollInterval time.Duration
	Now          func() time.Time
}

func (f *Fleet) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

// EnrollRequest is what a handset sends to enroll.
type EnrollRequest struct {
	Model, Build, Channel, Region string
	Secret                        string
	// DeviceKey, optional, is the hex ed25519 public key of the handset;
	// the device id derives from it and re-enrolling finds the device.
	// Signature (hex) over EnrollMessage(DeviceKey, Timestamp) proves the
	// handset holds the key; Timestamp must be within 10 minutes.
	DeviceKey string
	Signature string
	Timestamp time.Time
}

// EnrollMessage is what a handset signs with its device key to enroll.
func EnrollMessage(deviceKeyHex string, ts time.Time) []byte {
	return []byte("otad-enroll-v1:" + deviceKeyHex + ":" + ts.UTC().Format(time.RFC3339))
}

// Enrollment is the answer to an enrollment: the device id and its bearer
// token, which the server keeps only as a hash.
type Enrollment struct {
	DeviceID string
	Token    string
	Created  bool
}

const deviceTokenPrefix = "otadev_"

// Enroll registers a handset.
func (f *Fleet) Enroll(ctx context.Context, req EnrollRequest) (*Enrollment, error) {
	if f.EnrollmentSecret != "" && !hmac.Equal([]byte(req.Secret), []byte(f.EnrollmentSecret)) {
		return nil, fmt.Errorf("%w: enrollment secret does not match", ErrUnauthorized)
	}
	if err := ValidateDeviceInfo(req.Model, req.Build, req.Channel, req.Region); err != nil {
		return nil, err
	}
	now := f.now().UTC()
	d := &Device{Model: req.Model, Build: req.Build, Channel: req.Channel, Region: req.Region,
		CloudMessaging: MessagingAutoEnabled, EnrolledAt: now, LastSeen: now, InstalledPatches: []string{}}
	if req.DeviceKey != "" {
		pub, err := hex.DecodeString(req.DeviceKey)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fieldErr("device_key", "want the 64 hex digits of an ed25519 public key")
		}
		sig, err := hex.DecodeString(req.Signature)
		if err != nil || !ed25519.Verify(pub, EnrollMessage(req.DeviceKey, req.Timestamp), sig) {
			return nil, fieldErr("signature", "want the hex ed25519 signature of the enrollment message by device_key")
		}
		if d := now.Sub(req.Timestamp); d > 10*time.Minute || d < -10*time.Minute {
			return nil, fieldErr("timestamp", "more than 10 minutes from the server's time; check the handset clock")
		}
		fp := sha256.Sum256(pub)
		d.KeyFingerprint = hex.EncodeToString(fp[:])
		d.ID = "dev_" + hex.EncodeToString(fp[:16])
	} else {
		var b [16]byte
		rand.Read(b[:])
		d.ID = "dev_" + hex.EncodeToString(b[:])
	}
	token := newDeviceToken()
	id, created, err := f.Store.Enroll(ctx, d, HashToken(token))
	if err != nil {
		return nil, err
	}
	return &Enrollment{DeviceID: id, Token: token, Created: created}, nil
}

func newDeviceToken() string {
	var b [32]byte
	rand.Read(b[:])
	return deviceTokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// hashDeviceToken refuses anything that cannot be a device token before
// any lookup.
func hashDeviceToken(token string) (string, error) {
	if !strings.HasPrefix(token, deviceTokenPrefix) || len(token) > 128 {
		return "", fmt.Errorf("%w: invalid device token", ErrUnauthorized)
	}
	return HashToken(token), nil
}

// CheckInResult is the answer to a check-in.
type CheckInResult struct {
	PollAfter time.Duration
	Offer     *Offer
}

// CheckIn records a handset's state and decides what it is offered.
func (f *Fleet) CheckIn(ctx context.Context, token string, ci CheckIn) (*CheckInResult, error) {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return nil, err
	}
	if err := ci.Validate(); err != nil {
		return nil, err
	}
	d, err := f.Store.CheckIn(ctx, hash, ci, f.now().UTC())
	if err != nil {
		return nil, err
	}
	res := &CheckInResult{PollAfter: f.jitter()}
	if f.Eligibility != nil {
		if res.Offer, err = f.Eligibility.Offer(ctx, d); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func (f *Fleet) jitter() time.Duration {
	base := f.PollInterval
	if base <= 0 {
		base = time.Hour
	}
	// ±10%, uniformly: a fleet enrolled at once spreads out within a few
	// polls.
	return time.Duration(float64(base) * (0.9 + 0.2*mrand.Float64()))
}

// Report records an install state change; duplicate is true for a retry
// of a report already stored. A nil error means it is committed.
func (f *Fleet) Report(ctx context.Context, token string, r Report) (bool, error) {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return false, err
	}
	now := f.now().UTC()
	if err := r.Validate(now); err != nil {
		return false, err
	}
	d, err := f.Store.DeviceByToken(ctx, hash)
	if err != nil {
		return false, err
	}
	r.DeviceID, r.ReceivedAt, r.At = d.ID, now, r.At.UTC()
	return f.Store.AddReport(ctx, r)
}

// Erase deletes everything the server holds about the calling device.
func (f *Fleet) Erase(ctx context.Context, token string) error {
	hash, err := hashDeviceToken(token)
	if err != nil {
		return err
	}
	d, err := f.Store.DeviceByToken(ctx, hash)
	if err != nil {
		return err
	}
	return f.Store.DeleteDevice(ctx, d.ID)
}

// Summary counts the fleet for patchID among devices seen in the last
// activeDays days.
func (f *Fleet) Summary(ctx context.Context, patchID string, activeDays int) (*FleetSummary, error) {
	if !idPattern.MatchString(patchID) {
		return nil, fieldErr("patch", "want a patch id")
	}
	if activeDays < 1 || activeDays > 3650 {
		return nil, fieldErr("active_days", "want 1 to 3650")
	}
	s, err := f.Store.FleetSummary(ctx, patchID, f.now().Add(-time.Duration(activeDays)*24*time.Hour))
	if err != nil {
		return nil, err
	}
	s.PatchID, s.ActiveDays = patchID, activeDays
	return s, nil
}

// PruneReports deletes reports older than retention.
func (f *Fleet) PruneReports(ctx context.Context, retention time.Duration) (int64, error) {
	return f.Store.DeleteReportsBefore(ctx, f.now().Add(-retention))
}
