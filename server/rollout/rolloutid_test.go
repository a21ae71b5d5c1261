package rollout

import (
	"testing"

	"github.com/patchfleet/ota/server/textrule"
)

// TestNewRolloutIDsPassTheChosenIDRule: every id the server makes can be
// given back as a chosen id (a copy of a server-made id used to be
// refused as holding an identifier about one time in nine).
func TestNewRolloutIDsPassTheChosenIDRule(t *testing.T) {
	for range 2000 {
		id, err := NewRolloutID()
		if err != nil {
			t.Fatal(err)
		}
		if err := textrule.ValidateChosenID("id", id); err != nil || !textrule.ServerRolloutID.MatchString(id) {
			t.Fatalf("NewRolloutID made %q: %v; want the server's shape and a valid chosen id", id, err)
		}
	}
}
