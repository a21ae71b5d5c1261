package apitest

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// ApproverName is the operator whose token Widen approves with: a second
// person beside the release engineer of Env.Token.
const ApproverName = "test-approver"

// ApproverToken returns the token of ApproverName, made on first use.
func (env *Env) ApproverToken(tb testing.TB) string {
	tb.Helper()
	env.approverOnce.Do(func() {
		_, env.approver, env.approverErr = env.App.Tokens.Create(context.Background(), ApproverName, identity.RoleOperator)
	})
	if env.approverErr != nil {
		tb.Fatal(env.approverErr)
	}
	return env.approver
}

// Widen sends a rollout change (a create, start, advance or resume)
// with Env's token and, when four eyes stop it (202 with a pending
// approval), approves it as ApproverName, so that tests needing a
// rollout past 50% get one. out receives the rollout.
func (env *Env) Widen(tb testing.TB, method, path string, body any, out *wire.Rollout) {
	tb.Helper()
	ctx := context.Background()
	var raw json.RawMessage
	status, err := env.Client().Do(ctx, method, wire.AdminPrefix+path, body, &raw)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	if status == http.StatusAccepted {
		var ap wire.Approval
		if err := json.Unmarshal(raw, &ap); err != nil {
			tb.Fatalf("%s %s: the 202 is not an approval: %v", method, path, err)
		}
		d, err := env.Client().WithToken(env.ApproverToken(tb)).Approve(ctx, ap.RolloutID, ap.ID, "second pair of eyes")
		if err != nil {
			tb.Fatalf("approve %s of rollout %s: %v", ap.ID, ap.RolloutID, err)
		}
		if d.Rollout == nil {
			tb.Fatalf("approve %s of rollout %s: no rollout in the answer", ap.ID, ap.RolloutID)
		}
		*out = *d.Rollout
		return
	}
	if err := json.Unmarshal(raw, out); err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
}

// ApprovePending approves a change the service held for four eyes (the
// pending approval RolloutService returned beside r), as ApproverName;
// with none, or with an error, r and err come back as they are.
func (env *Env) ApprovePending(r *rollout.Rollout, pending *rollout.Approval, err error) (*rollout.Rollout, error) {
	if err != nil || pending == nil {
		return r, err
	}
	r, _, err = env.App.Rollouts.Approve(context.Background(), pending.RolloutID, pending.ID, ApproverName, "second pair of eyes")
	return r, err
}
