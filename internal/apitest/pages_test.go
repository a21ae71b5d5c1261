package apitest_test

import (
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

// An operator creates a rollout from the dashboard's form against the
// real server: it runs with the form's selector and policy, by the
// operator, and the audit log has the reason typed; holding a model and
// releasing it from the page reach the rollout. (Plain HTTP with a
// cookie jar: the form is a plain form; the browser test clicks others.)
func TestRolloutFromThePages(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 512), es...)
	pages := logInPages(t, env, "olga", identity.RoleOperator)
	get, post := pages.get, pages.post
	resp, body := get("/rollouts/new")
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || csrf == nil || !strings.Contains(body, `<option value="`+patchPath+`"`) {
		t.Fatalf("the form: %d, want 200 with a CSRF token and the published patch:\n%s", resp.StatusCode, body)
	}
	form := url.Values{"csrf": {csrf[1]}, "release": {patchPath}, "stages": {"10, 50, 100"}, "models": {"PX-7"},
		"max_failure_rate": {"3"}, "soak": {"2h"}, "reason": {"privacy incident CM-2026-001"}}
	resp, body = post("/rollouts", form)
	id := strings.TrimPrefix(resp.Request.URL.Path, "/rollouts/")
	if resp.StatusCode != http.StatusOK || id == resp.Request.URL.Path || !strings.Contains(body, "<strong>"+id+"</strong>") {
		t.Fatalf("create: %d at %s, want the new rollout's page:\n%s", resp.StatusCode, resp.Request.URL, body)
	}

	var r wire.Rollout
	if err := env.Do("GET", "/rollouts/"+id, nil, &r); err != nil {
		t.Fatal(err)
	}
	if r.State != "running" || r.Percent != 10 || !slices.Equal(r.Stages, []float64{10, 50, 100}) ||
		!slices.Equal(r.Selector.Models, []string{"PX-7"}) || r.Policy.MaxFailureRate != 0.03 || r.Policy.Soak != "2h" ||
		r.CreatedBy != "olga" {
		t.Errorf("the rollout: %+v, want running at 10%% for PX-7, failure rate 3%%, soak 2h, by olga", r)
	}
	var log []wire.AuditEntry
	if err := env.Do("GET", "/audit?object="+id, nil, &log); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(log, func(e wire.AuditEntry) bool {
		return e.Actor == "olga" && e.Reason == "privacy incident CM-2026-001"
	}) {
		t.Errorf("audit of %s: %+v, want olga's entries with the reason typed", id, log)
	}

	// Hold a model from the page, then release it.
	hold := url.Values{"csrf": {csrf[1]}, "reason": {"battery drain on PX-7"}}
	if resp, body := post("/rollouts/"+id+"/models/PX-7/hold", hold); resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/rollouts/"+id {
		t.Fatalf("hold PX-7: %d at %s:\n%s", resp.StatusCode, resp.Request.URL, body)
	}
	if err := env.Do("GET", "/rollouts/"+id, nil, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Holds) != 1 || r.Holds[0].Model != "PX-7" || r.Holds[0].Actor != "olga" || r.Holds[0].Reason != "battery drain on PX-7" {
		t.Errorf("holds after the page's hold: %+v, want PX-7 by olga with the reason", r.Holds)
	}
	hold.Set("reason", "fixed in 7.5.1")
	if resp, _ := post("/rollouts/"+id+"/models/PX-7/release_hold", hold); resp.StatusCode != http.StatusOK {
		t.Fatalf("release PX-7: %d", resp.StatusCode)
	}
	if err := env.Do("GET", "/rollouts/"+id, nil, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Holds) != 0 {
		t.Errorf("holds after the release: %+v, want none", r.Holds)
	}

	// The same form again without its CSRF token is refused.
	form.Del("csrf")
	if resp, _ := post("/rollouts", form); resp.StatusCode != http.StatusForbidden {
		t.Errorf("the form without its CSRF token: %d, want 403", resp.StatusCode)
	}
}
