package manifests

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// TargetCustom is the custom metadata of a target: what the handset needs
// to decide whether the patch is for it, and what the patch changes. It is
// signed with the targets metadata, so the server cannot alter it.
type TargetCustom struct {
	// PatchID names the patch, e.g. "CM-2026-001".
	PatchID string `json:"patch_id"`
	// Models the patch is for; empty means every model.
	Models []string `json:"models,omitempty"`
	// BuildMin and BuildMax bound the builds it applies to (inclusive);
	// empty means unbounded.
	BuildMin string `json:"build_min,omitempty"`
	BuildMax string `json:"build_max,omitempty"`
	// InstallsBuild is the build a handset runs once the patch is
	// installed. A rollout needs it: a handset on that build or newer is
	// never offered the release, so no rollout moves a handset back.
	InstallsBuild string `json:"installs_build,omitempty"`
	// CloudMessagingDefault is the messaging default after install: the
	// privacy patch sets "opt-in".
	CloudMessagingDefault string `json:"cloud_messaging_default,omitempty"`
	// NumberEncryption is "on" when the patch encrypts phone numbers sent
	// to the messaging servers.
	NumberEncryption string `json:"number_encryption,omitempty"`
	// Extra holds other key=value pairs the release engineer adds.
	Extra map[string]string `json:"extra,omitempty"`
	// Released is when the release was drafted; the server sets it, and
	// among several targets a handset may take, the newest wins.
	Released time.Time `json:"released,omitzero"`
	// Incrementals, on a release's full image, maps a starting build to
	// the target of the incremental payload from it: the signed list of
	// a release's incrementals. The server sets it from the release's
	// incrementals (Release.Incrementals).
	Incrementals map[string]string `json:"incrementals,omitempty"`
	// Incremental, on an incremental payload, says what it is: the full
	// image it stands for, the one build it applies to, and its format.
	// The server sets it; such a target is part of its release, never a
	// release of its own.
	Incremental *Incremental `json:"incremental,omitempty"`
}

// The formats of an incremental payload.
const (
	// FormatPackage is the maker's own incremental package (AOSP's
	// ota_from_target_files -i): the handset's installer applies it.
	FormatPackage = "package"
	// FormatZstdPatch is a binary delta made by otactl delta (package
	// manifests/delta): the agent applies it to the running build's
	// image and checks the result against the full image's signed hash
	// before the installer sees it.
	FormatZstdPatch = "zstd-patch"
)

// Incremental is the custom metadata that makes a target an incremental
// payload of a release.
type Incremental struct {
	// Of is the target path of the release's full image.
	Of string `json:"of"`
	// FromBuild is the only build it applies to.
	FromBuild string `json:"from_build"`
	// Format is FormatPackage or FormatZstdPatch.
	Format string `json:"format"`
}

// MaxIncrementals is how many incremental payloads one release may carry.
const MaxIncrementals = 32

var (
	idPattern    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	buildPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	extraKey     = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
)

// Validate checks every field; the error names the field.
func (c TargetCustom) Validate() error {
	if !idPattern.MatchString(c.PatchID) {
		return fmt.Errorf("patch_id %q: want 1-64 letters, digits, '.', '_' or '-'", c.PatchID)
	}
	if len(c.Models) > 100 {
		return fmt.Errorf("models: at most 100")
	}
	for _, m := range c.Models {
		if !idPattern.MatchString(m) {
			return fmt.Errorf("models: %q: want 1-64 letters, digits, '.', '_' or '-'", m)
		}
	}
	for name, b := range map[string]string{"build_min": c.BuildMin, "build_max": c.BuildMax, "installs_build": c.InstallsBuild} {
		if b != "" && !buildPattern.MatchString(b) {
			return fmt.Errorf("%s %q: want 1-64 letters, digits, '.', '_', '+' or '-'", name, b)
		}
	}
	switch c.CloudMessagingDefault {
	case "", "opt-in", "opt-out":
	default:
		return fmt.Errorf("cloud_messaging_default %q: want opt-in or opt-out", c.CloudMessagingDefault)
	}
	switch c.NumberEncryption {
	case "", "on", "off":
	default:
		return fmt.Errorf("number_encryption %q: want on or off", c.NumberEncryption)
	}
	if len(c.Extra) > 32 {
		return fmt.Errorf("extra: at most 32 pairs")
	}
	for k, v := range c.Extra {
		if !extraKey.MatchString(k) {
			return fmt.Errorf("extra key %q: want lowercase letters, digits and '_', 1-32 long", k)
		}
		if len(v) > 256 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 }) {
			return fmt.Errorf("extra %s: at most 256 printable characters", k)
		}
	}
	if len(c.Incrementals) > MaxIncrementals {
		return fmt.Errorf("incrementals: at most %d", MaxIncrementals)
	}
	for b, p := range c.Incrementals {
		if !buildPattern.MatchString(b) {
			return fmt.Errorf("incrementals: build %q: want 1-64 letters, digits, '.', '_', '+' or '-'", b)
		}
		if err := ValidateTargetPath(p); err != nil {
			return fmt.Errorf("incrementals: %s: %w", b, err)
		}
	}
	if i := c.Incremental; i != nil {
		if len(c.Incrementals) > 0 {
			return fmt.Errorf("incremental: an incremental payload lists no incrementals of its own")
		}
		if err := ValidateTargetPath(i.Of); err != nil {
			return fmt.Errorf("incremental.of: %w", err)
		}
		if !buildPattern.MatchString(i.FromBuild) {
			return fmt.Errorf("incremental.from_build %q: want 1-64 letters, digits, '.', '_', '+' or '-'", i.FromBuild)
		}
		if err := ValidateFormat(i.Format); err != nil {
			return fmt.Errorf("incremental.format: %w", err)
		}
	}
	return nil
}

// ValidateFormat checks an incremental payload's format.
func ValidateFormat(f string) error {
	if f != FormatPackage && f != FormatZstdPatch {
		return fmt.Errorf("%q: want %s (the maker's incremental package) or %s (otactl delta make)", f, FormatPackage, FormatZstdPatch)
	}
	return nil
}

// Describe says in plain words what the target is for and what it changes.
func (c TargetCustom) Describe() string {
	parts := []string{"patch " + c.PatchID}
	if len(c.Models) == 0 {
		parts = append(parts, "all models")
	} else {
		parts = append(parts, "models "+strings.Join(c.Models, ", "))
	}
	switch {
	case c.BuildMin != "" && c.BuildMax != "":
		parts = append(parts, "builds "+c.BuildMin+" to "+c.BuildMax)
	case c.BuildMin != "":
		parts = append(parts, "builds from "+c.BuildMin)
	case c.BuildMax != "":
		parts = append(parts, "builds up to "+c.BuildMax)
	}
	if c.InstallsBuild != "" {
		parts = append(parts, "installs build "+c.InstallsBuild)
	}
	if c.CloudMessagingDefault != "" {
		parts = append(parts, "cloud messaging "+c.CloudMessagingDefault+" by default")
	}
	if c.NumberEncryption != "" {
		parts = append(parts, "phone number encryption "+c.NumberEncryption)
	}
	if n := len(c.Incrementals); n > 0 {
		parts = append(parts, fmt.Sprintf("incrementals from %s", strings.Join(slices.Sorted(maps.Keys(c.Incrementals)), ", ")))
	}
	if i := c.Incremental; i != nil {
		parts = append(parts, fmt.Sprintf("incremental (%s) of %s from build %s", i.Format, i.Of, i.FromBuild))
	}
	return strings.Join(parts, "; ")
}
