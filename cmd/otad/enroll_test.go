package main

import (
	"net/http"
	"strings"
	"testing"
)

// TestEnrollRateFlags: --enroll-rate and --enroll-burst (or their
// variables) reach the API, 0 disables the limit, and bad values name
// the setting.
func TestEnrollRateFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantOK   int // enrollments that succeed before the first 429; -1: no 429 in 20
		wantFlag string
	}{
		{"defaults", nil, nil, -1, ""},
		{"flags", []string{"--enroll-rate", "1", "--enroll-burst", "3"}, nil, 3, ""},
		{"environment", nil, map[string]string{"OTAD_ENROLL_RATE": "1", "OTAD_ENROLL_BURST": "2"}, 2, ""},
		{"zero disables", []string{"--enroll-rate", "0", "--enroll-burst", "1"}, nil, -1, ""},
		{"negative rate", []string{"--enroll-rate", "-1"}, nil, 0, "enroll-rate"},
		{"zero burst", []string{"--enroll-burst", "0"}, nil, 0, "enroll-burst"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serveConfig(t, tc.args, tc.env)
			if tc.wantFlag != "" {
				wantSettingError(t, cfg, tc.wantFlag)
				return
			}
			m, _ := startMain(t, cfg)
			for i := range 20 {
				resp, err := http.Post("http://"+m.Addr()+"/api/v1/devices", "application/json",
					strings.NewReader(`{"model":"PX-7","build":"7.1.0","channel":"stable"}`))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					if i != tc.wantOK || resp.Header.Get("Retry-After") == "" {
						t.Fatalf("enrollment %d: 429 (Retry-After %q), want %d to succeed first", i+1, resp.Header.Get("Retry-After"), tc.wantOK)
					}
					return
				}
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("enrollment %d: got %d, want 201", i+1, resp.StatusCode)
				}
			}
			if tc.wantOK != -1 {
				t.Fatalf("20 enrollments succeeded, want a 429 after %d", tc.wantOK)
			}
		})
	}
}
