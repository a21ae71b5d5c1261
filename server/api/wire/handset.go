package wire

import (
	"time"

	"github.com/patchfleet/ota/manifests"
)

// EnrollBody is the body of POST /api/v1/devices.
type EnrollBody struct {
	Model            string     `json:"model"`
	Build            string     `json:"build"`
	Channel          string     `json:"channel"`
	Region           string     `json:"region,omitempty"`
	EnrollmentSecret string     `json:"enrollment_secret,omitempty"`
	DeviceKey        string     `json:"device_key,omitempty"`
	Signature        string     `json:"signature,omitempty"`
	Timestamp        *time.Time `json:"timestamp,omitempty"`
}

// EnrollAnswer is the answer to an enrollment.
type EnrollAnswer struct {
	DeviceID         string `json:"device_id"`
	Token            string `json:"token"`
	PollAfterSeconds int    `json:"poll_after_seconds"`
}

// CheckInBody is the body of POST /api/v1/checkin.
type CheckInBody struct {
	Build            string   `json:"build"`
	Model            string   `json:"model"`
	Channel          string   `json:"channel"`
	InstalledPatches []string `json:"installed_patches"`
	CloudMessaging   string   `json:"cloud_messaging"`
	NumberEncryption *bool    `json:"number_encryption"`
	UTCOffsetMinutes *int     `json:"utc_offset_minutes,omitempty"`
}

// CheckInAnswer is the answer to a check-in.
type CheckInAnswer struct {
	PollAfterSeconds int          `json:"poll_after_seconds"`
	Offer            *OfferAnswer `json:"offer"`
	// NoOffer, without an offer, says why when a rollout considered the
	// handset: a code such as "not_in_cohort" (rollout.RefusalCode).
	NoOffer string `json:"no_offer,omitempty"`
}

// OfferAnswer is an offered update: fetch Target through TUF from
// MetadataURL and TargetsURL, install only if it verifies.
type OfferAnswer struct {
	Target      string                 `json:"target"`
	Length      int64                  `json:"length"`
	SHA256      string                 `json:"sha256"`
	PatchID     string                 `json:"patch_id"`
	RolloutID   string                 `json:"rollout_id"`
	MetadataURL string                 `json:"metadata_url"`
	TargetsURL  string                 `json:"targets_url"`
	Custom      manifests.TargetCustom `json:"custom"`
	// Payload is "incremental" when Target is an incremental payload for
	// the handset's build (Custom.Incremental says of what, and its
	// format), else "full"; FullLength is the full image's size.
	Payload    string `json:"payload"`
	FullLength int64  `json:"full_length"`
	// Urgent: the rollout's deadline passed; install without waiting
	// for the handset's own maintenance window.
	Urgent bool `json:"urgent,omitempty"`
}

// The payloads of an offer.
const (
	PayloadFull        = "full"
	PayloadIncremental = "incremental"
)

// ReportBody is the body of POST /api/v1/reports.
type ReportBody struct {
	ReportID  string     `json:"report_id"`
	PatchID   string     `json:"patch_id"`
	RolloutID string     `json:"rollout_id,omitempty"`
	Target    string     `json:"target,omitempty"`
	State     string     `json:"state"`
	ErrorCode string     `json:"error_code,omitempty"`
	Message   string     `json:"message,omitempty"`
	At        *time.Time `json:"at"`
}

// ReportAnswer is the answer to a report: 201 when stored, 200 with
// Duplicate for a retry of a stored report. Either means durable.
type ReportAnswer struct {
	Duplicate bool `json:"duplicate"`
}
