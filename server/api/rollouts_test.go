package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

const (
	rolloutTarget = "cm-privacy/2026.1/update.zip"
	noBuildTarget = "cm-privacy/2025.9/update.zip"
)

// rolloutEnv is a server with two published releases, one stating the
// build it installs and one not, and a token of each role.
type rolloutEnv struct {
	*apitest.Env
	engineer, operator, viewer string // "Bearer ..." headers
}

func startRolloutEnv(t *testing.T) *rolloutEnv {
	t.Helper()
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	custom := apitest.PatchCustom()
	custom.InstallsBuild = "7.5.0"
	env.MustSign(t, env.DraftRelease(t, rolloutTarget, []byte("the privacy patch"), custom).ID, es[0])
	old := apitest.PatchCustom()
	old.InstallsBuild = ""
	env.MustSign(t, env.DraftRelease(t, noBuildTarget, []byte("an older patch"), old).ID, es[0])
	re := &rolloutEnv{Env: env, engineer: "Bearer " + env.Token}
	tokens := env.App.Tokens
	for _, tok := range []struct {
		name, role string
		dst        *string
	}{{"ops", identity.RoleOperator, &re.operator}, {"dashboard", identity.RoleViewer, &re.viewer}} {
		_, secret, err := tokens.Create(context.Background(), tok.name, tok.role)
		if err != nil {
			t.Fatal(err)
		}
		*tok.dst = "Bearer " + secret
	}
	return re
}

// call sends a request on the contract; body "" sends none.
func (e *rolloutEnv) call(t *testing.T, auth, method, path, body string) (int, []byte) {
	t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
	}
	rec := send(t, e.Env, false, method, api.AdminPrefix+path, auth, ct, body)
	return rec.Code, rec.Body.Bytes()
}

// rollout sends a request that must answer want with a rollout.
func (e *rolloutEnv) rollout(t *testing.T, auth, method, path, body string, want int) *wire.Rollout {
	t.Helper()
	code, b := e.call(t, auth, method, path, body)
	var r wire.Rollout
	if code != want || json.Unmarshal(b, &r) != nil {
		t.Fatalf("%s %s: got %d %s, want %d with a rollout", method, path, code, b, want)
	}
	return &r
}

func (e *rolloutEnv) events(t *testing.T, path string) []wire.RolloutEvent {
	t.Helper()
	code, b := e.call(t, e.viewer, "GET", path, "")
	var evs []wire.RolloutEvent
	if code != http.StatusOK || json.Unmarshal(b, &evs) != nil {
		t.Fatalf("GET %s: got %d %s, want 200 with events", path, code, b)
	}
	return evs
}

func summary(evs []wire.RolloutEvent) []string {
	out := []string{}
	for _, ev := range evs {
		out = append(out, ev.Actor+":"+ev.Action)
	}
	return out
}

// TestRolloutLifecycle drives a rollout through the admin API as an
// operator would, then reads its audit log.
func TestRolloutLifecycle(t *testing.T) {
	env := startRolloutEnv(t)
	full := `{"id":"ro-privacy","release":"` + rolloutTarget + `","stages":[1,10,50,100],"models":["PX-7"],
		"channels":["stable"],"regions":["DE","FR"],"build_min":"7.1.0","build_max":"7.4.0","max_failure_rate":0.1,
		"min_results":20,"failure_window":"30m","soak":"6h","retries":2,"backoff":["30m","2h"],
		"max_offers_per_minute":500,"window":"01:00-05:00","salt":"s1","reason":"privacy incident"}`
	r := env.rollout(t, env.operator, "POST", "/rollouts", full, http.StatusCreated)
	want := &wire.Rollout{ID: "ro-privacy", State: "running", Stage: 0, Percent: 1, Stages: []float64{1, 10, 50, 100},
		Release: wire.RolloutRelease{Target: rolloutTarget, PatchID: "CM-2026-001", InstallsBuild: "7.5.0",
			Models: []string{"PX-7"}, BuildMin: "7.0.0", BuildMax: "7.4.9"},
		Selector: wire.RolloutSelector{Models: []string{"PX-7"}, Channels: []string{"stable"}, Regions: []string{"DE", "FR"},
			BuildMin: "7.1.0", BuildMax: "7.4.0"},
		Policy: wire.RolloutPolicy{MaxFailureRate: 0.1, MinResults: 20, FailureWindow: "30m", Soak: "6h", Retries: 2,
			Backoff: []string{"30m", "2h"}, MaxOffersPerMinute: 500, Window: "01:00-05:00"},
		Salt: "s1", Holds: []wire.RolloutHold{}, CreatedBy: "ops", Version: 1}
	got := *r
	got.CreatedAt, got.StartedAt, got.StageStartedAt = time.Time{}, nil, nil
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("created\n%+v\nwant\n%+v", &got, want)
	}
	if r.StartedAt == nil || r.StageStartedAt == nil || r.CreatedAt.IsZero() {
		t.Errorf("created without times: %+v", r)
	}

	// Defaults for all the policy omits; a release engineer may create
	// too. A second rollout of the patch takes the first one's salt, so
	// that their cohorts nest.
	d := env.rollout(t, env.engineer, "POST", "/rollouts", `{"release":"`+rolloutTarget+`","stages":[5,100],"draft":true}`, http.StatusCreated)
	wantPolicy := wire.RolloutPolicy{MaxFailureRate: 0.05, MinResults: 50, FailureWindow: "1h", Soak: "0s", Retries: 3,
		Backoff: []string{"1h", "4h", "24h"}, MaxOffersPerMinute: 0, Window: ""}
	if d.State != "draft" || !reflect.DeepEqual(d.Policy, wantPolicy) || !strings.HasPrefix(d.ID, "ro-") || d.Salt != "s1" {
		t.Errorf("draft with defaults: %+v, want a draft, a generated id, the patch's salt s1 and policy %+v", d, wantPolicy)
	}

	id := "/rollouts/ro-privacy"
	steps := []struct {
		name, path, body string
		wantState        string
		wantPercent      float64
		wantHolds        int
		// fourEyes: the operator's request answers 202 and the release
		// engineer's approval applies it.
		fourEyes bool
	}{
		{"pause", id + "/pause", `{"reason":"dashboards look off"}`, "paused", 1, 0, false},
		{"resume", id + "/resume", `{"reason":"false alarm"}`, "running", 1, 0, false},
		{"advance to the next stage", id + "/advance", `{"reason":"healthy"}`, "running", 10, 0, false},
		{"advance to a percent", id + "/advance", `{"reason":"faster","percent":75}`, "running", 75, 0, true},
		{"hold a model", id + "/holds", `{"model":"PX-7","reason":"boot loops"}`, "running", 75, 1, false},
		{"release the hold", id + "/holds/PX-7/release", `{"reason":"fixed in the build"}`, "running", 75, 0, false},
		{"advance to the last stage", id + "/advance", `{"reason":"all"}`, "running", 100, 0, true},
		{"complete", id + "/complete", `{"reason":"done"}`, "completed", 100, 0, false},
	}
	version := r.Version
	for _, st := range steps {
		var r *wire.Rollout
		wantVersion := version + 1
		if st.fourEyes {
			a := env.approval(t, env.operator, st.path, st.body)
			r = env.approve(t, env.engineer, "ro-privacy", a.ID, "second pair of eyes")
			wantVersion++ // the request's event, then the change
		} else {
			r = env.rollout(t, env.operator, "POST", st.path, st.body, http.StatusOK)
		}
		if r.State != st.wantState || r.Percent != st.wantPercent || len(r.Holds) != st.wantHolds || r.Version != wantVersion {
			t.Fatalf("%s: %s at %g%% with %d holds, version %d; want %s at %g%% with %d holds, version %d",
				st.name, r.State, r.Percent, len(r.Holds), r.Version, st.wantState, st.wantPercent, st.wantHolds, wantVersion)
		}
		version = r.Version
	}
	if r := env.rollout(t, env.viewer, "GET", id, "", http.StatusOK); r.State != "completed" || r.EndedAt == nil ||
		!reflect.DeepEqual(r.Stages, []float64{1, 10, 50, 75, 100}) {
		t.Errorf("GET after complete: %s, stages %v, ended %v; want completed with 75 added, an end time", r.State, r.Stages, r.EndedAt)
	}
	env.rollout(t, env.operator, "POST", id+"/abort", `{"reason":"superseded"}`, http.StatusOK)

	// Lists, by state.
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"ro-privacy", d.ID}},
		{"?state=draft", []string{d.ID}},
		{"?state=aborted&state=draft", []string{"ro-privacy", d.ID}},
		{"?state=running", []string{}},
	} {
		code, b := env.call(t, env.viewer, "GET", "/rollouts"+tc.query, "")
		var list []wire.Rollout
		if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
			t.Fatalf("list %s: %d %s", tc.query, code, b)
		}
		ids := []string{}
		for _, r := range list {
			ids = append(ids, r.ID)
		}
		if !reflect.DeepEqual(ids, tc.want) {
			t.Errorf("list %s: %v, want %v", tc.query, ids, tc.want)
		}
	}

	// The rollout's events, oldest first; the audit log, newest first.
	evs := env.events(t, id+"/events")
	wantLog := []string{"ops:create", "ops:start", "ops:pause", "ops:resume", "ops:advance",
		"ops:approval_requested", "test-engineer:advance", "ops:hold", "ops:release_hold",
		"ops:approval_requested", "test-engineer:advance", "ops:complete", "ops:abort"}
	if !reflect.DeepEqual(summary(evs), wantLog) {
		t.Errorf("events %v, want %v", summary(evs), wantLog)
	}
	adv := evs[6]
	if adv.Reason != "second pair of eyes" || adv.FromState != "running" || adv.ToState != "running" || adv.FromPercent != 10 ||
		adv.ToPercent != 75 || !strings.Contains(adv.Detail, "requested by ops (faster)") {
		t.Errorf("approved advance event %+v, want running 10%% -> 75%% naming the requester and the approver", adv)
	}
	if rel := evs[8]; rel.Model != "PX-7" || rel.Hold == nil || rel.Hold.Reason != "boot loops" || !strings.Contains(rel.Detail, "boot loops") {
		t.Errorf("release_hold event %+v, want the released hold of PX-7 and its reason", rel)
	}
	if last2 := env.events(t, id+"/events?limit=2"); !reflect.DeepEqual(summary(last2), wantLog[len(wantLog)-2:]) {
		t.Errorf("events?limit=2: %v, want the last two", summary(last2))
	}
	all := env.audit(t, "?action=rollout.")
	if len(all) != len(wantLog)+1 || all[0].Action != "rollout.abort" || all[len(all)-1].Action != "rollout.create" {
		t.Errorf("audit log %v, want %d rollout entries, newest first", auditSummary(all), len(wantLog)+1)
	}
	since := url.QueryEscape(evs[4].At.Format(time.RFC3339Nano))
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?actor=test-engineer&action=rollout.", []string{"test-engineer:rollout.advance", "test-engineer:rollout.advance", "test-engineer:rollout.create"}},
		{"?object=ro-privacy&action=rollout.advance", []string{"test-engineer:rollout.advance", "test-engineer:rollout.advance", "ops:rollout.advance"}},
		{"?object=ro-privacy&action=rollout.advance&limit=1", []string{"test-engineer:rollout.advance"}},
		{"?object=ro-privacy&since=" + since + "&action=rollout.advance", []string{"test-engineer:rollout.advance", "test-engineer:rollout.advance", "ops:rollout.advance"}},
		{"?object=ro-privacy&until=" + since, []string{"ops:rollout.resume", "ops:rollout.pause", "ops:rollout.start", "ops:rollout.create"}},
	} {
		if got := auditSummary(env.audit(t, tc.query)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("audit %s: %v, want %v", tc.query, got, tc.want)
		}
	}
}

// approval sends a widening that must wait for a second person: 202
// with a pending approval.
func (e *rolloutEnv) approval(t *testing.T, auth, path, body string) *wire.Approval {
	t.Helper()
	code, b := e.call(t, auth, "POST", path, body)
	var a wire.Approval
	if code != http.StatusAccepted || json.Unmarshal(b, &a) != nil || a.State != "pending" {
		t.Fatalf("POST %s: got %d %s, want 202 with a pending approval", path, code, b)
	}
	return &a
}

// approve approves an approval, which must succeed, and returns the
// rollout after the change.
func (e *rolloutEnv) approve(t *testing.T, auth, rolloutID, approvalID, reason string) *wire.Rollout {
	t.Helper()
	path := "/rollouts/" + rolloutID + "/approvals/" + approvalID + "/approve"
	code, b := e.call(t, auth, "POST", path, `{"reason":"`+reason+`"}`)
	var d wire.ApprovalDecision
	if code != http.StatusOK || json.Unmarshal(b, &d) != nil || d.Rollout == nil || d.Approval.State != "approved" {
		t.Fatalf("POST %s: got %d %s, want 200 with the approved approval and the rollout", path, code, b)
	}
	return d.Rollout
}

func (e *rolloutEnv) audit(t *testing.T, query string) []wire.AuditEntry {
	t.Helper()
	code, b := e.call(t, e.viewer, "GET", "/audit"+query, "")
	var es []wire.AuditEntry
	if code != http.StatusOK || json.Unmarshal(b, &es) != nil {
		t.Fatalf("GET /audit%s: got %d %s, want 200 with entries", query, code, b)
	}
	return es
}

func auditSummary(es []wire.AuditEntry) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.Actor+":"+e.Action)
	}
	return out
}

// TestRolloutRefusals: each bad request gets the status that says what
// is wrong, and 400s name the field.
func TestRolloutRefusals(t *testing.T) {
	env := startRolloutEnv(t)
	env.rollout(t, env.operator, "POST", "/rollouts", `{"id":"ro-1","release":"`+rolloutTarget+`","stages":[10,50]}`, http.StatusCreated)
	env.rollout(t, env.operator, "POST", "/rollouts/ro-1/pause", `{"reason":"wait"}`, http.StatusOK)
	create := func(fields string) string {
		return `{"release":"` + rolloutTarget + `","stages":[10,50]` + fields + `}`
	}
	tests := []struct {
		name, auth, method, path, body string
		off                            bool // breaks the contract on purpose
		wantStatus                     int
		wantCode, wantField, wantMsg   string
	}{
		{name: "unpublished release", method: "POST", path: "/rollouts",
			body: `{"release":"cm-privacy/2027.1/update.zip","stages":[1]}`, wantStatus: 400, wantField: "release", wantMsg: "not a published target"},
		{name: "release without installs_build", method: "POST", path: "/rollouts",
			body: `{"release":"` + noBuildTarget + `","stages":[1]}`, wantStatus: 400, wantField: "release.installs_build", wantMsg: "--installs-build"},
		{name: "stages not increasing", method: "POST", path: "/rollouts", body: `{"release":"` + rolloutTarget + `","stages":[10,5]}`,
			wantStatus: 400, wantField: "stages[1]"},
		{name: "soak not a duration", method: "POST", path: "/rollouts", body: create(`,"soak":"6x"`), wantStatus: 400, wantField: "soak"},
		{name: "backoff not a duration", method: "POST", path: "/rollouts", body: create(`,"backoff":["1h","2y"]`), wantStatus: 400, wantField: "backoff[1]"},
		{name: "backoff too short", method: "POST", path: "/rollouts", body: create(`,"backoff":["1h","10s"]`), wantStatus: 400, wantField: "backoff[1]"},
		{name: "window", method: "POST", path: "/rollouts", body: create(`,"window":"25:00-26:00"`), wantStatus: 400, wantField: "window"},
		{name: "failure rate as a percent", method: "POST", path: "/rollouts", body: create(`,"max_failure_rate":5`), off: true, wantStatus: 400, wantField: "max_failure_rate"},
		{name: "build_min at installs_build", method: "POST", path: "/rollouts", body: create(`,"build_min":"7.5.0"`), wantStatus: 400, wantField: "build_min"},
		{name: "unknown field", method: "POST", path: "/rollouts", body: create(`,"percent":5`), off: true, wantStatus: 400, wantField: "percent"},
		{name: "id taken", method: "POST", path: "/rollouts", body: create(`,"id":"ro-1"`), wantStatus: 409, wantCode: "conflict"},
		{name: "viewer may not create", auth: "viewer", method: "POST", path: "/rollouts", body: create(""), wantStatus: 403, wantCode: "forbidden", wantMsg: "lacks permission rollouts:change (roles with it: operator, release-engineer, admin)"},
		{name: "viewer may not pause", auth: "viewer", method: "POST", path: "/rollouts/ro-1/pause", body: `{"reason":"x"}`, wantStatus: 403, wantCode: "forbidden"},
		{name: "pause a paused rollout", method: "POST", path: "/rollouts/ro-1/pause", body: `{"reason":"x"}`, wantStatus: 409, wantCode: "conflict", wantMsg: "cannot pause a paused rollout"},
		{name: "blank reason", method: "POST", path: "/rollouts/ro-1/resume", body: `{"reason":" "}`, wantStatus: 400, wantField: "reason"},
		{name: "no reason", method: "POST", path: "/rollouts/ro-1/resume", body: `{}`, off: true, wantStatus: 400, wantField: "reason"},
		{name: "advance below the current percent", method: "POST", path: "/rollouts/ro-1/advance", body: `{"reason":"x","percent":5}`, wantStatus: 400, wantField: "percent"},
		{name: "percent on resume", method: "POST", path: "/rollouts/ro-1/resume", body: `{"reason":"x","percent":50}`, off: true, wantStatus: 400, wantField: "percent"},
		{name: "hold a bad model", method: "POST", path: "/rollouts/ro-1/holds", body: `{"model":"PX 7","reason":"x"}`, off: true, wantStatus: 400, wantField: "model"},
		{name: "release a hold not held", method: "POST", path: "/rollouts/ro-1/holds/PX-7/release", body: `{"reason":"x"}`, wantStatus: 404, wantCode: "not_found"},
		{name: "unknown rollout", method: "GET", path: "/rollouts/ro-nosuch", wantStatus: 404, wantCode: "not_found"},
		{name: "pause an unknown rollout", method: "POST", path: "/rollouts/ro-nosuch/pause", body: `{"reason":"x"}`, wantStatus: 404, wantCode: "not_found"},
		{name: "events of an unknown rollout", method: "GET", path: "/rollouts/ro-nosuch/events", wantStatus: 404, wantCode: "not_found"},
		{name: "unknown state", method: "GET", path: "/rollouts?state=halted", off: true, wantStatus: 400, wantField: "state"},
		{name: "audit limit too high", method: "GET", path: "/audit?limit=5000", off: true, wantStatus: 400, wantField: "limit"},
		{name: "audit since not a time", method: "GET", path: "/audit?since=yesterday", off: true, wantStatus: 400, wantField: "since"},
		{name: "audit before not a seq", method: "GET", path: "/audit?before=0", off: true, wantStatus: 400, wantField: "before"},
		{name: "events limit zero", method: "GET", path: "/rollouts/ro-1/events?limit=0", off: true, wantStatus: 400, wantField: "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auth := env.operator
			if tc.auth == "viewer" {
				auth = env.viewer
			}
			ct := ""
			if tc.body != "" {
				ct = "application/json"
			}
			rec := send(t, env.Env, tc.off, tc.method, api.AdminPrefix+tc.path, auth, ct, tc.body)
			e := errorOf(t, rec)
			code := tc.wantCode
			if code == "" {
				code = "invalid"
			}
			if rec.Code != tc.wantStatus || e.Code != code || e.Field != tc.wantField || !strings.Contains(e.Message, tc.wantMsg) {
				t.Errorf("got %d %+v, want %d %s field %q message containing %q", rec.Code, e, tc.wantStatus, code, tc.wantField, tc.wantMsg)
			}
		})
	}
	// Nothing refused changed the rollout or logged an event.
	if r := env.rollout(t, env.viewer, "GET", "/rollouts/ro-1", "", http.StatusOK); r.State != "paused" || r.Version != 2 {
		t.Errorf("after the refusals: %s version %d, want paused version 2", r.State, r.Version)
	}
	if es := env.audit(t, "?action=rollout."); len(es) != 3 {
		t.Errorf("audit log after the refusals: %v, want create, start, pause", auditSummary(es))
	}
}
