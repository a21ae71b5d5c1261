package handsets_test

import (
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
)

// TestBackFromInstall: the first check-in after an install began (the
// last offer, while installing) or ended installed must write last_seen,
// whatever the resolution; later ones, and those of handsets with no
// install in flight, need not.
func TestBackFromInstall(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	d := &handsets.Device{ID: "dev_1", LastSeen: t0}
	for _, tc := range []struct {
		name string
		rec  handsets.DeviceRollout
		want bool
	}{
		{"installing, offered after last seen", handsets.DeviceRollout{State: handsets.StateInstalling, LastOfferedAt: t0.Add(time.Minute)}, true},
		{"downloading, offered after last seen", handsets.DeviceRollout{State: handsets.StateDownloading, LastOfferedAt: t0.Add(time.Minute)}, true},
		{"installing, seen since", handsets.DeviceRollout{State: handsets.StateInstalling, LastOfferedAt: t0.Add(-time.Minute)}, false},
		{"installed after last seen", handsets.DeviceRollout{State: handsets.StateInstalled, LastOfferedAt: t0.Add(-time.Hour), ResultAt: t0.Add(time.Minute)}, true},
		{"installed, seen since", handsets.DeviceRollout{State: handsets.StateInstalled, ResultAt: t0}, false},
		{"failed after last seen", handsets.DeviceRollout{State: handsets.StateFailed, ResultAt: t0.Add(time.Minute)}, false},
		{"offered, not begun", handsets.DeviceRollout{State: handsets.DeviceOffered, LastOfferedAt: t0.Add(time.Minute)}, false},
	} {
		if got := handsets.BackFromInstall(d, []*handsets.DeviceRollout{&tc.rec}); got != tc.want {
			t.Errorf("%s: BackFromInstall = %v, want %v", tc.name, got, tc.want)
		}
	}
}
