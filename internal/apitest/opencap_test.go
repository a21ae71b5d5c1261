package apitest_test

import (
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/rollout"
)

// rolloutLabel finds the rollout label of a series on /metrics.
var rolloutLabel = regexp.MustCompile(`rollout="([^"]*)"`)

// metricsRollouts reads /metrics: how many series carry a rollout label,
// and the distinct rollouts they name.
func metricsRollouts(t *testing.T, env *apitest.Env) (series int, rollouts map[string]bool) {
	t.Helper()
	resp, err := http.Get(env.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	rollouts = map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if m := rolloutLabel.FindStringSubmatch(line); m != nil && !strings.HasPrefix(line, "#") {
			series++
			rollouts[m[1]] = true
		}
	}
	return series, rollouts
}

// TestOpenRolloutsCapped is issue 13's probe of /metrics: 300 rollouts
// created at once made 3,111 series in a second. Now at most
// rollout.DefaultMaxOpenRollouts are not finished at once; the creates
// past it are 409 saying to complete or abort some, and the series stay
// bounded, also when the rollouts are aborted and made again.
func TestOpenRolloutsCapped(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	env.Publish(t, patchPath, randomBytes(t, 4096), es...)

	const perRollout = 5 + 3 + 2 + 3 + 8 // state gauges, percent/held/halted, auto-halts, offer kinds, report states
	create := func(n int) (ids []string) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		work := make(chan struct{})
		for range 8 {
			wg.Go(func() {
				for range work {
					var r struct{ ID string }
					err := env.Do("POST", "/rollouts", map[string]any{"release": patchPath, "stages": []float64{1, 10}, "reason": "probe"}, &r)
					mu.Lock()
					if err == nil {
						ids = append(ids, r.ID)
					} else if ae := new(client.Error); !errors.As(err, &ae) || ae.Status != http.StatusConflict ||
						!strings.Contains(ae.Message, "complete or abort some") {
						t.Errorf("create: %v, want 201 or 409 saying to complete or abort some", err)
					}
					mu.Unlock()
				}
			})
		}
		for range n {
			work <- struct{}{}
		}
		close(work)
		wg.Wait()
		return ids
	}
	ids := create(300)
	if len(ids) != rollout.DefaultMaxOpenRollouts {
		t.Fatalf("300 creates at once: %d created, want %d", len(ids), rollout.DefaultMaxOpenRollouts)
	}
	series, rollouts := metricsRollouts(t, env)
	if len(rollouts) != rollout.DefaultMaxOpenRollouts || series > rollout.DefaultMaxOpenRollouts*perRollout {
		t.Fatalf("/metrics: %d series of %d rollouts, want %d rollouts and at most %d series",
			series, len(rollouts), rollout.DefaultMaxOpenRollouts, rollout.DefaultMaxOpenRollouts*perRollout)
	}

	// Aborting makes room; rollouts aborted and made again, 300 more
	// creates, still leave at most twice the cap with series.
	for _, id := range ids {
		if err := env.Do("POST", "/rollouts/"+id+"/abort", map[string]any{"reason": "probe"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if again := create(300); len(again) != rollout.DefaultMaxOpenRollouts {
		t.Fatalf("300 creates after the aborts: %d created, want %d", len(again), rollout.DefaultMaxOpenRollouts)
	}
	series, rollouts = metricsRollouts(t, env)
	if max := 2 * rollout.DefaultMaxOpenRollouts; len(rollouts) > max || series > max*perRollout {
		t.Fatalf("/metrics after aborts: %d series of %d rollouts, want at most %d rollouts and %d series",
			series, len(rollouts), max, max*perRollout)
	}
}
