package main

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/envflag"
)

// TestParseRetryAfter: the waits the handsets take from Retry-After
// (client.ParseRetryAfter), capped.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", -1},
		{"1", time.Second},
		{" 30 ", 30 * time.Second},
		{"0", 0},
		{"-5", -1},
		{"soon", -1},
		{"99999999999", client.MaxRetryAfter},
		{now.Add(90 * time.Second).Format(httpTimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(httpTimeFormat), 0},
	} {
		if got := client.ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("client.ParseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

const httpTimeFormat = "Mon, 02 Jan 2006 15:04:05 GMT"

func TestHostPolicy(t *testing.T) {
	srv, _ := url.Parse("http://127.0.0.1:8080")
	p := newHostPolicy(srv, []string{"cdn.example.com"})
	for raw, want := range map[string]bool{
		"http://127.0.0.1:8080/tuf/":       true,
		"http://127.0.0.1:9999/tuf/":       false,
		"https://cdn.example.com/targets/": true,
		"https://cdn.example.com:443/x":    true,
		"http://evil.example.com/tuf/":     false,
		"file:///etc/passwd":               false,
		"ftp://127.0.0.1:8080/tuf/":        false,
	} {
		u, _ := url.Parse(raw)
		if got := p.allows(u); got != want {
			t.Errorf("allows(%s) = %v, want %v", raw, got, want)
		}
	}
}

// TestFlags: every configuration error is one line naming the flag, and
// exits 2.
func TestFlags(t *testing.T) {
	base := []string{"--server", "http://127.0.0.1:1", "--model", "PX-7", "--build", "7.2.1"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no server", nil, []string{"--model", "PX-7", "--build", "1"}, "--server / HANDSET_SERVER: required"},
		{"bad server", nil, []string{"--server", "ftp://x", "--model", "PX-7", "--build", "1"}, "--server"},
		{"no model", nil, []string{"--server", "http://x", "--build", "1"}, "--model"},
		{"bad region", nil, append(base, "--region", "Germany"), "--region"},
		{"fail rate", nil, append(base, "--fail-rate", "1.5"), "--fail-rate"},
		{"fail codes", nil, append(base, "--fail-codes", "bad code"), "--fail-codes"},
		{"count", nil, append(base, "--count", "0"), "--count"},
		{"concurrency", nil, append(base, "--concurrency", "0"), "--concurrency"},
		{"poll scale", nil, append(base, "--poll-scale", "0"), "--poll-scale"},
		{"env", map[string]string{"HANDSET_COUNT": "many"}, base, "HANDSET_COUNT (sets --count)"},
		{"argument", nil, append(base, "extra"), "unexpected argument"},
		{"root file", nil, append(base, "--root", "/does/not/exist.json"), "--root"},
		{"state file", nil, append(base, "--state-file", "/dev/null/x.json"), "--state-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runHandset(t, tc.env, tc.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code != exitConfig || !strings.Contains(last, tc.want) || !strings.HasPrefix(last, "handset: ") {
				t.Errorf("exit %d, stderr %q; want exit 2 and a line with %q", code, stderr, tc.want)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		code, _, stderr := runHandset(t, nil, "--help")
		if code != exitOK || !strings.Contains(stderr, "-fail-rate") || !strings.Contains(stderr, "HANDSET_SERVER") {
			t.Errorf("exit %d, help %q", code, stderr)
		}
	})
	t.Run("env sets flags", func(t *testing.T) {
		var cfg Config = defaultConfig()
		fs := envflag.New("x", "", &strings.Builder{})
		cfg.register(fs)
		env := map[string]string{"HANDSET_COUNT": "7", "HANDSET_SERVER": "http://a"}
		if err := parseFlags(fs, []string{"--count", "9"}, func(k string) string { return env[k] }); err != nil {
			t.Fatal(err)
		}
		if cfg.Count != 9 || cfg.Server != "http://a" {
			t.Errorf("count %d server %q: the command line wins, the environment fills in", cfg.Count, cfg.Server)
		}
	})
}
