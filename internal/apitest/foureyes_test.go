package apitest_test

import (
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// Four eyes follow exposure (issue 13, finding 2): what needs a second
// person is how much of the fleet one patch can reach, every rollout of
// it counted, through the real HTTP API and store.

// tokenEnv is env acting with a new token of a service account name
// with role.
func tokenEnv(tb testing.TB, env *apitest.Env, name, role string) *apitest.Env {
	tb.Helper()
	_, secret, err := env.App.Tokens.Create(tb.Context(), name, role)
	if err != nil {
		tb.Fatal(err)
	}
	return &apitest.Env{URL: env.URL, Token: secret}
}

// userEnv is env acting with a new token of user u.
func userEnv(tb testing.TB, env *apitest.Env, u *identity.User) *apitest.Env {
	tb.Helper()
	_, secret, err := env.App.Tokens.CreateFor(tb.Context(), u, "laptop")
	if err != nil {
		tb.Fatal(err)
	}
	return &apitest.Env{URL: env.URL, Token: secret}
}

// pending sends a widening that must wait for a second person: 202 with
// a pending approval.
func pending(tb testing.TB, e *apitest.Env, path string, body any) wire.Approval {
	tb.Helper()
	var a wire.Approval
	if err := e.Do("POST", path, body, &a); err != nil {
		tb.Fatalf("POST %s: %v", path, err)
	}
	if a.State != string(rollout.ApprovalPending) || a.ID == "" {
		tb.Fatalf("POST %s: answered %+v, want a pending approval (202)", path, a)
	}
	return a
}

// refused wants err to be an API error with status and every one of
// msgs in its message.
func refused(tb testing.TB, what string, err error, status int, msgs ...string) {
	tb.Helper()
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != status {
		tb.Errorf("%s: %v, want %d", what, err, status)
		return
	}
	for _, m := range msgs {
		if !strings.Contains(ae.Message, m) {
			tb.Errorf("%s: %q, want it to say %q", what, ae.Message, m)
		}
	}
}

// TestFourEyesFollowExposure: an operator alone cannot start at 99.99%;
// three rollouts of one release at 50% each offer it to about half of
// the handsets, not 87.5% (their cohorts nest); a fourth rollout, an
// advance or a resume that would let the patch reach more than half
// waits for a second person.
func TestFourEyesFollowExposure(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 256), es...)
	ops := tokenEnv(t, env, "ops", identity.RoleOperator)

	a := pending(t, ops, "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{99.99}, Reason: "all but one in 10,000"})
	if a.Action != "start" || a.ToPercent != 99.99 || a.Exposure != 99.99 || a.RequestedBy != "ops" {
		t.Errorf("approval %+v, want ops's start at 99.99%%", a)
	}
	if r := getRollout(t, env, a.RolloutID); r.State != "draft" {
		t.Errorf("the rollout asked to start at 99.99%%: %s, want a draft until a second person approves", r.State)
	}

	hs := enrollFleet(t, env, 1000, "PX-7", "7.2.0")
	var ids []string
	for i := range 3 {
		var r wire.Rollout
		if err := ops.Do("POST", "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{50}, Reason: "half"}, &r); err != nil {
			t.Fatalf("rollout %d at 50%%: %v", i+1, err)
		}
		if r.State != "running" {
			t.Fatalf("rollout %d at 50%%: %s, want running (the patch reaches 50%%, no more)", i+1, r.State)
		}
		ids = append(ids, r.ID)
	}
	// Their cohorts nest: the handsets offered are exactly the 50%
	// cohort of the salt they share.
	salt := getRollout(t, env, ids[0]).Salt
	offered := 0
	answers := checkInAll(t, hs)
	for _, h := range hs {
		ans := answers[h.id]
		if ans.Offer != nil {
			offered++
			if !strings.Contains(strings.Join(ids, " "), ans.Offer.RolloutID) {
				t.Errorf("%s offered %s by %s, want one of %v", h.id, ans.Offer.Target, ans.Offer.RolloutID, ids)
			}
		}
		if in := rollout.InStage(salt, h.id, 50); in != (ans.Offer != nil) {
			t.Errorf("%s: in the 50%% cohort of the shared salt %v, offered %v (%q)", h.id, in, ans.Offer != nil, ans.NoOffer)
		}
	}
	share := float64(offered) / float64(len(hs))
	t.Logf("three rollouts at 50%%: %d of %d handsets offered the patch (%.1f%%)", offered, len(hs), 100*share)
	// 50% of 1,000 handsets spreads by 1.6 points; three cohorts of
	// their own would offer it to 87.5%.
	if share < 0.40 || share > 0.60 {
		t.Errorf("three rollouts at 50%%: %.1f%% of the handsets offered the patch, want about 50%%", 100*share)
	}

	// Anything that lets the patch reach more than half waits.
	a = pending(t, ops, "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{60}, Reason: "a fourth"})
	if a.Action != "start" || a.Exposure != 60 {
		t.Errorf("a fourth rollout at 60%%: %+v, want a start at an exposure of 60%%", a)
	}
	a = pending(t, ops, "/rollouts/"+ids[0]+"/advance", wire.RolloutAdvanceRequest{Reason: "more", Percent: 50.01})
	if a.Action != "advance" || a.Exposure != 50.01 {
		t.Errorf("an advance to 50.01%%: %+v", a)
	}
	// A salt of its own would escape the nesting: refused.
	err := ops.Do("POST", "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{10}, Salt: "mine", Reason: "x"}, nil)
	refused(t, "a rollout of the patch with a salt of its own", err, http.StatusBadRequest, "share the salt")

	// A pause and resume at 50% need nobody; past 50% a resume waits.
	if err := ops.Do("POST", "/rollouts/"+ids[1]+"/pause", wire.RolloutActionRequest{Reason: "look"}, nil); err != nil {
		t.Fatal(err)
	}
	var r wire.Rollout
	if err := ops.Do("POST", "/rollouts/"+ids[1]+"/resume", wire.RolloutActionRequest{Reason: "fine"}, &r); err != nil || r.State != "running" {
		t.Fatalf("resume at 50%%: %v, %s", err, r.State)
	}
	env.Widen(t, "POST", "/rollouts/"+ids[2]+"/advance", wire.RolloutAdvanceRequest{Reason: "approved widening", Percent: 75}, &r)
	if r.Percent != 75 {
		t.Fatalf("approved advance: at %g%%, want 75%%", r.Percent)
	}
	if err := ops.Do("POST", "/rollouts/"+ids[2]+"/pause", wire.RolloutActionRequest{Reason: "a bad hour"}, nil); err != nil {
		t.Fatal(err)
	}
	a = pending(t, ops, "/rollouts/"+ids[2]+"/resume", wire.RolloutActionRequest{Reason: "fixed"})
	if a.Action != "resume" || a.ToPercent != 75 {
		t.Errorf("resume at 75%%: %+v, want a resume to 75%%", a)
	}
	if r := getRollout(t, env, ids[2]); r.State != "paused" {
		t.Errorf("resume at 75%% before approval: %s, want paused", r.State)
	}
	// While one offers it to 75%, even a resume at 50% of another lets
	// the patch reach 75%.
	if err := ops.Do("POST", "/rollouts/"+ids[1]+"/pause", wire.RolloutActionRequest{Reason: "look again"}, nil); err != nil {
		t.Fatal(err)
	}
	pending(t, ops, "/rollouts/"+ids[1]+"/resume", wire.RolloutActionRequest{Reason: "fine again"})
	// A second person applies the resume.
	var d wire.ApprovalDecision
	approver := &apitest.Env{URL: env.URL, Token: env.ApproverToken(t)}
	if err := approver.Do("POST", "/rollouts/"+ids[2]+"/approvals/"+a.ID+"/approve", wire.RolloutActionRequest{Reason: "agreed"}, &d); err != nil ||
		d.Rollout == nil || d.Rollout.State != "running" || d.Rollout.Percent != 75 {
		t.Errorf("approving the resume: %v, %+v", err, d.Rollout)
	}
}

// TestFourEyesVouchedApprover: an admin who creates a user, or raises
// one to operator, cannot have them approve the admin's requests for 24
// hours (a lowered role does not count); after that they can. A second
// token of the requester is the requester.
func TestFourEyesVouchedApprover(t *testing.T) {
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 256), es...)
	ctx := t.Context()
	const password = "a long enough passphrase"
	user := func(name, role string) *identity.User {
		t.Helper()
		u, err := env.App.Users.Create(ctx, name, role, password, false)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	root := userEnv(t, env, user("root", identity.RoleAdmin))
	carol, dave := user("carol", identity.RoleViewer), user("dave", identity.RoleAdmin)
	if err := root.DoWithReason("POST", "/users", "a second pair of eyes", wire.UserRequest{Name: "bob", Role: identity.RoleOperator, Password: password}, nil); err != nil {
		t.Fatal(err)
	}
	for name, role := range map[string]string{"carol": identity.RoleOperator, "dave": identity.RoleOperator} {
		if err := root.DoWithReason("POST", "/users/"+name+"/role", "reorganised", wire.RoleRequest{Role: role}, nil); err != nil {
			t.Fatal(err)
		}
	}
	bobUser, _, err := env.App.Users.Store.UserByName(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bob, carolEnv, daveEnv := userEnv(t, env, bobUser), userEnv(t, env, carol), userEnv(t, env, dave)
	var tok wire.NewToken
	if err := root.DoWithReason("POST", "/tokens", "second laptop", wire.TokenRequest{Name: "second"}, &tok); err != nil {
		t.Fatal(err)
	}
	rootAgain := &apitest.Env{URL: env.URL, Token: tok.Secret}

	a := pending(t, root, "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Reason: "everyone"})
	approve := func(e *apitest.Env, a wire.Approval) error {
		return e.Do("POST", "/rollouts/"+a.RolloutID+"/approvals/"+a.ID+"/approve", wire.RolloutActionRequest{Reason: "agreed"}, nil)
	}
	refused(t, "bob, whom root created, approving", approve(bob, a), http.StatusForbidden,
		"bob cannot approve a request of root", "root created bob", "ask another operator")
	refused(t, "carol, whom root raised to operator, approving", approve(carolEnv, a), http.StatusForbidden,
		"carol cannot approve a request of root", "root raised the role of carol", "ask another operator")
	refused(t, "root's second token approving", approve(rootAgain, a), http.StatusForbidden, "a second person must approve")

	// Dave, whose role root lowered, is a second person.
	b := pending(t, root, "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Reason: "everyone, again"})
	if err := approve(daveEnv, b); err != nil {
		t.Errorf("dave, whose role root lowered, approving: %v", err)
	}

	clk.Advance(24*time.Hour + time.Minute)
	if err := approve(bob, a); err != nil {
		t.Errorf("bob approving after 24 hours: %v", err)
	}
	if r := getRollout(t, env, a.RolloutID); r.State != "running" || r.Percent != 100 {
		t.Errorf("after bob's approval: %s at %g%%, want running at 100%%", r.State, r.Percent)
	}
}

// TestFourEyesFromThePages: a start past 50% from the dashboard's form
// waits for a second person, and the page says how far the patch would
// reach; its requester cannot approve it there.
func TestFourEyesFromThePages(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 256), es...)
	pages := logInPages(t, env, "olga", identity.RoleOperator)
	_, body := pages.get("/rollouts/new")
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatalf("the form: no CSRF token:\n%s", body)
	}
	resp, page := pages.post("/rollouts", url.Values{"csrf": {csrf[1]}, "release": {patchPath}, "stages": {"75"}, "reason": {"most of them"}})
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(page, "needs a second person&#39;s approval (ap-") ||
		!strings.Contains(page, "the patch would reach 75% of the handsets its rollouts select") {
		t.Fatalf("a start at 75%% from the form: %d, want 202 saying it waits for a second person:\n%s", resp.StatusCode, page)
	}
	m := regexp.MustCompile(`/rollouts/([^/"]+)/approvals/(ap-[0-9a-f]+)/approve`).FindStringSubmatch(page)
	if m != nil {
		t.Errorf("olga is offered to approve her own request on the page")
	}
	var rs []wire.Rollout
	if err := env.Do("GET", "/rollouts", nil, &rs); err != nil || len(rs) != 1 || rs[0].State != "draft" {
		t.Errorf("rollouts after the form: %v %+v, want one draft", err, rs)
	}
}
