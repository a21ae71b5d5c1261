package web

import (
	"net/http"
	"strings"
	"testing"

	"github.com/patchfleet/ota/server/httperr/httperrtest"
	"github.com/patchfleet/ota/server/identity"
)

// A page answers the domain's errors with the status the API answers
// them with (httperrtest's list, which the API's test runs too): a
// manifests error the API answers 404 or 409 is no 500 page.
func TestPagesClassifyErrorsAsTheAPI(t *testing.T) {
	e := newEnv(t)
	for _, tc := range httperrtest.Cases() {
		t.Run(tc.Name, func(t *testing.T) {
			e.backend.repoErr = tc.Err
			rec := e.do(t, identity.RoleViewer, "GET", "/releases", nil)
			if rec.Code != tc.Status {
				t.Errorf("releases page with RepoStatus failing with %v: status %d, want %d", tc.Err, rec.Code, tc.Status)
			}
			if tc.Status == http.StatusInternalServerError && strings.Contains(rec.Body.String(), tc.Err.Error()) {
				t.Errorf("a server error's text is shown on the page:\n%s", rec.Body)
			}
		})
	}
}
