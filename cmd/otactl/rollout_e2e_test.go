package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/identity"
)

// syncBuffer is a bytes.Buffer safe to read while otactl writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// wantFail runs otactl and wants exit code and every string on stderr.
func wantFail(t *testing.T, env map[string]string, code int, wants []string, args ...string) {
	t.Helper()
	r := otactl(t, env, args...)
	if r.code != code {
		t.Errorf("otactl %s: exit %d, want %d; stderr %q", strings.Join(args, " "), r.code, code, r.stderr)
	}
	wantContains(t, "otactl "+strings.Join(args, " "), r.stderr, wants...)
}

// TestRolloutCommands runs the operator's commands against a real
// server: a release published with --installs-build, a rollout created,
// paused, resumed, widened, a model held and released, the refusals
// with what to do next, the audit log and watch.
func TestRolloutCommands(t *testing.T) {
	srv := apitest.Start(t, apitest.Options{})
	alice := newEngineer(t, srv, "alice")
	initRepo(t, srv, alice)
	a := alice.env(srv)
	const target = "cm-privacy/2026.1/update.zip"
	build := randomFile(t, 4096)
	r := mustRun(t, a, "release", "create", build, "--name", target, "--patch-id", "CM-2026-001",
		"--model", "PX-7", "--model", "PX-8", "--build-min", "7.0.0", "--build-max", "7.4.9", "--installs-build", "7.5.0")
	mustRun(t, a, "release", "sign", draftID(t, r), "--key", alice.key, "--yes")
	r = mustRun(t, a, "release", "create", build, "--name", "old/update.zip", "--patch-id", "CM-2025-009")
	mustRun(t, a, "release", "sign", draftID(t, r), "--key", alice.key, "--yes")

	tokens := srv.App.Tokens
	_, opsToken, err := tokens.Create(context.Background(), "ops", identity.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	_, viewToken, err := tokens.Create(context.Background(), "dash", identity.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	_, ops2Token, err := tokens.Create(context.Background(), "ops2", identity.RoleOperator)
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]string{envServer: srv.URL, envToken: opsToken}
	ops2 := map[string]string{envServer: srv.URL, envToken: ops2Token}
	viewer := map[string]string{envServer: srv.URL, envToken: viewToken}

	r = mustRun(t, ops, "rollout", "create", "--id", "ro-privacy", "--release", target, "--stages", "10,50%,100",
		"--models", "PX-7,PX-8", "--regions", "DE", "--max-failure-rate", "5%", "--min-results", "20", "--soak", "6h",
		"--window", "01:00-05:00", "--retries", "2", "--backoff", "30m,2h", "--silence-after", "3h", "--max-silence-rate", "2%", "--min-confirmations", "15",
		"--reason", "privacy incident")
	wantContains(t, "rollout create", r.stdout, "created rollout ro-privacy: running, stage 1 of 3 (10%)",
		"release:  "+target+" (patch CM-2026-001, installs build 7.5.0; models PX-7, PX-8, builds 7.0.0 to 7.4.9)",
		"selector: models PX-7, PX-8; channels all; regions DE; builds all",
		"halt above 5.0% failures over 1h once 20 results are in", "advance on its own after 6h healthy, with 15 installs confirmed on the new build",
		"2 retries after 30m, 2h", "new offers only 01:00-05:00 handset-local time", "created by ops",
		"a handset silent for 3h after it began installing counts as failed; halt (or hold a model) above 2.0% silent")
	show := func(id string) wire.Rollout {
		t.Helper()
		var v wire.Rollout
		if err := json.Unmarshal([]byte(mustRun(t, viewer, "rollout", "show", id, "--json").stdout), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := show("ro-privacy"); v.Policy.MaxFailureRate != 0.05 || v.Policy.MinResults != 20 {
		t.Errorf("--max-failure-rate 5%%: stored %g (min results %d), want 0.05 (20)", v.Policy.MaxFailureRate, v.Policy.MinResults)
	}
	// "7" is 7 percent too; a draft stays a draft.
	before := time.Now()
	r = mustRun(t, ops, "rollout", "create", "--id", "ro-draft", "--release", target, "--stages", "100", "--max-failure-rate", "7", "--draft",
		"--start-at", "+2h", "--deadline", "2099-01-01T00:00:00Z")
	wantContains(t, "rollout create --start-at --deadline", r.stdout, "at the earliest, once started",
		"deadline 2099-01-01T00:00:00Z (in ")
	if v := show("ro-draft"); v.Policy.MaxFailureRate != 0.07 || v.State != "draft" || v.Policy.Backoff[2] != "24h" {
		t.Errorf("--max-failure-rate 7 --draft: %+v, want a draft with rate 0.07 and the default backoff", v)
	} else if v.Policy.StartAt == nil || v.Policy.StartAt.Before(before.Add(2*time.Hour-time.Second)) || v.Policy.StartAt.After(time.Now().Add(2*time.Hour)) ||
		v.Policy.Deadline == nil || !v.Policy.Deadline.Equal(time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("--start-at +2h --deadline 2099-01-01T00:00:00Z: start_at %v, deadline %v", v.Policy.StartAt, v.Policy.Deadline)
	}
	if r := otactl(t, ops, "rollout", "create", "--release", target, "--stages", "100", "--start-at", "+3h", "--deadline", "+1h"); r.code == 0 ||
		!strings.Contains(r.stderr, "--deadline") {
		t.Errorf("a deadline before the start: exit %d, %q; want a refusal naming --deadline", r.code, r.stderr)
	}
	r = mustRun(t, viewer, "rollout", "list")
	wantContains(t, "rollout list", r.stdout, "ro-privacy\trunning\tstage 1 of 3\t10%\t"+target+"\tops\n", "ro-draft\tdraft\tstage 1 of 1\t100%")
	if r = mustRun(t, viewer, "rollout", "list", "--state", "draft"); strings.Contains(r.stdout, "ro-privacy") {
		t.Errorf("list --state draft shows the running rollout:\n%s", r.stdout)
	}

	steps := []struct {
		args []string
		want string
	}{
		{[]string{"pause", "ro-privacy", "--reason", "dashboards look off"}, "rollout ro-privacy: paused, stage 1 of 3 (10%)"},
		{[]string{"resume", "ro-privacy", "--reason", "false alarm"}, "rollout ro-privacy: running, stage 1 of 3 (10%)"},
		{[]string{"advance", "ro-privacy", "--reason", "healthy"}, "running, stage 2 of 3 (50%)"},
		{[]string{"advance", "ro-privacy", "--reason", "faster", "--percent", "75%"}, "advance to 75% waits for a second person's approval"},
	}
	for _, st := range steps {
		r := mustRun(t, ops, append([]string{"rollout"}, st.args...)...)
		wantContains(t, "rollout "+st.args[0], r.stdout, st.want)
	}
	// Four eyes: past 50% a second operator approves.
	r = mustRun(t, viewer, "rollout", "approvals", "ro-privacy")
	apID, _, _ := strings.Cut(r.stdout, "\t")
	wantContains(t, "rollout approvals", r.stdout, apID+"\tpending\tadvance to 75%\t", "\tops\tfaster")
	wantFail(t, ops, 1, []string{"a second person must approve"}, "rollout", "approve", "ro-privacy", apID, "--reason", "mine")
	wantFail(t, ops2, 2, []string{"needs --reason TEXT"}, "rollout", "approve", "ro-privacy", apID)
	r = mustRun(t, ops2, "rollout", "approve", "ro-privacy", apID, "--reason", "checked")
	wantContains(t, "rollout approve", r.stdout, "approved "+apID+": rollout ro-privacy: running, stage 3 of 4 (75%)")
	r = mustRun(t, ops, "rollout", "hold", "ro-privacy", "--model", "PX-8", "--reason", "boot loops")
	wantContains(t, "rollout hold", r.stdout, "running, stage 3 of 4 (75%)")
	r = mustRun(t, viewer, "rollout", "show", "ro-privacy")
	wantContains(t, "rollout show", r.stdout, "stages:   10% 50% [75%] 100%", "held models:", "PX-8 held at ", "by ops: boot loops",
		"  results:  offered 0  pending 0  downloading 0  installed 0 (confirmed 0)  failed 0  rolled back 0\n")

	// Refusals say what to do next.
	mustRun(t, ops, "rollout", "pause", "ro-privacy", "--reason", "investigating")
	wantFail(t, ops, 1, []string{"rollout ro-privacy is paused; resume it with otactl rollout resume ro-privacy --reason TEXT"},
		"rollout", "pause", "ro-privacy", "--reason", "again")
	wantFail(t, ops, 1, []string{"rollout ro-privacy was started and is paused; resume it with otactl rollout resume ro-privacy"},
		"rollout", "start", "ro-privacy", "--reason", "x")
	wantFail(t, ops, 1, []string{"rollout ro-draft is a draft; start it with otactl rollout start ro-draft --reason TEXT"},
		"rollout", "pause", "ro-draft", "--reason", "x")
	// At 75% the resume waits for four eyes too, and says so with the
	// approval's id.
	r = mustRun(t, ops, "rollout", "resume", "ro-privacy", "--reason", "cause found")
	wantContains(t, "rollout resume at 75%", r.stdout, "resume to 75% waits for a second person's approval (ap-",
		"the patch would reach 75% of the handsets its rollouts select")
	resumeID := regexp.MustCompile(`ap-[0-9a-f]+`).FindString(r.stdout)
	r = mustRun(t, ops2, "rollout", "approve", "ro-privacy", resumeID, "--reason", "cause found: agreed")
	wantContains(t, "rollout approve the resume", r.stdout, "approved "+resumeID+": rollout ro-privacy: running, stage 3 of 4 (75%)")
	wantFail(t, ops, 1, []string{"at stage 3 of 4 (75%); advance it first with otactl rollout advance ro-privacy"},
		"rollout", "complete", "ro-privacy", "--reason", "done")
	wantFail(t, ops, 1, []string{"model PX-8 is already held; otactl rollout show ro-privacy lists the held models"},
		"rollout", "hold", "ro-privacy", "--model", "PX-8", "--reason", "again")
	mustRun(t, ops, "rollout", "release-hold", "ro-privacy", "--model", "PX-8", "--reason", "fixed")
	wantFail(t, ops, 1, []string{"model PX-8 is not held", "otactl rollout show ro-privacy lists the held models"},
		"rollout", "release-hold", "ro-privacy", "--model", "PX-8", "--reason", "again")
	wantFail(t, ops, 1, []string{"--percent: want a percent above the current 75"}, "rollout", "advance", "ro-privacy", "--reason", "x", "--percent", "60")
	wantFail(t, ops, 2, []string{"needs --reason TEXT"}, "rollout", "pause", "ro-privacy")
	wantFail(t, ops, 2, []string{"missing the rollout ID"}, "rollout", "pause", "--reason", "x")
	wantFail(t, viewer, 1, []string{"lacks permission rollouts:change", "otad token create --role operator"}, "rollout", "pause", "ro-privacy", "--reason", "x")
	wantFail(t, ops, 1, []string{"rollout ro-nosuch: not found", "otactl rollout list"}, "rollout", "show", "ro-nosuch")
	wantFail(t, ops, 1, []string{"--release: ", "is not a published target", "otactl status lists"},
		"rollout", "create", "--release", "cm-privacy/2027.1/update.zip", "--stages", "1")
	wantFail(t, ops, 1, []string{"--release: the release states no build it installs", "--installs-build"},
		"rollout", "create", "--release", "old/update.zip", "--stages", "1")
	wantFail(t, ops, 1, []string{"--stages (stages[1]): want each stage above the one before"},
		"rollout", "create", "--release", target, "--stages", "10,5")
	wantFail(t, ops, 2, []string{"--max-failure-rate 150%: want a percent from 0 to 100"},
		"rollout", "create", "--release", target, "--stages", "10", "--max-failure-rate", "150%")
	wantFail(t, ops, 2, []string{"--soak", "want a duration"}, "rollout", "create", "--release", target, "--stages", "10", "--soak", "6 hours")
	wantFail(t, ops, 2, []string{"want a percent such as 5 or 5%"}, "rollout", "create", "--release", target, "--stages", "10,half")

	// The audit log, per rollout and across them.
	r = mustRun(t, viewer, "rollout", "events", "ro-privacy")
	wantContains(t, "rollout events", r.stdout, "\tops\tcreate\tdraft 10%\tprivacy incident\n", "\tops\tstart\tdraft 10% -> running 10%\tprivacy incident\n",
		"\tops\tpause\trunning 10% -> paused 10%\tdashboards look off\n", "\tops\tapproval_requested\trunning 50% -> running 75%\tfaster; approval "+apID,
		"\tops2\tadvance\trunning 50% -> running 75%\tchecked; approval "+apID+": requested by ops (faster), approved by ops2",
		"\tops\thold PX-8\trunning 75%\tboot loops\n", "\tops\trelease_hold PX-8\trunning 75%\tfixed; released the hold of ")
	r = mustRun(t, viewer, "rollout", "audit", "--action", "pause", "--since", "1h")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || !strings.Contains(lines[0], "ro-privacy\tops\tpause\trunning 75% -> paused 75%\tinvestigating") {
		t.Errorf("rollout audit --action pause: want the two pauses, newest first:\n%s", r.stdout)
	}
	wantFail(t, viewer, 2, []string{"--since", "want an RFC 3339 time"}, "rollout", "audit", "--since", "yesterday")

	// watch redraws until the rollout ends.
	var out, errs syncBuffer
	done := make(chan int)
	watcher := map[string]string{envServer: reportProxy(t, srv.URL), envToken: viewToken}
	go func() {
		done <- run(context.Background(), []string{"rollout", "watch", "ro-privacy", "--interval", "100ms"},
			func(k string) string { return watcher[k] }, strings.NewReader(""), &out, &errs)
	}()
	// The limits only bound a hang: on a loaded machine a redraw may
	// come seconds late.
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "> stage 3    75% [") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	mustRun(t, ops, "rollout", "abort", "ro-privacy", "--reason", "superseded")
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("watch: exit %d, stderr %q", code, errs.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("watch did not end when the rollout was aborted")
	}
	wantContains(t, "watch", out.String(), "rollout ro-privacy: running, stage 3 of 4 (75%)",
		"  stage 1    10% [", "> stage 3    75% [", "  stage 4   100% [",
		"rollout ro-privacy: aborted, stage 3 of 4 (75%)", "rollout ro-privacy is aborted: nothing more to watch")
	if n := strings.Count(out.String(), "rollout ro-privacy: running"); n != 1 {
		t.Errorf("watch printed the unchanged running frame %d times to a non-terminal, want once:\n%s", n, out.String())
	}
	wantFail(t, viewer, 1, []string{"not found"}, "rollout", "watch", "ro-nosuch")
}

// reportProxy is target behind a proxy that marks GET .../report off
// the contract while the API document has no such operation: watch asks
// for the rollout's report, which a server without rollout reports
// answers 404. The answer is still checked.
func reportProxy(t *testing.T, target string) string {
	t.Helper()
	documented := slices.Contains(apitest.Contract(t).Operations(), "GET "+api.AdminPrefix+"/rollouts/{id}/report")
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	direct := p.Director
	p.Director = func(r *http.Request) {
		direct(r)
		if !documented && strings.HasSuffix(r.URL.Path, "/report") {
			apitest.OffContract(r)
		}
	}
	s := httptest.NewServer(p)
	t.Cleanup(s.Close)
	return s.URL
}

// TestRolloutWatchWithoutReport: watch shows a rollout whose server
// answers 404 to its report, without numbers, and ends with it.
func TestRolloutWatchWithoutReport(t *testing.T) {
	r := watchRollout()
	r.State = "aborted"
	body, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case api.AdminPrefix + "/rollouts/ro-privacy":
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"code":"not_found","message":"Not Found"}}`))
		}
	}))
	t.Cleanup(s.Close)
	res := mustRun(t, map[string]string{envServer: s.URL, envToken: "otad_x"}, "rollout", "watch", "ro-privacy")
	wantContains(t, "watch", res.stdout, "rollout ro-privacy: aborted, stage 2 of 4 (10%)", "> stage 2    10% [",
		"no report for this rollout on the server: numbers unavailable", "is aborted: nothing more to watch")
}

// TestRolloutHelp: every rollout subcommand has --help.
func TestRolloutHelp(t *testing.T) {
	for _, cmd := range rolloutCommands {
		r := otactl(t, nil, "rollout", cmd.name, "--help")
		if r.code != 0 || !strings.Contains(r.stderr, "Usage: otactl rollout "+cmd.name) {
			t.Errorf("rollout %s --help: exit %d, stderr %q", cmd.name, r.code, r.stderr)
		}
	}
	r := otactl(t, nil, "help")
	wantContains(t, "help", r.stdout, "otactl rollout create --release PATH --stages 1,10,50,100", "otactl rollout hold|release-hold")
}
