package rollout_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/rollout"
)

// A hold reads back as it was written, its window as a client would
// type it.
func TestHoldJSON(t *testing.T) {
	at := time.Date(2026, 12, 7, 5, 48, 1, 0, time.FixedZone("CET", 3600))
	for _, tc := range []struct {
		name string
		h    rollout.Hold
		want string
	}{
		{"policy halt", rollout.Hold{Actor: audit.SystemActor, Reason: "too many failures", Installed: 48, Failed: 12,
			Rate: 0.2, MaxRate: 0.05, Window: 6 * time.Hour, At: at},
			`{"actor":"system","reason":"too many failures","installed":48,"failed":12,"rate":0.2,"max_rate":0.05,"window":"6h","at":"2026-12-07T04:48:01Z"}`},
		{"operator's model hold", rollout.Hold{Model: "PX-8", Actor: "ops", Reason: "E_VERIFY", At: at.UTC()},
			`{"model":"PX-8","actor":"ops","reason":"E_VERIFY","installed":0,"failed":0,"rate":0,"max_rate":0,"at":"2026-12-07T04:48:01Z"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.h)
			if err != nil || string(b) != tc.want {
				t.Fatalf("Marshal = %s (%v), want %s", b, err, tc.want)
			}
			var back rollout.Hold
			if err := json.Unmarshal(b, &back); err != nil || back.Window != tc.h.Window || !back.At.Equal(tc.h.At) ||
				back.Model != tc.h.Model || back.Failed != tc.h.Failed {
				t.Errorf("read back %+v (%v), want %+v", back, err, tc.h)
			}
		})
	}
}
