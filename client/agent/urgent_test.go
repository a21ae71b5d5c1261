package agent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
)

// TestInstallerHearsUrgent: the installer is told an update is urgent
// when the rollout's deadline had passed at the offer, and not otherwise.
func TestInstallerHearsUrgent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline string
		want     bool
	}{
		{name: "deadline passed", deadline: time.Now().Add(-time.Minute).UTC().Format(time.RFC3339), want: true},
		{name: "no deadline", want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const path = "cloudmsg/CM-2026-001/update.zip"
			env := apitest.Start(t, apitest.Options{})
			es := apitest.NewEngineers(t, 1)
			env.Ceremony(t, es, 1)
			content := make([]byte, 4<<10)
			rand.Read(content)
			env.Publish(t, path, content, es...)
			var r wire.Rollout
			env.Widen(t, "POST", "/rollouts", wire.RolloutRequest{Release: path, Stages: []float64{100},
				Deadline: tc.deadline, Reason: "privacy patch"}, &r)

			cl, err := client.New(env.URL)
			if err != nil {
				t.Fatal(err)
			}
			var urgent []bool
			a, err := agent.New(agent.Config{Dir: t.TempDir(), Client: cl, Root: env.RootBytes(t, 1),
				Device: agent.Device{Model: "PX-7", Build: "7.2.1", Channel: "stable"},
				Installer: agent.InstallerFunc(func(_ context.Context, u *agent.Update) error {
					urgent = append(urgent, u.Urgent)
					return nil
				}),
				Backoff: func(int) time.Duration { return time.Millisecond },
				Logger:  slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20 && a.Status().Build != "7.5.0"; i++ {
				if _, err := a.Step(context.Background()); err != nil {
					var se *agent.StateError
					if errors.As(err, &se) {
						t.Fatal(err)
					}
				}
			}
			if len(urgent) != 1 || urgent[0] != tc.want {
				t.Fatalf("installs with urgent %v, want one with %v", urgent, tc.want)
			}
		})
	}
}
