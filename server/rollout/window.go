package rollout

import (
	"fmt"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// Window is a maintenance window in a handset's local hours, such as
// 01:00-05:00, outside which a rollout makes no new offer. The start is
// inclusive and the end exclusive; a window whose end is before its start
// wraps midnight (22:00-02:00). The zero Window is no window: always open.
// It marshals as the text ParseWindow reads ("" for none), which is how
// the API and the store carry it.
type Window struct {
	// start and end are minutes since local midnight, end in 1..1440;
	// both zero for the zero Window.
	start, end int
}

const minutesPerDay = 24 * 60

// ParseWindow reads "HH:MM-HH:MM" in 24-hour local time: "01:00-05:00",
// "22:00-02:00" (wrapping midnight), "00:00-24:00" (always). "" is no
// window. Start and end must differ: "05:00-05:00" could mean never or
// always. A refusal is a FieldError on "window".
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	bad := errs.Fieldf("window", "want HH:MM-HH:MM in the handset's local 24-hour time, such as 01:00-05:00 (22:00-02:00 wraps midnight, 00:00-24:00 is always), start and end different")
	if len(s) != len("01:00-05:00") || s[5] != '-' {
		return Window{}, bad
	}
	start, ok1 := parseClock(s[:5])
	end, ok2 := parseClock(s[6:])
	if !ok1 || !ok2 || start == minutesPerDay || start == end || (end == 0 && start == 0) {
		return Window{}, bad
	}
	if end == 0 {
		// "22:00-00:00" ends at midnight: the same as 24:00.
		end = minutesPerDay
	}
	return Window{start: start, end: end}, nil
}

// parseClock reads "HH:MM", 00:00 to 24:00, as minutes since midnight.
func parseClock(s string) (int, bool) {
	if len(s) != 5 || s[2] != ':' {
		return 0, false
	}
	h, ok1 := twoDigits(s[:2])
	m, ok2 := twoDigits(s[3:])
	if !ok1 || !ok2 || m > 59 || h > 24 || (h == 24 && m != 0) {
		return 0, false
	}
	return h*60 + m, true
}

func twoDigits(s string) (int, bool) {
	if s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9' {
		return 0, false
	}
	return int(s[0]-'0')*10 + int(s[1]-'0'), true
}

// IsZero reports whether w is no window (always open).
func (w Window) IsZero() bool { return w.end == 0 }

// Always reports whether w is open at every hour: no window, or
// 00:00-24:00.
func (w Window) Always() bool { return w.IsZero() || (w.start == 0 && w.end == minutesPerDay) }

// String gives the window as ParseWindow reads it; "" for none.
func (w Window) String() string {
	if w.IsZero() {
		return ""
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.start/60, w.start%60, w.end/60, w.end%60)
}

// MarshalText implements encoding.TextMarshaler.
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseWindow.
func (w *Window) UnmarshalText(b []byte) error {
	v, err := ParseWindow(string(b))
	if err != nil {
		return err
	}
	*w = v
	return nil
}

// localTimeOfDay is how far past local midnight now is for a handset
// offsetMinutes east of UTC.
func localTimeOfDay(now time.Time, offsetMinutes int) time.Duration {
	local := now.UTC().Add(time.Duration(offsetMinutes) * time.Minute)
	h, m, s := local.Clock()
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second +
		time.Duration(local.Nanosecond())
}

// Open reports whether the window is open at now for a handset
// offsetMinutes east of UTC.
func (w Window) Open(now time.Time, offsetMinutes int) bool {
	if w.Always() {
		return true
	}
	tod := localTimeOfDay(now, offsetMinutes)
	start, end := time.Duration(w.start)*time.Minute, time.Duration(w.end)*time.Minute
	if w.start < w.end {
		return tod >= start && tod < end
	}
	return tod >= start || tod < end // wraps midnight
}

// UntilOpen is how long from now until the window next opens for a
// handset offsetMinutes east of UTC; zero while it is open.
func (w Window) UntilOpen(now time.Time, offsetMinutes int) time.Duration {
	if w.Open(now, offsetMinutes) {
		return 0
	}
	d := time.Duration(w.start)*time.Minute - localTimeOfDay(now, offsetMinutes)
	if d < 0 {
		d += 24 * time.Hour
	}
	return d
}

// ValidateUTCOffset checks a check-in's utc_offset_minutes.
func ValidateUTCOffset(minutes int) error {
	if minutes < handsets.MinUTCOffsetMinutes || minutes > handsets.MaxUTCOffsetMinutes {
		return errs.Fieldf("utc_offset_minutes", "want the handset's offset from UTC in minutes, %d to %d", handsets.MinUTCOffsetMinutes, handsets.MaxUTCOffsetMinutes)
	}
	return nil
}

// utcOffset is the offset a rollout decision uses: the handset's, or 0
// (UTC) when it sent none or one out of bounds. UTC rather than "no
// window": a handset that does not say where it is still gets offers only
// during the window's hours somewhere, never at any hour.
func utcOffset(p *int) int {
	if p == nil || ValidateUTCOffset(*p) != nil {
		return 0
	}
	return *p
}
