package apitest_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

// TestEveryAdminActionIsAudited takes every state-changing admin route
// once through the HTTP API, then reads the audit log back: each action
// is there with who, what, when and why, and the chain verifies. A new
// admin route that changes something fails the test until it is taken
// here (and so audited).
func TestEveryAdminActionIsAudited(t *testing.T) {
	start := time.Now().Add(-time.Second)
	env := apitest.Start(t, apitest.Options{})
	ctx := context.Background()
	_, admSecret, err := env.App.Tokens.Create(ctx, "test-admin", identity.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	adm := &apitest.Env{URL: env.URL, Token: admSecret}
	approver := &apitest.Env{URL: env.URL, Token: env.ApproverToken(t)}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// want is what each route must leave in the log: route key →
	// action, object and reason ("" when the route was sent none).
	type entry struct{ action, object, reason, actor string }
	want := map[string]entry{}
	const eng = "test-engineer"

	es := apitest.NewEngineers(t, 2)
	root := env.Ceremony(t, es, 2)
	want["POST /api/v1/admin/repo/root-drafts"] = entry{"root-draft.create", root.ID, "", eng}
	want["POST /api/v1/admin/drafts/:id/signatures"] = entry{"draft.sign", root.ID, "", eng}
	env.Publish(t, patchPath, randomBytes(t, 4096), es...)
	want["PUT /api/v1/admin/artifacts/*"] = entry{"artifact.upload", patchPath, "", eng}
	want["POST /api/v1/admin/releases"] = entry{"release.create", patchPath, "", eng}

	var yank struct {
		ID string `json:"id"`
	}
	must("yank", env.DoWithReason("POST", "/yanks", "wrong build", wire.YankRequest{Path: patchPath}, &yank))
	want["POST /api/v1/admin/yanks"] = entry{"yank.create", patchPath, "wrong build", eng}
	must("discard", env.DoWithReason("DELETE", "/drafts/"+yank.ID, "the build is fine after all", nil, nil))
	want["DELETE /api/v1/admin/drafts/:id"] = entry{"draft.discard", yank.ID, "the build is fine after all", eng}

	must("user create", adm.DoWithReason("POST", "/users", "new security lead",
		wire.UserRequest{Name: "carol", Role: identity.RoleViewer, Password: "correct horse battery"}, nil))
	want["POST /api/v1/admin/users"] = entry{"user.create", "carol", "new security lead", "test-admin"}
	must("set role", adm.DoWithReason("POST", "/users/carol/role", "runs the rollout now", wire.RoleRequest{Role: identity.RoleOperator}, nil))
	want["POST /api/v1/admin/users/:name/role"] = entry{"user.set-role", "carol", "runs the rollout now", "test-admin"}
	must("disable", adm.DoWithReason("POST", "/users/carol/disable", "on leave", nil, nil))
	want["POST /api/v1/admin/users/:name/disable"] = entry{"user.disable", "carol", "on leave", "test-admin"}
	must("enable", adm.DoWithReason("POST", "/users/carol/enable", "back", nil, nil))
	want["POST /api/v1/admin/users/:name/enable"] = entry{"user.enable", "carol", "back", "test-admin"}
	var tok wire.NewToken
	must("token create", adm.DoWithReason("POST", "/tokens", "for the CI job", wire.TokenRequest{Name: "ci"}, &tok))
	want["POST /api/v1/admin/tokens"] = entry{"token.create", tok.Token.ID, "for the CI job", "test-admin"}
	must("token revoke", adm.DoWithReason("DELETE", "/tokens/"+tok.Token.ID, "CI moved", nil, nil))
	want["DELETE /api/v1/admin/tokens/:id"] = entry{"token.revoke", tok.Token.ID, "CI moved", "test-admin"}

	// Rollouts take their reason in the body; the store appends their
	// events to the log in the rollout's own transaction.
	ro := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10, 100}, Reason: "first 10%"})
	want["POST /api/v1/admin/rollouts"] = entry{"rollout.create", ro.ID, "first 10%", eng}
	act := func(path string, body any) {
		t.Helper()
		must(path, env.Do("POST", "/rollouts/"+ro.ID+path, body, nil))
	}
	act("/pause", wire.RolloutActionRequest{Reason: "a bad minute"})
	want["POST /api/v1/admin/rollouts/:id/pause"] = entry{"rollout.pause", ro.ID, "a bad minute", eng}
	act("/resume", wire.RolloutActionRequest{Reason: "looked again: fine"})
	want["POST /api/v1/admin/rollouts/:id/resume"] = entry{"rollout.resume", ro.ID, "looked again: fine", eng}
	act("/holds", wire.RolloutHoldRequest{Model: "PX-7", Reason: "PX-7 partner asked"})
	want["POST /api/v1/admin/rollouts/:id/holds"] = entry{"rollout.hold", ro.ID, "PX-7 partner asked", eng}
	act("/holds/PX-7/release", wire.RolloutActionRequest{Reason: "partner agreed"})
	want["POST /api/v1/admin/rollouts/:id/holds/:model/release"] = entry{"rollout.release_hold", ro.ID, "partner agreed", eng}

	// Past 50% the advance waits for a second person: reject it, ask
	// again, approve that.
	var ap wire.Approval
	must("advance", env.Do("POST", "/rollouts/"+ro.ID+"/advance", wire.RolloutAdvanceRequest{Reason: "10% clean"}, &ap))
	want["POST /api/v1/admin/rollouts/:id/advance"] = entry{"rollout.approval_requested", ro.ID, "10% clean", eng}
	decide := func(verdict, reason string) {
		t.Helper()
		must(verdict, approver.Do("POST", "/rollouts/"+ro.ID+"/approvals/"+ap.ID+"/"+verdict, wire.RolloutActionRequest{Reason: reason}, nil))
	}
	decide("reject", "wait for the weekend's numbers")
	want["POST /api/v1/admin/rollouts/:id/approvals/:aid/reject"] = entry{"rollout.approval_rejected", ro.ID, "wait for the weekend's numbers", apitest.ApproverName}
	must("advance again", env.Do("POST", "/rollouts/"+ro.ID+"/advance", wire.RolloutAdvanceRequest{Reason: "weekend clean"}, &ap))
	decide("approve", "agreed: widen")
	want["POST /api/v1/admin/rollouts/:id/approvals/:aid/approve"] = entry{"rollout.advance", ro.ID, "agreed: widen", apitest.ApproverName}
	act("/complete", wire.RolloutActionRequest{Reason: "everyone has it"})
	want["POST /api/v1/admin/rollouts/:id/complete"] = entry{"rollout.complete", ro.ID, "everyone has it", eng}
	// While it offers the patch to every handset, any start of another
	// rollout of the patch would wait for four eyes: end it first.
	act("/abort", wire.RolloutActionRequest{Reason: "the next rollout replaces it"})

	ro = createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10}, Draft: true, Reason: "prepared"})
	act("/start", wire.RolloutActionRequest{Reason: "go"})
	want["POST /api/v1/admin/rollouts/:id/start"] = entry{"rollout.start", ro.ID, "go", eng}
	act("/abort", wire.RolloutActionRequest{Reason: "superseded"})
	want["POST /api/v1/admin/rollouts/:id/abort"] = entry{"rollout.abort", ro.ID, "superseded", eng}

	// Every state-changing admin API route is taken above.
	for key, access := range env.API.RoutePermissions() {
		method := strings.SplitN(key, " ", 2)[0]
		if access.Kind != api.AccessPermission || access.Session || method == "GET" || method == "HEAD" {
			continue
		}
		if _, ok := want[key]; !ok {
			t.Errorf("admin route %s changes something but this test does not take it: add it, with the audit entry it leaves", key)
		}
	}

	var log []wire.AuditEntry
	must("audit", env.Do("GET", "/audit?limit=1000", nil, &log))
	for key, w := range want {
		found := false
		for _, e := range log {
			if e.Action == w.action && e.Object == w.object && e.Reason == w.reason && e.Actor == w.actor {
				found = true
				if e.At.Before(start) || e.At.After(time.Now()) {
					t.Errorf("%s: entry %d at %s, not during the test", key, e.Seq, e.At)
				}
				break
			}
		}
		if !found {
			t.Errorf("%s: no audit entry %s by %s on %s with reason %q", key, w.action, w.actor, w.object, w.reason)
		}
	}
	if t.Failed() {
		for _, e := range log {
			t.Logf("audit %d: %s %s %s %q", e.Seq, e.Actor, e.Action, e.Object, e.Reason)
		}
	}
	var v wire.AuditVerify
	must("verify", env.Do("GET", "/audit/verify", nil, &v))
	if !v.OK || v.Entries == nil || *v.Entries < int64(len(want)) {
		t.Errorf("audit verify = %+v, want ok with at least %d entries", v, len(want))
	}
	// Filters: by actor and by action prefix.
	var byAdmin []wire.AuditEntry
	must("audit by actor", env.Do("GET", "/audit?actor=test-admin", nil, &byAdmin))
	if len(byAdmin) != 6 {
		t.Errorf("audit?actor=test-admin: %d entries, want the 6 user and token actions", len(byAdmin))
	}
	var rolloutActions []wire.AuditEntry
	must("audit by action", env.Do("GET", "/audit?action="+url.QueryEscape("rollout.")+"&object="+ro.ID, nil, &rolloutActions))
	if got := fmt.Sprint(len(rolloutActions)); got != "3" {
		t.Errorf("audit?action=rollout.&object=%s: %s entries, want create, start and abort", ro.ID, got)
	}
}
