package rollout_test

import (
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestConfirmations: the first check-in after an installed report that
// runs the release's build with its patch confirms the record (+1), once;
// a check-in on the wrong build, without the patch, or before the report
// does not, nor does one whose rollout's release is unknown; a check-in
// that leaves the build or drops the patch takes it back (-1).
func TestConfirmations(t *testing.T) {
	rel := rollout.RolloutRelease{PatchID: "CM-1", InstallsBuild: "B2"}
	releases := func(id string) (rollout.RolloutRelease, bool) { return rel, id == "ro_1" }
	reported := t0.Add(time.Hour)
	installed := func() *handsets.DeviceRollout {
		return &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: "dev_1", Model: "M", State: handsets.StateInstalled,
			OfferedAt: t0, ResultAt: reported}
	}
	dev := func(build string, seen time.Time, patches ...string) *handsets.Device {
		return &handsets.Device{ID: "dev_1", Model: "M", Build: build, LastSeen: seen, InstalledPatches: append([]string{}, patches...)}
	}
	before := dev("B1", t0.Add(30*time.Minute))
	for _, tc := range []struct {
		name      string
		old, next *handsets.Device
		rec       *handsets.DeviceRollout
		want      int64
	}{
		{"first check-in on the new build with the patch", before, dev("B2", reported.Add(time.Minute), "CM-1"), installed(), 1},
		{"on the new build before the report, then after it", dev("B2", reported.Add(-time.Minute), "CM-1"),
			dev("B2", reported.Add(time.Minute), "CM-1"), installed(), 1},
		{"a second check-in after the confirming one", dev("B2", reported.Add(time.Minute), "CM-1"),
			dev("B2", reported.Add(2*time.Hour), "CM-1"), installed(), 0},
		{"a second check-in that adds another patch", dev("B2", reported.Add(time.Minute), "CM-1"),
			dev("B2", reported.Add(2*time.Hour), "CM-0", "CM-1"), installed(), 0},
		{"wrong build", before, dev("B3", reported.Add(time.Minute), "CM-1"), installed(), 0},
		{"still on the old build", before, dev("B1", reported.Add(time.Minute), "CM-1"), installed(), 0},
		{"patch missing", before, dev("B2", reported.Add(time.Minute), "CM-0"), installed(), 0},
		{"check-in before the installed report", before, dev("B2", reported.Add(-time.Second), "CM-1"), installed(), 0},
		{"check-in at the instant of the report", before, dev("B2", reported, "CM-1"), installed(), 0},
		{"record not installed", before, dev("B2", reported.Add(time.Minute), "CM-1"),
			&handsets.DeviceRollout{RolloutID: "ro_1", State: handsets.StateInstalling, ResultAt: reported}, 0},
		{"rollout unknown", before, dev("B2", reported.Add(time.Minute), "CM-1"),
			&handsets.DeviceRollout{RolloutID: "ro_2", State: handsets.StateInstalled, ResultAt: reported}, 0},
		{"back on the old build after confirming", dev("B2", reported.Add(time.Minute), "CM-1"),
			dev("B1", reported.Add(time.Hour)), installed(), -1},
		{"the patch dropped after confirming", dev("B2", reported.Add(time.Minute), "CM-1"),
			dev("B2", reported.Add(time.Hour)), installed(), -1},
		{"another build, never confirmed", dev("B3", reported.Add(time.Minute), "CM-1"),
			dev("B1", reported.Add(time.Hour)), installed(), 0},
	} {
		got := rollout.Confirmations(tc.old, tc.next, []*handsets.DeviceRollout{tc.rec}, releases)
		var n int64
		for _, c := range got {
			if c.Record != tc.rec {
				t.Errorf("%s: a change of record %+v, want of %+v", tc.name, c.Record, tc.rec)
			}
			n += c.N
		}
		if len(got) > 1 || n != tc.want {
			t.Errorf("%s: changes %+v, want one of %d (none for 0)", tc.name, got, tc.want)
		}
	}

	// The record the confirming check-in counts is counted once along
	// a run of check-ins, whichever of them confirms it.
	rec := installed()
	d := before
	var n int64
	for i, next := range []*handsets.Device{
		dev("B1", reported.Add(-time.Minute)),
		dev("B2", reported.Add(time.Minute)),
		dev("B2", reported.Add(time.Hour), "CM-1"),
		dev("B2", reported.Add(2*time.Hour), "CM-1"),
		dev("B2", reported.Add(3*time.Hour), "CM-1"),
	} {
		c := rollout.Confirmations(d, next, []*handsets.DeviceRollout{rec}, releases)
		if len(c) > 0 && i != 2 {
			t.Errorf("check-in %d confirmed the record; want only check-in 2", i)
		}
		for _, ch := range c {
			n += ch.N
		}
		d = next
	}
	if n != 1 {
		t.Errorf("a run of check-ins confirmed the record %d times, want 1", n)
	}
	if !rollout.Confirmed(d, rec, rel) || rollout.Confirmed(before, rec, rel) {
		t.Errorf("Confirmed: want true for the last check-in, false for the one before the report")
	}
}
