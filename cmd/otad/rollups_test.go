package main

import (
	"database/sql"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
)

func TestRollupsCommands(t *testing.T) {
	c := newCLI(t)
	if out := c.mustRun("rollups", "verify"); out != "rollups agree with the rows\n" {
		t.Errorf("verify a fresh database: got %q", out)
	}
	// Two handsets enrolled as the server enrolls them: their changes
	// wait in the delta logs until a fold.
	db := c.db()
	now := time.Now().UTC()
	for _, id := range []string{"dev-a", "dev-b"} {
		d := &handsets.Device{ID: id, Model: "PX-7", Build: "7.2.0", Channel: "stable", InstalledPatches: []string{},
			CloudMessaging: handsets.MessagingAutoEnabled, EnrolledAt: now, LastSeen: now}
		if _, _, err := db.Devices().Enroll(t.Context(), d, "hash-"+id); err != nil {
			t.Fatal(err)
		}
	}
	if out := c.mustRun("rollups", "verify"); out != "rollups agree with the rows\n" {
		t.Errorf("verify with unfolded deltas: got %q", out)
	}
	out := c.mustRun("rollups", "fold")
	if !regexp.MustCompile(`^folded [1-9][0-9]* deltas into the rollups\n$`).MatchString(out) {
		t.Errorf("fold: got %q, want a count of at least 1", out)
	}
	if out := c.mustRun("rollups", "fold"); out != "folded 0 deltas into the rollups\n" {
		t.Errorf("fold again: got %q, want 0", out)
	}
	if out := c.mustRun("rollups", "verify"); out != "rollups agree with the rows\n" {
		t.Errorf("verify after a fold: got %q", out)
	}

	// A counter that disagrees with the devices it counts.
	raw, err := sql.Open("sqlite", filepath.Join(c.env["OTAD_DATA_DIR"], "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if res, err := raw.ExecContext(t.Context(), "UPDATE fleet_counts SET n = n + 1 WHERE model = 'PX-7'"); err != nil {
		t.Fatal(err)
	} else if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("corrupt fleet_counts: %d rows updated, want 1", n)
	}
	code, stdout, stderr := c.run("rollups", "verify")
	if code != exitFailed || !strings.Contains(stdout, "fleet_counts against devices: PX-7|") || !strings.Contains(stdout, "rollup 3, rows 2") ||
		!strings.Contains(stderr, "1 rollup disagreements with the rows") || !strings.Contains(stderr, "report it") {
		t.Errorf("verify a corrupted counter: exit %d, stdout %q, stderr %q; want 1 naming fleet_counts and what to do", code, stdout, stderr)
	}
}

func TestRollupsCommandsHelp(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{{"rollups", "--help"}, {"rollups", "verify", "--help"}, {"rollups", "fold", "--help"}} {
		if code, _, stderr := c.run(args...); code != exitOK || !strings.Contains(stderr, "Usage") {
			t.Errorf("otad %s: exit %d %q, want 0 and usage", strings.Join(args, " "), code, stderr)
		}
	}
	if code, _, _ := c.run("rollups", "rebuild"); code != exitConfig {
		t.Errorf("unknown rollups command: exit %d, want %d", code, exitConfig)
	}
}
