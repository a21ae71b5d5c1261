package rollout_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// TestParseWindow: the operator's --window text reads back as written;
// ambiguous or malformed windows are refused on the "window" field.
func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" with ok: no window
		ok       bool
		always   bool
	}{
		{"", "", true, true},
		{"01:00-05:00", "01:00-05:00", true, false},
		{"22:00-02:00", "22:00-02:00", true, false},
		{"00:00-24:00", "00:00-24:00", true, true},
		{"22:00-00:00", "22:00-24:00", true, false},
		{"23:59-00:01", "23:59-00:01", true, false},
		{"05:00-05:00", "", false, false},
		{"00:00-00:00", "", false, false},
		{"24:00-05:00", "", false, false},
		{"1:00-5:00", "", false, false},
		{"01:00-05:60", "", false, false},
		{"25:00-05:00", "", false, false},
		{"24:01-05:00", "", false, false},
		{"01:00 05:00", "", false, false},
		{"01:00-05:00Z", "", false, false},
		{"aa:bb-cc:dd", "", false, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			w, err := rollout.ParseWindow(tc.in)
			if !tc.ok {
				var fe *errs.FieldError
				if !errors.As(err, &fe) || fe.Field != "window" || !errors.Is(err, errs.ErrInvalid) {
					t.Fatalf("ParseWindow(%q) = %v, %v; want a FieldError on window", tc.in, w, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseWindow(%q): %v", tc.in, err)
			}
			if w.String() != tc.want || w.Always() != tc.always {
				t.Errorf("ParseWindow(%q) = %q (always %v), want %q (always %v)", tc.in, w, w.Always(), tc.want, tc.always)
			}
		})
	}
}

// TestWindowJSON: a policy carries its window as text.
func TestWindowJSON(t *testing.T) {
	var v struct{ Window rollout.Window }
	if err := json.Unmarshal([]byte(`{"Window":"01:00-05:00"}`), &v); err != nil || v.Window.String() != "01:00-05:00" {
		t.Fatalf("unmarshal: %v, %q", err, v.Window)
	}
	b, _ := json.Marshal(v)
	if string(b) != `{"Window":"01:00-05:00"}` {
		t.Errorf("marshal: %s", b)
	}
	if err := json.Unmarshal([]byte(`{"Window":"1-5"}`), &v); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("unmarshal of a bad window: %v, want ErrInvalid", err)
	}
}

// TestWindowOpen: when a handset in a given time zone may get a new
// offer, and how long until it may: start inclusive, end exclusive,
// windows wrapping midnight, offsets east and west of UTC.
func TestWindowOpen(t *testing.T) {
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	at := func(h, m int) time.Time { return day.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute) }
	for _, tc := range []struct {
		name   string
		window string
		now    time.Time
		offset int
		open   bool
		until  time.Duration
	}{
		{"inside", "01:00-05:00", at(3, 0), 0, true, 0},
		{"at the start", "01:00-05:00", at(1, 0), 0, true, 0},
		{"a second before the start", "01:00-05:00", at(1, 0).Add(-time.Second), 0, false, time.Second},
		{"at the end", "01:00-05:00", at(5, 0), 0, false, 20 * time.Hour},
		{"just before the end", "01:00-05:00", at(5, 0).Add(-time.Nanosecond), 0, true, 0},
		{"afternoon", "01:00-05:00", at(13, 30), 0, false, 11*time.Hour + 30*time.Minute},
		{"wrap, before midnight", "22:00-02:00", at(23, 0), 0, true, 0},
		{"wrap, after midnight", "22:00-02:00", at(1, 59), 0, true, 0},
		{"wrap, at its end", "22:00-02:00", at(2, 0), 0, false, 20 * time.Hour},
		{"wrap, midday", "22:00-02:00", at(12, 0), 0, false, 10 * time.Hour},
		// 20:00 UTC is 02:00 in UTC+6: inside 01:00-05:00.
		{"east offset, open", "01:00-05:00", at(20, 0), 360, true, 0},
		// 03:00 UTC is 22:00 the day before in UTC-5: 3 h to 01:00 local.
		{"west offset, closed", "01:00-05:00", at(3, 0), -300, false, 3 * time.Hour},
		// UTC+5:30: 21:00 UTC is 02:30 local, 00:00 UTC is 05:30 local.
		{"half-hour offset, open", "01:00-05:00", at(21, 0), 330, true, 0},
		{"half-hour offset, closed", "01:00-05:00", at(0, 0), 330, false, 19*time.Hour + 30*time.Minute},
		// 12:00 UTC is 02:00 the next day in UTC+14, midnight in UTC-12.
		{"UTC+14", "01:00-05:00", at(12, 0), 840, true, 0},
		{"UTC-12", "01:00-05:00", at(12, 0), -720, false, time.Hour},
		{"always", "00:00-24:00", at(12, 0), 0, true, 0},
		{"none", "", at(12, 0), 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := rollout.ParseWindow(tc.window)
			if err != nil {
				t.Fatal(err)
			}
			if got := w.Open(tc.now, tc.offset); got != tc.open {
				t.Errorf("Open = %v, want %v", got, tc.open)
			}
			if got := w.UntilOpen(tc.now, tc.offset); got != tc.until {
				t.Errorf("UntilOpen = %v, want %v", got, tc.until)
			}
		})
	}
}

// TestValidateUTCOffset: the check-in's offset is bounded to real zones.
func TestValidateUTCOffset(t *testing.T) {
	for _, tc := range []struct {
		minutes int
		ok      bool
	}{{0, true}, {-720, true}, {840, true}, {330, true}, {-721, false}, {841, false}, {100000, false}} {
		err := rollout.ValidateUTCOffset(tc.minutes)
		var fe *errs.FieldError
		if tc.ok != (err == nil) || (err != nil && (!errors.As(err, &fe) || fe.Field != "utc_offset_minutes")) {
			t.Errorf("ValidateUTCOffset(%d) = %v, want ok %v", tc.minutes, err, tc.ok)
		}
	}
}
