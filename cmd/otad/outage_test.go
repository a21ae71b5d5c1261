package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/freeport"
	"github.com/patchfleet/ota/manifests/s3store"
)

// startTries is how many ports a server gets to start on: a port proven
// free may be taken before the server binds it, and the start then fails
// at once.
const startTries = 5

// onFreePort runs start on ports below the ephemeral range that bind
// right now, moving to the next free port while start fails, and returns
// the port it started on. PostgreSQL and MinIO are restarted on the same
// port later, which port 0 cannot give.
func onFreePort(tb testing.TB, what string, start func(port int) error) int {
	tb.Helper()
	port := 0
	for try := 1; try <= startTries; try++ {
		var err error
		if port, err = freeport.After(port); err != nil {
			tb.Fatal(err)
		}
		err = start(port)
		if err == nil {
			return port
		}
		tb.Logf("%s did not start on 127.0.0.1:%d (try %d of %d): %v", what, port, try, startTries, err)
	}
	tb.Fatalf("%s did not start on any of %d free ports", what, startTries)
	return 0
}

// TestOnFreePortRetries checks that a start that fails (the port was
// taken between the check and the start) moves to the next free port, and
// that every port tried binds below the ephemeral range.
func TestOnFreePortRetries(t *testing.T) {
	lo, _ := freeport.EphemeralRange()
	var tried []int
	got := onFreePort(t, "flaky server", func(port int) error {
		tried = append(tried, port)
		if len(tried) < 3 {
			return errors.New("bind: address already in use")
		}
		return nil
	})
	if len(tried) != 3 || got != tried[2] || !(tried[0] < tried[1] && tried[1] < tried[2]) || got >= lo {
		t.Fatalf("tried %v, started on %d; want three rising ports below %d, the last one used", tried, got, lo)
	}
}

// pgServer is a private PostgreSQL cluster this test may stop and start
// without disturbing the shared one other packages use.
type pgServer struct {
	script, dir string
	port        int
}

func startPostgres(tb testing.TB) *pgServer {
	tb.Helper()
	script := os.Getenv("OTA_TEST_PG_CLUSTER")
	if script == "" || os.Getenv("OTA_TEST_POSTGRES_DSN") == "" {
		tb.Skip("OTA_TEST_PG_CLUSTER not set; run ./scripts/test.sh to run the PostgreSQL tests")
	}
	// Not t.TempDir: the cluster runs as an unprivileged user that must
	// reach it, and t.TempDir is private to root.
	dir, err := os.MkdirTemp("", "otad-pg-")
	if err != nil {
		tb.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	pg := &pgServer{script: script, dir: filepath.Join(dir, "pg")}
	tb.Cleanup(func() {
		pg.ctl(tb, "stop")
		os.RemoveAll(dir)
	})
	pg.ctl(tb, "init")
	pg.port = onFreePort(tb, "PostgreSQL", func(port int) error {
		pg.port = port
		return pg.run("start")
	})
	return pg
}

func (pg *pgServer) ctl(tb testing.TB, cmd string) {
	tb.Helper()
	if err := pg.run(cmd); err != nil {
		tb.Fatal(err)
	}
}

func (pg *pgServer) run(cmd string) error {
	args := []string{cmd, pg.dir}
	if cmd == "start" {
		args = append(args, strconv.Itoa(pg.port))
	}
	if out, err := exec.Command(pg.script, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("pg-cluster.sh %s: %v\n%s", cmd, err, out)
	}
	return nil
}

func (pg *pgServer) dsn() string {
	return fmt.Sprintf("postgres://ota@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

// minioServer is a private MinIO this test may stop and start.
type minioServer struct {
	bin, dir, user, pass string
	port                 int
	cmd                  *exec.Cmd
	exited               chan struct{} // closed when cmd has exited
}

func startMinIO(tb testing.TB) *minioServer {
	tb.Helper()
	bin := os.Getenv("OTA_TEST_MINIO_BIN")
	if bin == "" || os.Getenv("OTA_TEST_S3_ENDPOINT") == "" {
		tb.Skip("OTA_TEST_MINIO_BIN not set; run ./scripts/test.sh to run the MinIO tests")
	}
	// A password of this process's own: a MinIO of another test run that
	// took the port first would refuse it, and the test would say so.
	m := &minioServer{bin: bin, dir: tb.TempDir(), user: "outage", pass: "outage-secret-" + strconv.Itoa(os.Getpid())}
	tb.Cleanup(m.stop)
	m.port = onFreePort(tb, "MinIO", func(port int) error {
		m.port = port
		return m.run()
	})
	return m
}

// start restarts MinIO on its port.
func (m *minioServer) start(tb testing.TB) {
	tb.Helper()
	if err := m.run(); err != nil {
		tb.Fatal(err)
	}
}

// run starts MinIO on m.port and waits until it serves S3 requests. MinIO
// checks its port first and exits when it is taken, which ends the wait at
// once.
func (m *minioServer) run() error {
	m.cmd = exec.Command(m.bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", m.port), m.dir)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.user, "MINIO_ROOT_PASSWORD="+m.pass,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	var out strings.Builder
	m.cmd.Stdout, m.cmd.Stderr = &out, &out
	if err := m.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	m.exited = exited
	go func() { m.cmd.Wait(); close(exited) }()
	// /minio/health/live and /ready answer 200 while S3 calls still get
	// 503 "Server not initialized yet"; an anonymous ListBuckets answers
	// 403 once they do not.
	s3 := fmt.Sprintf("http://127.0.0.1:%d/", m.port)
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(2 * time.Minute) // only bounds a hang: a loaded machine starts MinIO slowly
	for {
		select {
		case <-exited:
			m.cmd = nil
			return fmt.Errorf("MinIO exited during start: %s", strings.TrimSpace(out.String()))
		default:
		}
		if resp, err := client.Get(s3); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusForbidden {
				return nil
			}
		}
		if time.Now().After(deadline) {
			m.stop()
			return errors.New("MinIO did not serve S3 requests within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (m *minioServer) stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

func waitFor(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type readyAnswer struct {
	code   int
	checks map[string]string
	reason string
}

func readyz(tb testing.TB, base string) readyAnswer {
	tb.Helper()
	code, body := get(tb, base+"/readyz")
	var b struct {
		Checks map[string]string
		Error  *struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		tb.Fatalf("/readyz body %q: %v", body, err)
	}
	a := readyAnswer{code: code, checks: b.Checks}
	if b.Error != nil {
		a.reason = b.Error.Message
	}
	return a
}

// TestReadyzFollowsOutages runs otad on PostgreSQL and MinIO, stops each in
// turn and checks that /readyz answers 503 naming it, then 200 again once
// it is back, all without restarting otad.
func TestReadyzFollowsOutages(t *testing.T) {
	pg := startPostgres(t)
	minio := startMinIO(t)

	s3cfg := s3store.Config{Endpoint: fmt.Sprintf("127.0.0.1:%d", minio.port), AccessKey: minio.user,
		SecretKey: minio.pass, Bucket: "otad-outage", Prefix: "repo"}
	store, err := s3store.New(s3cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}

	cfg := defaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Database = pg.dsn()
	cfg.Storage = "s3://otad-outage/repo"
	cfg.S3Endpoint = fmt.Sprintf("http://127.0.0.1:%d", minio.port)
	cfg.S3AccessKey, cfg.S3SecretKey = minio.user, minio.pass
	m, _ := startMain(t, cfg)
	base := "http://" + m.Addr()

	if a := readyz(t, base); a.code != 200 {
		t.Fatalf("/readyz with both up: %+v, want 200", a)
	}

	t.Run("MinIO stopped", func(t *testing.T) {
		minio.stop()
		var a readyAnswer
		waitFor(t, 2*time.Minute, "/readyz to turn 503", func() bool { a = readyz(t, base); return a.code == 503 })
		t.Logf("/readyz while MinIO is down: %d %s", a.code, a.reason)
		if !strings.HasPrefix(a.reason, "storage: ") || a.checks["database"] != "ok" {
			t.Errorf("got reason %q checks %v, want a storage reason with the database ok", a.reason, a.checks)
		}
		minio.start(t)
		waitFor(t, 2*time.Minute, "/readyz to turn 200 after MinIO restart", func() bool { return readyz(t, base).code == 200 })
	})

	t.Run("PostgreSQL stopped", func(t *testing.T) {
		pg.ctl(t, "stop")
		var a readyAnswer
		waitFor(t, 2*time.Minute, "/readyz to turn 503", func() bool { a = readyz(t, base); return a.code == 503 })
		t.Logf("/readyz while PostgreSQL is down: %d %s", a.code, a.reason)
		if !strings.HasPrefix(a.reason, "database: ") || a.checks["storage"] != "ok" {
			t.Errorf("got reason %q checks %v, want a database reason with storage ok", a.reason, a.checks)
		}
		pg.ctl(t, "start")
		waitFor(t, 2*time.Minute, "/readyz to turn 200 after PostgreSQL restart", func() bool { return readyz(t, base).code == 200 })
	})
}
