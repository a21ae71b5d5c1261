package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/server/api/wire"
)

// startMain runs an otad in-process on a free loopback port.
func startMain(tb testing.TB, cfg Config) (*Main, *syncBuffer) {
	tb.Helper()
	cfg.Listen = "127.0.0.1:0"
	if err := cfg.ValidateServe(); err != nil {
		tb.Fatal(err)
	}
	logs := &syncBuffer{}
	m := NewMain(cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err := m.Run(context.Background()); err != nil {
		tb.Fatalf("Run: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m, logs
}

// syncBuffer lets the server goroutines log while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func get(tb testing.TB, url string) (int, string) {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeEmbeddedDefaults(t *testing.T) {
	cfg := defaultConfig()
	cfg.DataDir = filepath.Join(t.TempDir(), "otad-data")
	m, _ := startMain(t, cfg)
	base := "http://" + m.Addr()

	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz: got %d %s, want 200", code, body)
	}
	code, body := get(t, base+"/readyz")
	if code != 200 {
		t.Fatalf("/readyz: got %d %s, want 200", code, body)
	}
	var ready struct{ Checks map[string]string }
	if err := json.Unmarshal([]byte(body), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Checks["database"] != "ok" || ready.Checks["storage"] != "ok" {
		t.Errorf("/readyz checks = %v, want database and storage ok", ready.Checks)
	}
	_, metrics := get(t, base+"/metrics")
	if !strings.Contains(metrics, `otad_http_requests_total{code="200",method="GET",route="/healthz"} 1`) {
		t.Errorf("/metrics does not count the /healthz request:\n%s", grepLines(metrics, "otad_http_requests_total"))
	}
	for _, p := range []string{"otad.db", "blobs"} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, p)); err != nil {
			t.Errorf("embedded default %s not in the data dir: %v", p, err)
		}
	}
	if code, body := get(t, base+"/nope"); code != 404 || !strings.Contains(body, `"code":"not_found"`) {
		t.Errorf("unknown path: got %d %s, want a JSON 404", code, body)
	}
}

// TestDataDirOwnerOnly: otad serve makes the data folder 0700 and the
// SQLite database with its -wal and -shm files 0600, whatever the umask:
// a fresh folder, and one an older otad left group and world readable.
func TestDataDirOwnerOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		prep func(t *testing.T, dir string)
	}{
		{"fresh", func(*testing.T, string) {}},
		{"left readable", func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{dir, filepath.Join(dir, "otad.db")} {
				if p != dir {
					if err := os.WriteFile(p, nil, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Chmod(p, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.DataDir = filepath.Join(t.TempDir(), "otad-data")
			tc.prep(t, cfg.DataDir)
			m, _ := startMain(t, cfg)
			// A write, so that the WAL has something in it.
			var enrolled wire.EnrollAnswer
			postJSON(t, "http://"+m.Addr()+"/api/v1/devices", "", "", wire.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"}, &enrolled)
			want := map[string]os.FileMode{"": 0o700, "otad.db": 0o600, "otad.db-wal": 0o600, "otad.db-shm": 0o600}
			for name, mode := range want {
				fi, err := os.Stat(filepath.Join(cfg.DataDir, name))
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if got := fi.Mode().Perm(); got != mode {
					t.Errorf("%s: mode %#o, want %#o", cmp.Or(name, "the data folder"), got, mode)
				}
			}
		})
	}
}

func grepLines(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	cfg := defaultConfig()
	cfg.DataDir = t.TempDir()
	m, _ := startMain(t, cfg)
	started, release := make(chan struct{}), make(chan struct{})
	m.App.API.Echo().GET("/test/slow", func(c echo.Context) error {
		close(started)
		<-release
		return c.String(http.StatusOK, "finished")
	})

	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + m.Addr() + "/test/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b), err}
	}()
	<-started

	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	// New connections are refused once shutdown has begun; the limit only
	// bounds a hang.
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := net.DialTimeout("tcp", m.Addr(), 100*time.Millisecond)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts connections during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the in-flight request finished", err)
	default:
	}
	close(release)
	r := <-res
	if r.err != nil || r.code != 200 || r.body != "finished" {
		t.Fatalf("in-flight request: got %d %q %v, want 200 \"finished\"", r.code, r.body, r.err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// closedPort returns a loopback port that refuses connections: one the
// kernel just handed out and that is closed again. Only for addresses
// nothing must answer on; servers that need a port of their own get one
// from onFreePort.
func closedPort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dead := closedPort(t)

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		want     string // the one line on stderr starts with "otad: " + want
		wantCode int
		secret   string // must not appear in the output
	}{
		{
			name:     "unreachable database",
			args:     []string{"--database", fmt.Sprintf("postgres://ota:hunter2@127.0.0.1:%d/ota", dead)},
			want:     fmt.Sprintf("--database / OTAD_DATABASE: connect to postgres at 127.0.0.1:%d", dead),
			wantCode: exitConfig,
			secret:   "hunter2",
		},
		{
			name:     "unknown database scheme",
			args:     []string{"--database", "mysql://root@127.0.0.1/ota"},
			want:     "--database / OTAD_DATABASE: want postgres://",
			wantCode: exitConfig,
		},
		{
			name:     "malformed storage URL",
			args:     []string{"--storage", "ftp://bucket/prefix"},
			want:     `--storage / OTAD_STORAGE: "ftp://bucket/prefix": want s3://bucket/prefix`,
			wantCode: exitConfig,
		},
		{
			name:     "s3 URL without bucket",
			env:      map[string]string{"OTAD_STORAGE": "s3://"},
			want:     "--storage / OTAD_STORAGE: ",
			wantCode: exitConfig,
		},
		{
			name:     "unreachable S3 endpoint",
			args:     []string{"--storage", "s3://ota-bucket/prod", "--s3-endpoint", fmt.Sprintf("http://127.0.0.1:%d", dead), "--startup-timeout", "3s"},
			want:     "--storage / OTAD_STORAGE: ",
			wantCode: exitConfig,
		},
		{
			name:     "bad S3 endpoint",
			args:     []string{"--storage", "s3://ota-bucket", "--s3-endpoint", "ftp://minio:9000"},
			want:     "--s3-endpoint / OTAD_S3_ENDPOINT: ",
			wantCode: exitConfig,
		},
		{
			name:     "data dir under a file",
			args:     []string{"--data-dir", filepath.Join(file, "data")},
			want:     "--data-dir / OTAD_DATA_DIR: cannot create " + filepath.Join(file, "data") + ": not a directory",
			wantCode: exitConfig,
		},
		{
			name:     "listen address malformed",
			env:      map[string]string{"OTAD_LISTEN": "nonsense"},
			want:     `--listen / OTAD_LISTEN: "nonsense": want host:port or :port`,
			wantCode: exitConfig,
		},
		{
			name:     "listen address in use",
			args:     []string{"--listen", busy.Addr().String()},
			want:     "--listen / OTAD_LISTEN: listen tcp " + busy.Addr().String() + ": bind: address already in use",
			wantCode: exitConfig,
		},
		{
			name:     "addr file in a missing folder",
			args:     []string{"--addr-file", filepath.Join(dir, "missing", "otad.addr")},
			want:     "--addr-file / OTAD_ADDR_FILE: ",
			wantCode: exitConfig,
		},
		{
			name:     "all interfaces without a public URL",
			env:      map[string]string{"OTAD_LISTEN": ":0"},
			want:     `--public-url / OTAD_PUBLIC_URL: required when --listen ":0" accepts connections from other hosts: set it to the URL handsets reach this server at`,
			wantCode: exitConfig,
		},
		{
			name:     "bad public URL",
			args:     []string{"--public-url", "ota.example.com"},
			want:     `--public-url / OTAD_PUBLIC_URL: "ota.example.com": want an absolute http(s)://host[:port][/path]`,
			wantCode: exitConfig,
		},
		{
			name:     "bad duration in the environment",
			env:      map[string]string{"OTAD_READ_TIMEOUT": "soon"},
			want:     `OTAD_READ_TIMEOUT (sets --read-timeout): invalid value "soon"`,
			wantCode: exitConfig,
		},
		{
			name:     "bad log level",
			args:     []string{"--log-level", "loud"},
			want:     `--log-level / OTAD_LOG_LEVEL: "loud": want debug, info, warn or error`,
			wantCode: exitConfig,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"OTAD_DATA_DIR": t.TempDir(), "OTAD_LISTEN": "127.0.0.1:0"}
			for k, v := range tc.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			args := append([]string{"serve"}, tc.args...)
			code := run(context.Background(), args, func(k string) string { return env[k] }, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			// Log records (JSON) may precede it; the error itself is one
			// plain line, and nothing else is.
			var plain []string
			for line := range strings.Lines(stderr.String()) {
				if !json.Valid([]byte(line)) {
					plain = append(plain, line)
				}
			}
			if len(plain) != 1 {
				t.Fatalf("stderr has %d plain lines, want exactly one:\n%s", len(plain), stderr.String())
			}
			out := plain[0]
			if !strings.HasPrefix(out, "otad: "+tc.want) {
				t.Errorf("stderr = %q\nwant prefix %q", out, "otad: "+tc.want)
			}
			if tc.secret != "" && strings.Contains(out, tc.secret) {
				t.Errorf("stderr leaks the password: %q", out)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"serve", "--help"}, {"migrate", "--help"}} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), args, func(string) string { return "" }, &stdout, &stderr)
		if code != exitOK {
			t.Errorf("%v: exit code %d, want 0", args, code)
		}
		if out := stdout.String() + stderr.String(); !strings.Contains(out, "Usage") {
			t.Errorf("%v: no usage in output %q", args, out)
		}
	}
	var stdout, stderr bytes.Buffer
	run(context.Background(), []string{"serve", "--help"}, func(string) string { return "" }, &stdout, &stderr)
	for _, want := range []string{"OTAD_LISTEN", "OTAD_DATA_DIR", "OTAD_DATABASE", "OTAD_STORAGE", "AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("serve --help does not mention %s", want)
		}
	}
}

func TestMigrateCommand(t *testing.T) {
	env := map[string]string{"OTAD_DATA_DIR": t.TempDir()}
	getenv := func(k string) string { return env[k] }
	want := []string{"database schema migrated from version 0 to ", "database schema is up to date at version "}
	for i, w := range want {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"migrate"}, getenv, &stdout, &stderr); code != 0 {
			t.Fatalf("run %d: exit %d: %s", i, code, stderr.String())
		}
		if !strings.HasPrefix(stdout.String(), w) {
			t.Errorf("run %d: got %q, want prefix %q", i, stdout.String(), w)
		}
	}
}

// TestBinarySIGTERM builds the real binary, starts it on embedded defaults
// the way the README does, and checks that SIGTERM shuts it down cleanly.
func TestBinarySIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the otad binary")
	}
	bin := buildOtad(t)
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "otad.addr")
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--addr-file", addrFile)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OTAD_DATA_DIR=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	addr := waitForLog(t, lines, "otad serving")["addr"].(string)
	// Written before serving is announced, so scripts may poll for it.
	if b, err := os.ReadFile(addrFile); err != nil || string(b) != addr+"\n" {
		t.Errorf("--addr-file: got %q (%v), want %q", b, err, addr+"\n")
	}
	if code, body := get(t, "http://"+addr+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "otad-data", "otad.db")); err != nil {
		t.Errorf("default data dir ./otad-data not used: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitForLog(t, lines, "shutdown complete")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("otad exited with %v after SIGTERM, want status 0", err)
		}
		if _, err := os.Stat(addrFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("--addr-file after SIGTERM: %v, want it removed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("otad did not exit within a minute of SIGTERM and its shutdown complete")
	}
}

func waitForLog(tb testing.TB, lines <-chan string, msg string) map[string]any {
	tb.Helper()
	timeout := time.After(2 * time.Minute) // only bounds a hang
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				tb.Fatalf("otad exited before logging %q", msg)
			}
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return rec
			}
		case <-timeout:
			tb.Fatalf("no %q log line within 2 minutes", msg)
		}
	}
}

func TestErrorLogKeepsNoClientAddress(t *testing.T) {
	var buf bytes.Buffer
	w := addrRedactor{&buf}
	w.Write([]byte("http: panic serving 203.0.113.7:51234: boom; and [2001:db8::1]:443 too; listening on 10.0.0.1"))
	got := buf.String()
	if strings.Contains(got, "203.0.113.7") || strings.Contains(got, "2001:db8") {
		t.Fatalf("client address kept: %q", got)
	}
	if !strings.Contains(got, "panic serving [client]: boom") {
		t.Fatalf("got %q, want the message with [client]", got)
	}
}

// serveConfig is the configuration "otad serve" builds from args and env,
// with a fresh data folder and a port the kernel picks.
func serveConfig(tb testing.TB, args []string, env map[string]string) Config {
	tb.Helper()
	cfg := defaultConfig()
	fs := envflag.New("otad serve", "", io.Discard)
	cfg.registerServe(fs)
	if err := parseFlags(fs, args, func(k string) string { return env[k] }); err != nil {
		tb.Fatal(err)
	}
	cfg.DataDir = filepath.Join(tb.TempDir(), "otad-data")
	cfg.Listen = "127.0.0.1:0"
	return cfg
}

// wantSettingError fails unless cfg is refused with an error naming flag.
func wantSettingError(tb testing.TB, cfg Config, flag string) {
	tb.Helper()
	var ce *envflag.Error
	if err := cfg.ValidateServe(); !errors.As(err, &ce) || ce.Flag != flag {
		tb.Fatalf("ValidateServe: %v, want an error naming --%s", err, flag)
	}
}
