package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/blobtest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
)

// logWatch is a log sink the test can wait on: every write wakes waitFor.
type logWatch struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newLogWatch() *logWatch { return &logWatch{changed: make(chan struct{}, 1)} }

func (w *logWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (w *logWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// records are the JSON log lines with message msg.
func (w *logWatch) records(msg string) []map[string]any {
	var out []map[string]any
	for line := range strings.Lines(w.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// waitFor waits until the log holds n lines with message msg that
// satisfy match, and returns the n-th. The limit only bounds a broken
// server: the wait ends on the log write itself.
func (w *logWatch) waitFor(tb testing.TB, what, msg string, n int, match func(map[string]any) bool) map[string]any {
	tb.Helper()
	limit := time.After(2 * time.Minute)
	for {
		var found []map[string]any
		for _, rec := range w.records(msg) {
			if match(rec) {
				found = append(found, rec)
			}
		}
		if len(found) >= n {
			return found[n-1]
		}
		select {
		case <-w.changed:
		case <-limit:
			tb.Fatalf("%s: fewer than %d %q log lines within 2 minutes; the log:\n%s", what, n, msg, w.String())
		}
	}
}

func anyRecord(map[string]any) bool { return true }

// clientConns dials the server from loopback and remembers the local
// address of every connection, to look for it in the log afterwards.
type clientConns struct {
	tb    testing.TB
	addr  string
	mu    sync.Mutex
	local []*net.TCPAddr
}

// dial opens a connection whose receive buffer holds at most 64 KiB, so
// that a client that stops reading stops the server's writes soon.
func (cc *clientConns) dial() *net.TCPConn {
	cc.tb.Helper()
	c, err := cc.dialContext(context.Background(), "tcp", cc.addr)
	if err != nil {
		cc.tb.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// dialContext is dial for an http.Transport, which calls it on a
// goroutine of its own.
func (cc *clientConns) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
		return errors.Join(err, serr)
	}}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cc.tb.Cleanup(func() { c.Close() })
	cc.mu.Lock()
	cc.local = append(cc.local, c.LocalAddr().(*net.TCPAddr))
	cc.mu.Unlock()
	return c, nil
}

// reset closes c with an RST instead of a FIN, as a phone losing its
// link or a middlebox does.
func reset(tb testing.TB, c *net.TCPConn) {
	tb.Helper()
	if err := c.SetLinger(0); err != nil {
		tb.Fatal(err)
	}
	c.Close()
}

// assertNoClientAddress fails if the log holds any client's IP:port, or
// its port number as a token of its own.
func (cc *clientConns) assertNoClientAddress(logs string) {
	cc.tb.Helper()
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if len(cc.local) == 0 {
		cc.tb.Fatal("no client connection was made")
	}
	for _, a := range cc.local {
		if strings.Contains(logs, a.String()) {
			cc.tb.Errorf("the log names the client address %s:\n%s", a, grepLines(logs, a.String()))
		}
		port := regexp.MustCompile(`(^|[^0-9A-Za-z])` + strconv.Itoa(a.Port) + `([^0-9A-Za-z]|$)`)
		for line := range strings.Lines(logs) {
			if port.MatchString(line) {
				cc.tb.Errorf("the log names the client port %d: %s", a.Port, line)
			}
		}
	}
}

// TestConnectionFailuresLogNoClientAddress makes the connection failures
// otad can see happen, against the server as "otad serve" runs it with
// the log at debug level: a download reset by the client after 1 MB, a
// download stalled past --download-stall-timeout, a malformed request
// line, headers over the limit, and an upload cut off mid-body by an RST
// and by a FIN. Network errors carry both ends' addresses in their text;
// the log must hold a classified cause instead, and neither the client's
// IP:port nor its port anywhere. (otad serves plain HTTP only, TLS ends
// at a proxy: TestErrorLogClassifiesTLSHandshakeFailure covers the TLS
// handshake error net/http would log.)
func TestConnectionFailuresLogNoClientAddress(t *testing.T) {
	cfg := serveConfig(t, []string{"--download-stall-timeout", "1s", "--log-level", "debug"}, nil)
	var out, stderr bytes.Buffer
	if code := run(t.Context(), []string{"token", "create", "--name", "uploader", "--role", "release-engineer", "--data-dir", cfg.DataDir},
		func(string) string { return "" }, &out, &stderr); code != exitOK {
		t.Fatalf("otad token create: exit %d: %s", code, stderr.String())
	}
	token := strings.TrimSpace(out.String())

	logs := newLogWatch()
	m := NewMain(cfg, cfg.logger(logs))
	if err := m.Run(t.Context()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	const size = 20 << 20
	content, err := io.ReadAll(io.LimitReader(blobtest.NewReader(1), size))
	if err != nil {
		t.Fatal(err)
	}
	// /targets/ serves published targets only.
	env := &apitest.Env{URL: "http://" + m.Addr(), Token: token}
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, "big.bin", content, es...)
	bigPath := "/" + manifests.TargetKey("big.bin", apitest.SHA256Hex(content))
	cc := &clientConns{tb: t, addr: m.Addr()}

	// download starts a download of big.bin and reads its first MiB.
	download := func() *net.TCPConn {
		c := cc.dial()
		if _, err := io.WriteString(c, "GET "+bigPath+" HTTP/1.1\r\nHost: otad\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("download: got status %d, want 200", resp.StatusCode)
		}
		if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
			t.Fatal(err)
		}
		return c
	}
	downloadCause := func(what string, n int, causes ...string) {
		t.Helper()
		rec := logs.waitFor(t, what, "download ended early", n, anyRecord)
		if cause, _ := rec["cause"].(string); !slices.Contains(causes, cause) {
			t.Errorf("%s: logged %v, want the cause one of %q", what, rec, causes)
		}
	}

	// A phone that loses its link mid-download. The server learns of the
	// RST from its write (ECONNRESET) or from its background read, after
	// which the write finds the socket shut (EPIPE): which one comes
	// first is the kernel's choice.
	reset(t, download())
	downloadCause("download reset", 1, "client_reset", "client_closed")

	// A phone that stops reading: the server gives up after the stall
	// timeout.
	stalled := download()
	downloadCause("download stalled", 2, "stall_timeout")
	stalled.Close()

	// A malformed request line and headers over the limit: net/http
	// answers them itself.
	for _, tc := range []struct {
		name, request string
		want          int
	}{
		{"malformed request line", "GARBAGE\r\n\r\n", http.StatusBadRequest},
		{"oversized headers", "GET /healthz HTTP/1.1\r\nHost: otad\r\nX-Filler: " + strings.Repeat("a", 100<<10) + "\r\n\r\n",
			http.StatusRequestHeaderFieldsTooLarge},
	} {
		c := cc.dial()
		io.WriteString(c, tc.request) // the server may close before reading it all
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s: got status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		c.Close()
	}

	// An upload cut off mid-body, by an RST and by a FIN. Waiting for
	// "100 Continue" makes sure the handler is reading the body when the
	// connection ends.
	body := bytes.Repeat([]byte("x"), 10<<20)
	sum := sha256.Sum256(body)
	for i, tc := range []struct {
		name, file string
		cut        func(*net.TCPConn)
		cause      string
	}{
		{"upload reset", "reset.bin", func(c *net.TCPConn) { reset(t, c) }, "client_reset"},
		{"upload closed", "closed.bin", func(c *net.TCPConn) { c.CloseWrite() }, "client_closed"},
	} {
		c := cc.dial()
		io.WriteString(c, "PUT "+api.AdminPrefix+"/artifacts/"+tc.file+" HTTP/1.1\r\nHost: otad\r\n"+
			"Authorization: Bearer "+token+"\r\n"+wire.HeaderContentSHA256+": "+hex.EncodeToString(sum[:])+"\r\n"+
			"Content-Type: application/octet-stream\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.StatusCode != http.StatusContinue {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s: got status %d %s, want 100 Continue", tc.name, resp.StatusCode, b)
		}
		if _, err := c.Write(body[:1<<20]); err != nil {
			t.Fatal(err)
		}
		tc.cut(c)
		// The artifact upload of big.bin's release is the route's first line.
		rec := logs.waitFor(t, tc.name, "request", i+2, func(rec map[string]any) bool {
			return rec["route"] == api.AdminPrefix+"/artifacts/*"
		})
		if rec["cause"] != tc.cause || rec["status"] != 499.0 {
			t.Errorf("%s: logged %v, want status 499 and cause %s", tc.name, rec, tc.cause)
		}
		c.Close()
	}

	m.Close() // every line is written
	text := logs.String()
	cc.assertNoClientAddress(text)
	for _, s := range []string{"connection reset", "i/o timeout", "broken pipe", "unexpected EOF", "write tcp", "read tcp"} {
		if lines := grepLines(text, s); lines != "" {
			t.Errorf("the log holds the text of a connection error (%q):\n%s", s, lines)
		}
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("the whole log:\n%s", text)
	}
}

// TestErrorLogClassifiesTLSHandshakeFailure: net/http logs a failed TLS
// handshake to http.Server.ErrorLog as "http: TLS handshake error from
// IP:PORT: ...". otad serves plain HTTP (TLS ends at a proxy), but its
// ErrorLog must still turn that line into a classified one, in case TLS
// is ever served: a real TLS server with otad's ErrorLog, a client that
// refuses its certificate, and one that speaks plain HTTP to it.
func TestErrorLogClassifiesTLSHandshakeFailure(t *testing.T) {
	logs := newLogWatch()
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Config.ErrorLog = newErrorLog(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cc := &clientConns{tb: t, addr: srv.Listener.Addr().String()}

	// The client does not trust the test certificate and aborts.
	if _, err := (&http.Client{Transport: &http.Transport{DialContext: cc.dialContext}}).Get(srv.URL); err == nil {
		t.Fatal("the client accepted an untrusted certificate")
	}
	logs.waitFor(t, "untrusted certificate", "tls handshake failed", 1, func(rec map[string]any) bool { return rec["cause"] == "tls_handshake" })

	// Plain HTTP to the TLS port.
	c := cc.dial()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: otad\r\n\r\n")
	io.Copy(io.Discard, c)
	c.Close()
	logs.waitFor(t, "plain HTTP", "tls handshake failed", 2, func(rec map[string]any) bool { return rec["cause"] == "tls_handshake" })
	srv.Close()
	cc.assertNoClientAddress(logs.String())
	if t.Failed() {
		t.Logf("the whole log:\n%s", logs.String())
	}
}
