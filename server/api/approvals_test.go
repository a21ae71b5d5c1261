package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

// TestFourEyes: an operator's advance past 50% waits for a second
// operator; the requester and a viewer cannot approve it; the second
// operator's approval applies it, and the events and the audit log name
// both.
func TestFourEyes(t *testing.T) {
	env := startRolloutEnv(t)
	_, secret, err := env.App.Tokens.Create(t.Context(), "ops-b", identity.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	opsB := "Bearer " + secret
	env.rollout(t, env.operator, "POST", "/rollouts", `{"id":"ro-4e","release":"`+rolloutTarget+`","stages":[10,50,100]}`, http.StatusCreated)
	// At or below 50% needs nobody else.
	if r := env.rollout(t, env.operator, "POST", "/rollouts/ro-4e/advance", `{"reason":"healthy"}`, http.StatusOK); r.Percent != 50 {
		t.Fatalf("advance to 50%%: at %g%%", r.Percent)
	}
	a := env.approval(t, env.operator, "/rollouts/ro-4e/advance", `{"reason":"all of it","percent":100}`)
	if a.RequestedBy != "ops" || a.ToPercent != 100 || a.Action != "advance" {
		t.Errorf("approval %+v, want ops asking to advance to 100%%", a)
	}
	if r := env.rollout(t, env.viewer, "GET", "/rollouts/ro-4e", "", http.StatusOK); r.Percent != 50 {
		t.Fatalf("the request widened the rollout: at %g%%", r.Percent)
	}
	approvePath := "/rollouts/ro-4e/approvals/" + a.ID + "/approve"
	for _, tc := range []struct {
		name, auth, wantMsg string
	}{
		{"the requester", env.operator, "a second person must approve"},
		{"a viewer", env.viewer, "lacks permission rollouts:approve"},
	} {
		code, b := env.call(t, tc.auth, "POST", approvePath, `{"reason":"ok"}`)
		if code != http.StatusForbidden || !strings.Contains(string(b), tc.wantMsg) {
			t.Errorf("%s approving: %d %s, want 403 saying %q", tc.name, code, b, tc.wantMsg)
		}
	}
	r := env.approve(t, opsB, "ro-4e", a.ID, "checked the dashboards")
	if r.Percent != 100 {
		t.Errorf("after the approval: at %g%%, want 100", r.Percent)
	}
	code, b := env.call(t, opsB, "POST", approvePath, `{"reason":"again"}`)
	if code != http.StatusConflict {
		t.Errorf("approving twice: %d %s, want 409", code, b)
	}

	code, b = env.call(t, env.viewer, "GET", "/rollouts/ro-4e/approvals", "")
	var list []wire.Approval
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil || len(list) != 1 ||
		list[0].State != "approved" || list[0].DecidedBy != "ops-b" || list[0].DecisionReason != "checked the dashboards" {
		t.Errorf("approvals: %d %s, want the one approved by ops-b", code, b)
	}
	es := env.audit(t, "?object=ro-4e&action=rollout.")
	if got := auditSummary(es); len(got) < 2 || got[0] != "ops-b:rollout.advance" || got[1] != "ops:rollout.approval_requested" {
		t.Fatalf("audit log %v, want ops-b's advance after ops's request", got)
	}
	if !strings.Contains(es[0].Detail, "requested by ops") || !strings.Contains(es[0].Detail, "approved by ops-b") {
		t.Errorf("the approved advance's detail %q does not name both", es[0].Detail)
	}
}

// TestFourEyesRejectAndCancel: a rejection closes a request; a newer
// request cancels the older one, and so does a pause; a start at 100%
// waits too.
func TestFourEyesRejectAndCancel(t *testing.T) {
	env := startRolloutEnv(t)
	env.rollout(t, env.operator, "POST", "/rollouts", `{"id":"ro-rc","release":"`+rolloutTarget+`","stages":[50,100]}`, http.StatusCreated)
	first := env.approval(t, env.operator, "/rollouts/ro-rc/advance", `{"reason":"more"}`)
	code, b := env.call(t, env.engineer, "POST", "/rollouts/ro-rc/approvals/"+first.ID+"/reject", `{"reason":"not yet"}`)
	var d wire.ApprovalDecision
	if code != http.StatusOK || json.Unmarshal(b, &d) != nil || d.Approval.State != "rejected" || d.Approval.DecidedBy != "test-engineer" {
		t.Fatalf("reject: %d %s", code, b)
	}
	second := env.approval(t, env.operator, "/rollouts/ro-rc/advance", `{"reason":"more, now"}`)
	third := env.approval(t, env.operator, "/rollouts/ro-rc/advance", `{"reason":"more, really"}`)
	env.rollout(t, env.operator, "POST", "/rollouts/ro-rc/pause", `{"reason":"wait"}`, http.StatusOK)
	states := map[string]string{}
	code, b = env.call(t, env.viewer, "GET", "/rollouts/ro-rc/approvals", "")
	var list []wire.Approval
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
		t.Fatalf("approvals: %d %s", code, b)
	}
	for _, a := range list {
		states[a.ID] = a.State
	}
	if states[first.ID] != "rejected" || states[second.ID] != "cancelled" || states[third.ID] != "cancelled" {
		t.Errorf("states %v, want rejected, cancelled (superseded), cancelled (paused)", states)
	}
	code, b = env.call(t, env.engineer, "POST", "/rollouts/ro-rc/approvals/"+third.ID+"/approve", `{"reason":"late"}`)
	if code != http.StatusConflict {
		t.Errorf("approving a cancelled request: %d %s, want 409", code, b)
	}

	// A start at 100% waits as well, created straight away or from a draft.
	code, b = env.call(t, env.operator, "POST", "/rollouts", `{"id":"ro-all","release":"`+rolloutTarget+`","stages":[100]}`)
	var start wire.Approval
	if code != http.StatusAccepted || json.Unmarshal(b, &start) != nil || start.Action != "start" || start.ToPercent != 100 {
		t.Fatalf("create at 100%%: %d %s, want 202 with a start approval", code, b)
	}
	if r := env.rollout(t, env.viewer, "GET", "/rollouts/ro-all", "", http.StatusOK); r.State != "draft" {
		t.Errorf("created at 100%%: %s, want a draft until approved", r.State)
	}
	if r := env.approve(t, env.engineer, "ro-all", start.ID, "yes"); r.State != "running" || r.Percent != 100 {
		t.Errorf("approved start: %s at %g%%, want running at 100%%", r.State, r.Percent)
	}
}

// TestUsersAndTokensAPI: an admin creates users and changes roles; an
// admin cannot lock themself out; a user mints and revokes their own
// tokens and cannot see or revoke another's; every change is audited
// with the X-Reason.
func TestUsersAndTokensAPI(t *testing.T) {
	env := startRolloutEnv(t)
	u, err := env.App.Users.Create(t.Context(), "root", identity.RoleAdmin, "correct horse battery staple", false)
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := env.App.Tokens.CreateFor(t.Context(), u, "laptop")
	if err != nil {
		t.Fatal(err)
	}
	admin := "Bearer " + secret
	withReason := func(req *http.Request) { req.Header.Set(api.HeaderReason, "new hire") }
	rec := send(t, env.Env, false, "POST", api.AdminPrefix+"/users", admin, "application/json",
		`{"name":"alice","role":"viewer","password":"alice's long password"}`, withReason)
	if rec.Code != http.StatusCreated {
		t.Fatalf("create user: %d %s", rec.Code, rec.Body)
	}
	for _, tc := range []struct {
		name, path, body string
		want             int
		wantMsg          string
	}{
		{"promote alice", "/users/alice/role", `{"role":"operator"}`, http.StatusOK, ""},
		{"demote oneself", "/users/root/role", `{"role":"operator"}`, http.StatusConflict, "your own admin role"},
		{"disable oneself", "/users/root/disable", "", http.StatusConflict, "cannot disable yourself"},
		{"an unknown user", "/users/nobody/disable", "", http.StatusNotFound, ""},
		{"a name taken", "/users", `{"name":"alice","role":"viewer","service":true}`, http.StatusConflict, ""},
	} {
		code, b := env.call(t, admin, "POST", tc.path, tc.body)
		if code != tc.want || !strings.Contains(string(b), tc.wantMsg) {
			t.Errorf("%s: %d %s, want %d saying %q", tc.name, code, b, tc.want, tc.wantMsg)
		}
	}

	if rec := send(t, env.Env, true, "POST", api.AdminPrefix+"/users/alice/role", admin, "application/json", `{"role":"root"}`); rec.Code != http.StatusBadRequest {
		t.Errorf("an unknown role: %d %s, want 400", rec.Code, rec.Body)
	}

	// Alice mints her own token; she sees her tokens only.
	_, aliceTok, err := env.App.Tokens.CreateFor(t.Context(), &identity.User{ID: mustUserID(t, env, "alice"), Name: "alice", Role: identity.RoleOperator}, "first")
	if err != nil {
		t.Fatal(err)
	}
	alice := "Bearer " + aliceTok
	code, b := env.call(t, alice, "POST", "/tokens", `{"name":"ci"}`)
	var nt wire.NewToken
	if code != http.StatusCreated || json.Unmarshal(b, &nt) != nil || !strings.HasPrefix(nt.Secret, "otad_") || nt.User != "alice" {
		t.Fatalf("mint: %d %s", code, b)
	}
	code, b = env.call(t, alice, "GET", "/tokens", "")
	var toks []wire.Token
	if code != http.StatusOK || json.Unmarshal(b, &toks) != nil || len(toks) != 2 {
		t.Errorf("alice's tokens: %d %s, want her two", code, b)
	}
	if code, _ := env.call(t, alice, "GET", "/tokens?all=true", ""); code != http.StatusForbidden {
		t.Errorf("alice listing everyone's tokens: %d, want 403", code)
	}
	code, b = env.call(t, admin, "GET", "/tokens", "")
	var adminToks []wire.Token
	if code != http.StatusOK || json.Unmarshal(b, &adminToks) != nil || len(adminToks) != 1 {
		t.Fatalf("root's tokens: %d %s", code, b)
	}
	if code, b := env.call(t, alice, "DELETE", "/tokens/"+adminToks[0].ID, ""); code != http.StatusNotFound {
		t.Errorf("alice revoking root's token: %d %s, want 404", code, b)
	}
	if code, b := env.call(t, alice, "DELETE", "/tokens/"+nt.ID, ""); code != http.StatusNoContent {
		t.Errorf("alice revoking her token: %d %s, want 204", code, b)
	}
	if code, _ := env.call(t, "Bearer "+nt.Secret, "GET", "/whoami", ""); code != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d, want 401", code)
	}
	code, b = env.call(t, alice, "GET", "/whoami", "")
	var who wire.WhoAmI
	if code != http.StatusOK || json.Unmarshal(b, &who) != nil || who.Name != "alice" || who.Role != "operator" || who.Kind != "user" ||
		len(who.Permissions) != len(identity.RolePermissions[identity.RoleOperator]) {
		t.Errorf("whoami: %d %s, want alice, operator, user and the operator's permissions", code, b)
	}
	// Disabled, alice's tokens stop working.
	if code, b := env.call(t, admin, "POST", "/users/alice/disable", ""); code != http.StatusOK {
		t.Fatalf("disable alice: %d %s", code, b)
	}
	if code, _ := env.call(t, alice, "GET", "/whoami", ""); code != http.StatusUnauthorized {
		t.Errorf("a disabled user's token: %d, want 401", code)
	}

	es := env.audit(t, "?action=user.")
	if got := auditSummary(es); strings.Join(got, " ") != "root:user.disable root:user.set-role root:user.create" {
		t.Errorf("user audit %v, want create, set-role, disable by root", got)
	}
	if es[len(es)-1].Reason != "new hire" || es[len(es)-1].Object != "alice" {
		t.Errorf("user.create entry %+v, want object alice and the X-Reason", es[len(es)-1])
	}
	if got := auditSummary(env.audit(t, "?action=token.")); strings.Join(got, " ") != "alice:token.revoke alice:token.create" {
		t.Errorf("token audit %v", got)
	}
	code, b = env.call(t, env.viewer, "GET", "/audit/verify", "")
	var v wire.AuditVerify
	if code != http.StatusOK || json.Unmarshal(b, &v) != nil || !v.OK || v.Entries == nil || *v.Entries < 5 || v.HeadHash == nil {
		t.Errorf("verify: %d %s, want ok", code, b)
	}
	rec = send(t, env.Env, true, "POST", api.AdminPrefix+"/users/alice/enable", admin, "", "",
		func(req *http.Request) { req.Header.Set(api.HeaderReason, "two\nlines") })
	if rec.Code != http.StatusBadRequest {
		t.Errorf("a reason on two lines: %d %s, want 400", rec.Code, rec.Body)
	}
}

func mustUserID(t *testing.T, env *rolloutEnv, name string) string {
	t.Helper()
	u, _, err := env.App.Users.Store.UserByName(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return u.ID
}
