package handsetsim

import (
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
)

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
		if got := ErrorKind(tc.err); got != tc.kind {
			t.Errorf("ErrorKind(%v) = %s, want %s", tc.err, got, tc.kind)
		}
		if got := client.Temporary(tc.err); got != tc.transient {
			t.Errorf("client.Temporary(%v) = %v, want %v", tc.err, got, tc.transient)
		}
	}
}

// TestResolveOfferURL checks how offered TUF locations become URLs: otad
// without a public URL answers root-relative paths, which resolve against
// the server's URL (its path included); an offer naming a host that is
// neither the server's nor allowed is ignored for the server's default,
// and said once.
func TestResolveOfferURL(t *testing.T) {
	tests := []struct {
		server, raw, want string
		ignored           bool
	}{
		{"http://127.0.0.1:8080", "/tuf/", "http://127.0.0.1:8080/tuf/", false},
		{"http://127.0.0.1:8080/", "/targets/", "http://127.0.0.1:8080/targets/", false},
		{"https://gw.example.com/ota", "/tuf/", "https://gw.example.com/ota/tuf/", false},
		{"https://gw.example.com/ota/", "/targets/", "https://gw.example.com/ota/targets/", false},
		{"https://gw.example.com/ota", "", "https://gw.example.com/ota/tuf/", false},
		{"https://gw.example.com/ota", "https://gw.example.com/ota/mirror/", "https://gw.example.com/ota/mirror/", false},
		{"https://gw.example.com/ota", "/tuf/?x=1#f", "https://gw.example.com/ota/tuf/", false},
		{"http://127.0.0.1:8080", "https://cdn.example.com/tuf/", "https://cdn.example.com/tuf/", false},
		{"http://127.0.0.1:8080", "https://cdn.example.com:8443/tuf/", "https://cdn.example.com:8443/tuf/", false},
		{"http://127.0.0.1:8080", "//evil.example/tuf/", "http://127.0.0.1:8080/tuf/", true},
		{"http://127.0.0.1:8080", "http:///tuf/", "http://127.0.0.1:8080/tuf/", true},
		{"http://127.0.0.1:8080", "http://evil.example/tuf/", "http://127.0.0.1:8080/tuf/", true},
		{"http://127.0.0.1:8080", "file:///etc/passwd", "http://127.0.0.1:8080/tuf/", true},
	}
	for _, tc := range tests {
		c, err := client.New(tc.server)
		if err != nil {
			t.Fatal(err)
		}
		var said []string
		f, err := New(Config{Client: c, EnrollOnly: true, AllowedHosts: []string{"cdn.example.com"},
			Say: func(l string) { said = append(said, l) }}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.resolve(tc.raw, "/tuf/"); got != tc.want {
			t.Errorf("server %s, offered %q: got %s, want %s", tc.server, tc.raw, got, tc.want)
		}
		f.resolve(tc.raw, "/tuf/")
		if tc.ignored != (len(said) == 1) || len(said) > 1 {
			t.Errorf("server %s, offered %q: said %q; want one warning: %v", tc.server, tc.raw, said, tc.ignored)
		}
	}
}
