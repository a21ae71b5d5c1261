package api

import (
	"testing"

	"github.com/patchfleet/ota/server/httperr/httperrtest"
)

// The API answers the domain's errors with the status and code of
// httperrtest's list, which the pages' test (web) runs too.
func TestErrorsClassifyAsThePages(t *testing.T) {
	for _, tc := range httperrtest.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			st, body, logged := errorResponse(tc.Err)
			if st != tc.Status || body.Error.Code != tc.Code {
				t.Errorf("errorResponse(%v) = %d %s, want %d %s", tc.Err, st, body.Error.Code, tc.Status, tc.Code)
			}
			if want := st == 500; logged != want {
				t.Errorf("errorResponse(%v) logged %v, want %v", tc.Err, logged, want)
			}
		})
	}
}
