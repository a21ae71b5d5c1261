package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
)

func TestParsePercent(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"5%", 5, false}, {"5", 5, false}, {" 0.5 % ", 0.5, false}, {"100", 100, false},
		{"five", 0, true}, {"", 0, true}, {"NaN", 0, true}, {"%", 0, true},
	} {
		got, err := parsePercent(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parsePercent(%q) = %g, %v; want %g, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

var watchT0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func watchRollout() *wire.Rollout {
	return &wire.Rollout{ID: "ro-privacy", State: "running", Stage: 1, Percent: 10, Stages: []float64{1, 10, 50, 100},
		Release: wire.RolloutRelease{Target: "cm-privacy/2026.1/update.zip", PatchID: "CM-2026-001", InstallsBuild: "7.5.0"},
		Policy: wire.RolloutPolicy{MaxFailureRate: 0.05, MinResults: 50, FailureWindow: "1h", Soak: "0s", Retries: 3,
			Backoff: []string{"1h", "4h", "24h"}},
		Holds: []wire.RolloutHold{{Model: "PX-8", Actor: "system", Reason: "failure rate above the limit",
			Installed: 48, Failed: 12, Rate: 0.2, MaxRate: 0.05, Window: time.Hour, At: watchT0}}}
}

// TestRenderWatch checks the watch frame on fixed input: 1000 expected
// handsets in all (900 eligible plus 100 installed), so stage 1 (1%)
// expects 10 and is full, stage 2 (10%) expects 100 with 100 installed,
// and the later stages are empty whatever the counts.
func TestRenderWatch(t *testing.T) {
	rep := &rolloutReport{Eligible: 900, Target: 100, Offered: 130, Pending: 10, Downloading: 5, Installed: 100, Confirmed: 90, Failed: 15,
		RolledBack: 1, ByModel: []reportModel{{Model: "PX-7", Offered: 70, Installed: 52, Confirmed: 50, Failed: 3, Held: false},
			{Model: "PX-8", Offered: 60, Installed: 48, Confirmed: 40, Failed: 12, Held: true}},
		FailureCodes:   []failureCount{{"E_VERIFY", 3}, {"E_DISK_FULL", 12}},
		OfferToInstall: reportTimes{P50: 200, P95: 3600, Count: 100}, OfferToConfirmation: reportTimes{P50: 1800, P95: 7200, Count: 90}}
	full, empty := "["+strings.Repeat("#", barWidth)+"]", "["+strings.Repeat("-", barWidth)+"]"
	tests := []struct {
		name      string
		r         func(*wire.Rollout)
		rep       *rolloutReport
		repErr    error
		want      []string
		wantNotIn []string
	}{
		{name: "with a report", rep: rep, want: []string{
			"rollout ro-privacy: running, stage 2 of 4 (10%)\n",
			"HELD PX-8 at 2026-11-23T10:00:00Z by system: failure rate above the limit (12 failed of 60 results = 20.0%, limit 5.0%, over 1h)\n",
			"  stage 1     1% " + full + " 100.0%  10 of 10 installed\n",
			"> stage 2    10% " + full + " 100.0%  100 of 100 installed\n",
			"  stage 3    50% " + empty + "        500 expected\n",
			"  stage 4   100% " + empty + "        1000 expected\n",
			"eligible 900  in this stage 100  offered 130  pending 10  downloading 5  installed 100 (confirmed 90)  failed 15  rolled back 1\n",
			"failure rate 13.0% of 115 results (halts above 5.0% over 1h once 50 are in)\n",
			"offer to install: p50 3m20s, p95 1h (100 installs)\n",
			"offer to confirmation: p50 30m, p95 2h (90 confirmed)\n",
			"  PX-7  offered 70  installed 52 (confirmed 50)  failed 3\n",
			"  PX-8  offered 60  installed 48 (confirmed 40)  failed 12  HELD\n",
			"top failures: E_DISK_FULL 12, E_VERIFY 3\n",
		}, wantNotIn: []string{"nothing more to watch"}},
		{name: "payloads", rep: &rolloutReport{Eligible: 975, Installed: 25, Bytes: server.PayloadBytes{
			Offered: 30 << 20, Full: 120 << 20, Saved: 90 << 20, ByPayload: []server.PayloadCount{
				{FromBuild: "", Offers: 10, Bytes: 20 << 20, FullBytes: 20 << 20},
				{FromBuild: "7.4.1", Offers: 50, Bytes: 10 << 20, FullBytes: 100 << 20}}}},
			want: []string{"payloads: 30.0 MiB offered, 120.0 MiB as full images: 90.0 MiB saved (75%); incrementals from 7.4.1 x50\n"}},
		{name: "full images only", rep: &rolloutReport{Eligible: 975, Installed: 25, Bytes: server.PayloadBytes{
			Offered: 20 << 20, Full: 20 << 20, ByPayload: []server.PayloadCount{{Offers: 10, Bytes: 20 << 20, FullBytes: 20 << 20}}}},
			want: []string{"payloads: 20.0 MiB offered, 20.0 MiB as full images\n"}, wantNotIn: []string{"saved", "incrementals"}},
		{name: "a stage part done", rep: &rolloutReport{Eligible: 975, Installed: 25},
			want: []string{"> stage 2    10% [########----------------------]  25.0%  25 of 100 installed\n"}},
		{name: "no report route", rep: nil, want: []string{
			"> stage 2    10% " + empty + "\n", "no report for this rollout on the server: numbers unavailable\n"},
			wantNotIn: []string{"expected", "eligible", "payloads"}},
		{name: "report failed", repErr: errors.New("the server failed with an internal error"),
			want: []string{"report unavailable: the server failed with an internal error\n"}},
		{name: "halted and ended", rep: &rolloutReport{}, r: func(r *wire.Rollout) {
			r.State = "aborted"
			r.Halt = &wire.RolloutHold{Actor: "system", Reason: "failure rate above the limit", Installed: 80, Failed: 20,
				Rate: 0.2, MaxRate: 0.05, Window: time.Hour, At: watchT0}
		}, want: []string{
			"HALTED at 2026-11-23T10:00:00Z by system: failure rate above the limit (20 failed of 100 results = 20.0%, limit 5.0%, over 1h)\n",
			"> stage 2    10% " + empty + "   0.0%  0 of 0 installed\n",
			"rollout ro-privacy is aborted: nothing more to watch\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := watchRollout()
			if tc.r != nil {
				tc.r(r)
			}
			got := renderWatch(r, tc.rep, tc.repErr)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("frame lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.wantNotIn {
				if strings.Contains(got, w) {
					t.Errorf("frame has %q:\n%s", w, got)
				}
			}
		})
	}
}

func TestConflictHint(t *testing.T) {
	at := func(state string, stage int) *wire.Rollout {
		r := watchRollout()
		r.State, r.Stage, r.Percent = state, stage, r.Stages[stage]
		return r
	}
	tests := []struct {
		action string
		r      *wire.Rollout
		msg    string
		want   string
	}{
		{"pause", at("paused", 1), "cannot pause a paused rollout", "rollout ro-privacy is paused; resume it with otactl rollout resume ro-privacy --reason TEXT"},
		{"complete", at("paused", 3), "cannot complete a paused rollout", "is paused; resume it with otactl rollout resume ro-privacy"},
		{"resume", at("running", 1), "cannot resume a running rollout", "rollout ro-privacy is running already"},
		{"start", at("paused", 1), "cannot start a paused rollout", "was started and is paused; resume it"},
		{"pause", at("draft", 0), "cannot pause a draft rollout", "is a draft; start it with otactl rollout start ro-privacy --reason TEXT"},
		{"advance", at("aborted", 1), "cannot advance a aborted rollout", "is aborted, which is final; create a new one with otactl rollout create --release cm-privacy/2026.1/update.zip"},
		{"abort", at("aborted", 1), "cannot abort a aborted rollout", "rollout ro-privacy is aborted already"},
		{"advance", at("running", 3), "it is at its last stage; complete it", "at its last stage (100%); complete it with otactl rollout complete ro-privacy"},
		{"advance", at("paused", 3), "it is at its last stage; complete it", "paused at its last stage (100%); resume it"},
		{"advance", at("completed", 2), "it is at its last stage; give a higher percent", "completed at 50%; widen it with otactl rollout advance ro-privacy --percent P --reason TEXT, P above 50"},
		{"advance", at("completed", 3), "give a higher percent", "completed at 100%: it offers the release to every selected handset"},
		{"complete", at("running", 1), "it is at stage 2 of 4 (10%); advance it first", "at stage 2 of 4 (10%); advance it first with otactl rollout advance ro-privacy"},
		{"hold", at("running", 1), "conflict: model PX-8 is already held", "model PX-8 is already held; otactl rollout show ro-privacy lists the held models"},
		{"pause", at("running", 1), "conflict: rollout ro-privacy changed meanwhile (version 9, this change was made from 8); read it again",
			"kept changing while otactl tried to pause it; look at it with otactl rollout show ro-privacy and try again"},
	}
	for _, tc := range tests {
		if got := conflictHint(tc.action, tc.r, tc.msg); !strings.Contains(got, tc.want) {
			t.Errorf("%s on a %s rollout: got %q, want it to contain %q", tc.action, tc.r.State, got, tc.want)
		}
	}
}

func TestPrintRollout(t *testing.T) {
	r := watchRollout()
	r.State = "paused"
	r.Policy.Soak, r.Policy.MaxOffersPerMinute, r.Policy.Window = "6h", 500, "01:00-05:00"
	r.Selector.Models, r.Selector.Regions = []string{"PX-7", "PX-8"}, []string{"DE"}
	r.Halt = &wire.RolloutHold{Actor: "system", Reason: "failure rate above the limit", Installed: 80, Failed: 20,
		Rate: 0.2, MaxRate: 0.05, Window: time.Hour, At: watchT0}
	var b strings.Builder
	printRollout(&b, r, watchT0)
	wantContains(t, "show", b.String(),
		"rollout ro-privacy: paused, stage 2 of 4 (10%)\n",
		"selector: models PX-7, PX-8; channels all; regions DE; builds all\n",
		"stages:   1% [10%] 50% 100%\n",
		"halt above 5.0% failures over 1h once 50 results are in (per model too)",
		"advance on its own after 6h healthy", "3 retries after 1h, 4h, 24h", "at most 500 new offers per minute",
		"new offers only 01:00-05:00 handset-local time",
		"HALTED at 2026-11-23T10:00:00Z by system: failure rate above the limit (20 failed of 100 results = 20.0%, limit 5.0%, over 1h)",
		"PX-8 held at 2026-11-23T10:00:00Z by system",
		"next: once the cause is fixed, otactl rollout resume ro-privacy --reason TEXT")
}

// TestListingsEscapeServerText: reasons, names and paths other people
// wrote print with their terminal escapes, newlines and bidi controls
// written out, in rollout show, watch, events and the draft listing, so
// they can neither clear the screen nor forge a line.
func TestListingsEscapeServerText(t *testing.T) {
	const evil = "bad\x1b[2J\nFORGED\u202e"
	const shown = `bad\x1b[2J\nFORGED\u202e`
	r := watchRollout()
	r.State = "paused"
	r.Release.Target = "patches/" + evil + ".zip"
	r.CreatedBy = evil
	r.Halt = &wire.RolloutHold{Actor: evil, Reason: evil, At: watchT0}
	r.Holds = []wire.RolloutHold{{Model: evil, Actor: "alice", Reason: evil, At: watchT0}}
	ev := wire.RolloutEvent{At: watchT0, RolloutID: r.ID, Actor: evil, Action: "pause", Reason: evil, Detail: evil,
		FromState: "running", ToState: "paused"}
	draft := &manifests.DraftView{ID: "d-1", Kind: "targets", State: "pending", CreatedBy: evil,
		Changes: []string{"adds " + evil}}
	for name, out := range map[string]func(w *strings.Builder){
		"show":   func(w *strings.Builder) { printRollout(w, r, watchT0) },
		"watch":  func(w *strings.Builder) { w.WriteString(renderWatch(r, nil, nil)) },
		"events": func(w *strings.Builder) { printEvents(w, []wire.RolloutEvent{ev}, true) },
		"draft":  func(w *strings.Builder) { printDraft(w, draft) },
	} {
		var b strings.Builder
		out(&b)
		got := b.String()
		if strings.ContainsAny(got, "\x1b\u202e") || strings.Contains(got, "\nFORGED") || !strings.Contains(got, shown) {
			t.Errorf("%s: got\n%s\nwant every %q written as %s", name, got, evil, shown)
		}
	}
}

// TestParseAhead: --start-at and --deadline take RFC 3339 or +DURATION
// from now, and refuse anything else naming the flag.
func TestParseAhead(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantErr  bool
	}{
		{in: "", want: ""},
		{in: "2026-12-08T02:00:00Z", want: "2026-12-08T02:00:00Z"},
		{in: "2026-12-08T03:00:00+01:00", want: "2026-12-08T02:00:00Z"},
		{in: "+2h", want: "2026-11-23T12:00:00Z"},
		{in: "+90m", want: "2026-11-23T11:30:00Z"},
		{in: "2h", wantErr: true}, {in: "+-2h", wantErr: true}, {in: "tomorrow", wantErr: true},
		{in: "2026-12-08 02:00", wantErr: true}, {in: "2026-12-08T02:00:00", wantErr: true},
	} {
		got, err := parseAhead("deadline", tc.in, watchT0)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseAhead(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "--deadline") {
			t.Errorf("parseAhead(%q): %v does not name the flag", tc.in, err)
		}
	}
}

// TestPrintRolloutSchedule: rollout show says when a scheduled rollout
// starts and when its offers become urgent, before and after each.
func TestPrintRolloutSchedule(t *testing.T) {
	r := watchRollout()
	start, deadline := watchT0.Add(3*time.Hour), watchT0.Add(51*time.Hour)
	r.Policy.StartAt, r.Policy.Deadline, r.StartedAt = &start, &deadline, &start
	show := func(now time.Time) string {
		var b strings.Builder
		printRollout(&b, r, now)
		return b.String()
	}
	wantContains(t, "before the start", show(watchT0),
		"schedule: starts at 2026-11-23T13:00:00Z (in 3h): no offers before;\n",
		"deadline 2026-11-25T13:00:00Z (in 2d): offers urgent after it, outside the window too\n",
		"; starts 2026-11-23T13:00:00Z;")
	wantContains(t, "after the deadline", show(deadline),
		"schedule: scheduled start 2026-11-23T13:00:00Z reached: offers began;\n",
		"deadline 2026-11-25T13:00:00Z passed: offers are urgent, outside the window too\n",
		"; started 2026-11-23T13:00:00Z;")
	r.Policy.StartAt, r.Policy.Deadline = nil, nil
	if s := show(watchT0); strings.Contains(s, "schedule:") {
		t.Errorf("a rollout without a schedule shows one:\n%s", s)
	}
}

// TestPrintReportSummary: "rollout show" prints confirmed beside
// installed and both times.
func TestPrintReportSummary(t *testing.T) {
	rep := &rolloutReport{Offered: 900, Pending: 50, Downloading: 30, Installed: 812, Confirmed: 790, Failed: 7, RolledBack: 1,
		OfferToInstall: reportTimes{P50: 600, P95: 3600, Count: 812}, OfferToConfirmation: reportTimes{P50: 2400, P95: 9000, Count: 790}}
	var b strings.Builder
	printReportSummary(&b, rep)
	want := "  results:  offered 900  pending 50  downloading 30  installed 812 (confirmed 790)  failed 7  rolled back 1\n" +
		"  offer to install: p50 10m, p95 1h (812 installs)\n" +
		"  offer to confirmation: p50 40m, p95 2h30m (790 confirmed)\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	printReportSummary(&b, &rolloutReport{Offered: 3, Pending: 3})
	if strings.Contains(b.String(), "offer to") {
		t.Errorf("times printed without counts:\n%s", b.String())
	}
}
