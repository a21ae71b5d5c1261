package clock

import (
	"testing"
	"time"
)

func TestOrAndNow(t *testing.T) {
	fixed := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	fake := func() time.Time { return fixed }
	if got := Now(fake); !got.Equal(fixed) {
		t.Errorf("Now(fake) = %v, want %v", got, fixed)
	}
	if got := Or(fake)(); !got.Equal(fixed) {
		t.Errorf("Or(fake)() = %v, want %v", got, fixed)
	}
	before := time.Now()
	if got := Now(nil); got.Before(before) || got.After(time.Now()) {
		t.Errorf("Now(nil) = %v, not the wall clock", got)
	}
	if got := Or(nil)(); got.Before(before) || got.After(time.Now()) {
		t.Errorf("Or(nil)() = %v, not the wall clock", got)
	}
}
