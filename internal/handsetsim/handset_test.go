package handsetsim

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
)

// TestReportIDsPassTheServer: the server refuses report ids with 7 digits
// in a row (a hex id has them about one time in three); every id the
// handset makes passes its validation, and ids do not repeat.
func TestReportIDsPassTheServer(t *testing.T) {
	now := time.Now()
	seen := map[string]bool{}
	for range 10000 {
		var b [16]byte
		rand.Read(b[:])
		id := ReportID(b)
		r := handsets.Report{ID: id, PatchID: "CM-2026-001", State: handsets.StateInstalled, At: now}
		if err := r.Validate(now); err != nil {
			t.Fatalf("report id %q: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("report id %q made twice", id)
		}
		seen[id] = true
	}
}
