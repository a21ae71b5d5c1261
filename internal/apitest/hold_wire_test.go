package apitest_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/patchfleet/ota/server/api/wire"
)

// TestHoldOneWireShape: a halt that the policies set reads the same,
// byte for byte, on the rollout, in its events and in its report. With
// a shape per answer its window read "1h" on the rollout and "1h0m0s"
// on the report.
func TestHoldOneWireShape(t *testing.T) {
	env, clk := failingFleetRelease(t)
	minResults := int64(50)
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, MinResults: &minResults, Reason: "privacy patch"})
	fleet := enrollFleet(t, env, 60, "PX-7", "7.2.0")
	install(t, clk, fleet, checkInAll(t, fleet), func(i int) bool { return i%5 == 0 }) // 20% fail
	evaluate(t, env)

	halt := func(what, path string) json.RawMessage {
		t.Helper()
		code, _, body := getReport(t, env, env.Token, path, false)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		var v struct {
			Halt json.RawMessage `json:"halt"`
		}
		if err := json.Unmarshal(body, &v); err != nil || v.Halt == nil {
			t.Fatalf("%s %s: no halt (%v)", what, body, err)
		}
		return v.Halt
	}
	onRollout := halt("rollout", "/rollouts/"+r.ID)
	onReport := halt("report", "/rollouts/"+r.ID+"/report")
	if !bytes.Equal(onRollout, onReport) {
		t.Errorf("the halt differs:\n rollout %s\n  report %s", onRollout, onReport)
	}
	if !bytes.Contains(onRollout, []byte(`"window":"1h"`)) {
		t.Errorf("halt %s, want its window written as 1h", onRollout)
	}

	code, _, body := getReport(t, env, env.Token, "/rollouts/"+r.ID+"/events", false)
	var evs []struct {
		Action string          `json:"action"`
		Hold   json.RawMessage `json:"hold"`
	}
	if err := json.Unmarshal(body, &evs); code != http.StatusOK || err != nil {
		t.Fatalf("events: %d %s (%v)", code, body, err)
	}
	found := false
	for _, ev := range evs {
		if ev.Action == "halt" {
			found = true
			if !bytes.Equal(ev.Hold, onRollout) {
				t.Errorf("the halt event's hold differs:\n  event %s\nrollout %s", ev.Hold, onRollout)
			}
		}
	}
	if !found {
		t.Errorf("events %s: no halt", body)
	}
}
