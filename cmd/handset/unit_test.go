package main

import (
	"errors"
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

func TestHistogram(t *testing.T) {
	var h histogram
	if h.quantile(0.5) != 0 {
		t.Fatal("empty histogram has a median")
	}
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.95, 950 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*1.07 {
			t.Errorf("quantile(%v) = %v, want %v within 7%% above", tc.q, got, tc.want)
		}
	}
	if s := h.summary(); s.Max != 1000 || s.Count != 1000 {
		t.Errorf("summary %+v", s)
	}
	var tiny histogram
	tiny.record(0)
	tiny.record(time.Hour * 24 * 365)
	if tiny.quantile(0.5) <= 0 || tiny.quantile(1) != time.Hour*24*365 {
		t.Errorf("extremes: p50 %v, max %v", tiny.quantile(0.5), tiny.quantile(1))
	}
}

func TestErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		err       error
		kind      string
		transient bool
	}{
		{&client.Error{Status: 429, RetryAfter: time.Second}, "rate_limited", true},
		{&client.Error{Status: 503, RetryAfter: -1}, "http_503", true},
		{&client.Error{Status: 400, RetryAfter: -1}, "http_400", false},
		{&client.Error{Status: 401, RetryAfter: -1}, "http_401", false},
		{&client.BadAnswerError{Err: errors.New("x")}, "bad_answer", false},
		{&url.Error{Op: "Post", URL: "http://x", Err: errors.New("connection refused")}, "network", true},
	} {
		if got := errorKind(tc.err); got != tc.kind {
			t.Errorf("errorKind(%v) = %s, want %s", tc.err, got, tc.kind)
		}
		if got := transient(tc.err); got != tc.transient {
			t.Errorf("transient(%v) = %v, want %v", tc.err, got, tc.transient)
		}
	}
}

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
	s := &sim{server: srv, policy: p, stderr: &strings.Builder{}}
	if got := s.resolve("http://evil.example.com/tuf/", "/tuf/"); got != "http://127.0.0.1:8080/tuf/" {
		t.Errorf("resolve of a foreign URL = %s, want the server's", got)
	}
	if got := s.resolve("/mirror/tuf/", "/tuf/"); got != "http://127.0.0.1:8080/mirror/tuf/" {
		t.Errorf("resolve of a relative URL = %s", got)
	}
}

// TestResolveOfferURL checks how offered TUF locations become URLs: otad
// without a public URL answers root-relative paths, which resolve against
// --server (its path included); nothing resolves to another host.
func TestResolveOfferURL(t *testing.T) {
	tests := []struct {
		server, raw, want string
	}{
		{"http://127.0.0.1:8080", "/tuf/", "http://127.0.0.1:8080/tuf/"},
		{"http://127.0.0.1:8080/", "/targets/", "http://127.0.0.1:8080/targets/"},
		{"https://gw.example.com/ota", "/tuf/", "https://gw.example.com/ota/tuf/"},
		{"https://gw.example.com/ota/", "/targets/", "https://gw.example.com/ota/targets/"},
		{"https://gw.example.com/ota", "", "https://gw.example.com/ota/tuf/"},
		{"https://gw.example.com/ota", "https://gw.example.com/ota/mirror/", "https://gw.example.com/ota/mirror/"},
		{"https://gw.example.com/ota", "/tuf/?x=1#f", "https://gw.example.com/ota/tuf/"},
		{"http://127.0.0.1:8080", "//evil.example/tuf/", "http://127.0.0.1:8080/tuf/"},
		{"http://127.0.0.1:8080", "http:///tuf/", "http://127.0.0.1:8080/tuf/"},
		{"http://127.0.0.1:8080", "http://evil.example/tuf/", "http://127.0.0.1:8080/tuf/"},
	}
	for _, tc := range tests {
		srv, err := url.Parse(tc.server)
		if err != nil {
			t.Fatal(err)
		}
		s := &sim{server: srv, policy: newHostPolicy(srv, nil), stderr: &strings.Builder{}}
		if got := s.resolve(tc.raw, "/tuf/"); got != tc.want {
			t.Errorf("server %s, offered %q: got %s, want %s", tc.server, tc.raw, got, tc.want)
		}
	}
}

func TestReportMessage(t *testing.T) {
	long := strings.Repeat("é", 300)
	got := reportMessage("a\nb\t" + long)
	if len(got) > 256 || strings.ContainsAny(got, "\n\t") || !strings.HasPrefix(got, "a b ") {
		t.Errorf("reportMessage = %q (%d bytes)", got, len(got))
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
