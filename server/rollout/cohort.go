package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
)

// Cohorts is the number of cohorts a rollout splits handsets into: one
// per 0.01 percent.
const Cohorts = 10000

// Cohort places a handset in one of Cohorts buckets of a rollout: the
// first 8 bytes of sha256(salt || 0x00 || deviceID), big-endian, modulo
// Cohorts. It depends on nothing but the two strings, so a handset's
// cohort does not change with when or how often it polls, and a handset
// enrolled later falls in as evenly as the first. The zero byte keeps
// ("ab", "c") and ("a", "bc") apart.
func Cohort(salt, deviceID string) int {
	h := sha256.New()
	h.Write([]byte(salt))
	h.Write([]byte{0})
	h.Write([]byte(deviceID))
	var sum [sha256.Size]byte
	return int(binary.BigEndian.Uint64(h.Sum(sum[:0])[:8]) % Cohorts)
}

// InStage reports whether a handset is in a stage of percent: its cohort
// is below percent × 100. A wider stage is a superset of a narrower one,
// so widening keeps every handset already in.
func InStage(salt, deviceID string, percent float64) bool {
	return Cohort(salt, deviceID) < stageCohorts(percent)
}

// stageCohorts is how many cohorts a stage of percent spans; percents
// are in steps of 0.01 (Validate), rounding takes out float noise such as
// 14.000000000000002.
func stageCohorts(percent float64) int { return int(math.Round(percent * Cohorts / 100)) }
