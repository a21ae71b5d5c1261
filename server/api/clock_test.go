package api

import (
	"net/http"
	"testing"
	"time"
)

// TestRateLimitsRefillOnTheServersClock: the per-device check-in limit and
// the enrollment limit refill on Config.Now, the one clock the wiring
// passes everywhere, not on the wall clock: with the clock standing
// still a spent bucket stays spent, and a minute on it is full again.
func TestRateLimitsRefillOnTheServersClock(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	s, _ := newHandsetServer(t, Config{Now: func() time.Time { return now },
		CheckInsPerMinute: 1, CheckInBurst: 1, EnrollmentsPerMinute: 1, EnrollmentBurst: 1})
	enroll := func() int {
		return post(t, s, "/api/v1/devices", "", `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret"}`).Code
	}
	checkIn := func() int { return post(t, s, "/api/v1/checkin", goodToken, validCheckIn).Code }

	if c := checkIn(); c != http.StatusOK {
		t.Fatalf("first check-in: %d, want 200", c)
	}
	if c := enroll(); c != http.StatusCreated {
		t.Fatalf("first enrollment: %d, want 201", c)
	}
	if c := checkIn(); c != http.StatusTooManyRequests {
		t.Fatalf("second check-in at the same instant: %d, want 429", c)
	}
	if c := enroll(); c != http.StatusTooManyRequests {
		t.Fatalf("second enrollment at the same instant: %d, want 429", c)
	}
	// Not yet a minute on the server's clock: still limited.
	now = now.Add(59 * time.Second)
	if c := checkIn(); c != http.StatusTooManyRequests {
		t.Errorf("check-in 59 s on the server's clock: %d, want 429", c)
	}
	if c := enroll(); c != http.StatusTooManyRequests {
		t.Errorf("enrollment 59 s on the server's clock: %d, want 429", c)
	}
	now = now.Add(2 * time.Second)
	if c := checkIn(); c != http.StatusOK {
		t.Errorf("check-in a minute on the server's clock: %d, want 200", c)
	}
	if c := enroll(); c != http.StatusCreated {
		t.Errorf("enrollment a minute on the server's clock: %d, want 201", c)
	}
}
