package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests/s3store"
)

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
	pg := &pgServer{script: script, dir: filepath.Join(dir, "pg"), port: closedPort(tb)}
	tb.Cleanup(func() {
		pg.ctl(tb, "stop")
		os.RemoveAll(dir)
	})
	pg.ctl(tb, "init")
	pg.ctl(tb, "start")
	return pg
}

func (pg *pgServer) ctl(tb testing.TB, cmd string) {
	tb.Helper()
	args := []string{cmd, pg.dir}
	if cmd == "start" {
		args = append(args, fmt.Sprint(pg.port))
	}
	if out, err := exec.Command(pg.script, args...).CombinedOutput(); err != nil {
		tb.Fatalf("pg-cluster.sh %s: %v\n%s", cmd, err, out)
	}
}

func (pg *pgServer) dsn() string {
	return fmt.Sprintf("postgres://ota@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

// minioServer is a private MinIO this test may stop and start.
type minioServer struct {
	bin, dir, user, pass string
	port                 int
	cmd                  *exec.Cmd
}

func startMinIO(tb testing.TB) *minioServer {
	tb.Helper()
	bin := os.Getenv("OTA_TEST_MINIO_BIN")
	if bin == "" || os.Getenv("OTA_TEST_S3_ENDPOINT") == "" {
		tb.Skip("OTA_TEST_MINIO_BIN not set; run ./scripts/test.sh to run the MinIO tests")
	}
	m := &minioServer{bin: bin, dir: tb.TempDir(), user: "outage", pass: "outage-secret-123", port: closedPort(tb)}
	tb.Cleanup(m.stop)
	m.start(tb)
	return m
}

func (m *minioServer) start(tb testing.TB) {
	tb.Helper()
	m.cmd = exec.Command(m.bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", m.port), m.dir)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.user, "MINIO_ROOT_PASSWORD="+m.pass,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	if err := m.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	live := fmt.Sprintf("http://127.0.0.1:%d/minio/health/live", m.port)
	waitFor(tb, 30*time.Second, "MinIO to become live", func() bool {
		resp, err := http.Get(live)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (m *minioServer) stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
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
		waitFor(t, 15*time.Second, "/readyz to turn 503", func() bool { a = readyz(t, base); return a.code == 503 })
		t.Logf("/readyz while MinIO is down: %d %s", a.code, a.reason)
		if !strings.HasPrefix(a.reason, "storage: ") || a.checks["database"] != "ok" {
			t.Errorf("got reason %q checks %v, want a storage reason with the database ok", a.reason, a.checks)
		}
		minio.start(t)
		waitFor(t, 30*time.Second, "/readyz to turn 200 after MinIO restart", func() bool { return readyz(t, base).code == 200 })
	})

	t.Run("PostgreSQL stopped", func(t *testing.T) {
		pg.ctl(t, "stop")
		var a readyAnswer
		waitFor(t, 15*time.Second, "/readyz to turn 503", func() bool { a = readyz(t, base); return a.code == 503 })
		t.Logf("/readyz while PostgreSQL is down: %d %s", a.code, a.reason)
		if !strings.HasPrefix(a.reason, "database: ") || a.checks["storage"] != "ok" {
			t.Errorf("got reason %q checks %v, want a database reason with storage ok", a.reason, a.checks)
		}
		pg.ctl(t, "start")
		waitFor(t, 30*time.Second, "/readyz to turn 200 after PostgreSQL restart", func() bool { return readyz(t, base).code == 200 })
	})
}
