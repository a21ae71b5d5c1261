package httperr_test

import (
	"testing"

	"github.com/patchfleet/ota/server/httperr"
	"github.com/patchfleet/ota/server/httperr/httperrtest"
)

func TestClassify(t *testing.T) {
	for _, tc := range httperrtest.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			if st, code := httperr.Classify(tc.Err); st != tc.Status || code != tc.Code {
				t.Errorf("Classify(%v) = %d %s, want %d %s", tc.Err, st, code, tc.Status, tc.Code)
			}
		})
	}
}
