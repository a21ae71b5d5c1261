package handsets

import (
	"regexp"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
)

// The handset's text fields. Each pattern keeps out spaces, '@', ':' and
// '+' (but for a build's "+build5"), and NameLike and BuildLike
// (fieldrules.go) keep out what the patterns let through that could still
// be an IMEI, IMSI, phone number or IP address; only a report's message
// is free text, scrubbed (Scrub).
var (
	modelPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	BuildPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	channelPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	RegionPattern  = regexp.MustCompile(`^[A-Z]{2}$`)
	uuidPattern    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// codePattern is upper snake case: E_DISK_FULL.
	codePattern = regexp.MustCompile(`^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$`)
)

// Lengths of the handset fields that are not patterns: MaxTargetLen is
// also the longest target path a rollout may name.
const (
	maxCodeLen    = 48
	maxMessageLen = 256
	MaxTargetLen  = 512
)

// The messages of the handset fields' patterns.
const (
	modelRule   = "want 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
	channelRule = "want 1-32 lowercase letters, digits or '-', starting with a letter"
)

// tight checks a field against its pattern and NameLike with a budget
// of maxDigits digits.
func tight(field, value string, pattern *regexp.Regexp, maxDigits int, want string) error {
	if !pattern.MatchString(value) || textrule.NameLike(value, maxDigits) {
		return errs.Fieldf(field, "%s%s", want, textrule.NoIdentifier(maxDigits))
	}
	return nil
}

// ValidateModel checks a handset model, as handsets send it and as a
// rollout's selector or hold names it.
func ValidateModel(field, model string) error {
	return tight(field, model, modelPattern, textrule.MaxNameDigits, modelRule)
}

// ValidateChannel checks a release channel.
func ValidateChannel(field, channel string) error {
	return tight(field, channel, channelPattern, textrule.MaxNameDigits, channelRule)
}

// ValidateBuild checks a build, as handsets send it and as a rollout's
// selector bounds builds (see BuildLike).
func ValidateBuild(field, build string) error {
	if !BuildPattern.MatchString(build) || textrule.BuildLike(build) {
		return errs.Fieldf(field, "%s", textrule.BuildRule)
	}
	return nil
}

// ValidateDeviceInfo checks the fields a handset sends on enrollment.
func ValidateDeviceInfo(model, build, channel, region string) error {
	if err := ValidateModel("model", model); err != nil {
		return err
	}
	if err := ValidateBuild("build", build); err != nil {
		return err
	}
	if err := ValidateChannel("channel", channel); err != nil {
		return err
	}
	if region != "" && !RegionPattern.MatchString(region) {
		return errs.Fieldf("region", "want an ISO 3166-1 alpha-2 code such as DE, or nothing")
	}
	return nil
}

// ValidatePatchID checks a patch id as handsets send it (a report's
// patch_id, a check-in's installed_patches).
func ValidatePatchID(field, id string) error {
	return tight(field, id, textrule.IDPattern, textrule.MaxIDDigits, "want a patch id of 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
}

// ValidateErrorCode checks the error code of a failed report.
func ValidateErrorCode(code string) error {
	if len(code) > maxCodeLen {
		return errs.Fieldf("error_code", "want an upper snake case code of at most %d characters such as E_DISK_FULL", maxCodeLen)
	}
	return tight("error_code", code, codePattern, textrule.MaxNameDigits, "want an upper snake case code such as E_DISK_FULL")
}

// Bounds of a handset's utc_offset_minutes: UTC-12:00 to UTC+14:00.
const (
	MinUTCOffsetMinutes = -12 * 60
	MaxUTCOffsetMinutes = 14 * 60
)
