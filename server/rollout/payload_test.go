package rollout

import (
	"testing"

	"github.com/patchfleet/ota/server/handsets"
)

func TestChoosePayload(t *testing.T) {
	full := Payload{Target: "u.zip", Bytes: 1000, FullBytes: 1000}
	incs := map[string]Payload{"7.4.1": {Target: "u.from-7.4.1.zip", Bytes: 120}}
	lookup := func(b string) (Payload, bool) { p, ok := incs[b]; return p, ok }
	for _, tc := range []struct {
		name  string
		build string
		prev  *handsets.DeviceRollout
		want  Payload
	}{
		{"first offer on a build with an incremental", "7.4.1", nil,
			Payload{Target: "u.from-7.4.1.zip", FromBuild: "7.4.1", Bytes: 120, FullBytes: 1000}},
		{"a build without one", "7.4.0", nil, full},
		{"retry after another failure", "7.4.1", &handsets.DeviceRollout{State: handsets.StateFailed},
			Payload{Target: "u.from-7.4.1.zip", FromBuild: "7.4.1", Bytes: 120, FullBytes: 1000}},
		{"retry after the incremental did not apply", "7.4.1", &handsets.DeviceRollout{State: handsets.StateFailed, FullOnly: true}, full},
	} {
		if got := ChoosePayload(full, tc.build, tc.prev, lookup); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
