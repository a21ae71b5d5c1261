package web

import (
	"encoding/xml"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
)

func TestBurnDownChart(t *testing.T) {
	s := func(v float64) *float64 { return &v }
	daily := []server.DayExposure{{Day: "2026-12-12"}, {Day: "2026-12-13", ShareCompliant: s(0.6)},
		{Day: "2026-12-14", ShareCompliant: s(0.7)}, {Day: "2026-12-15", ShareCompliant: s(0.8)}}
	proj := server.ProjectCompliance(daily, server.ComplianceTarget)
	if proj.Status != server.ProjectionProjected || *proj.Date != "2026-12-17" {
		t.Fatalf("projection %+v, want 2026-12-17", proj)
	}
	svg := string(BurnDownChart(daily, proj))
	mustParseSVG(t, svg)
	// 4 days and 2 projected: 6 slots of 648/6 = 108 units from x = 56,
	// centred; exposed shares 0.4, 0.3, 0.2 on a 0..50% axis of 192
	// units from y = 12. The day without data has no point.
	pts := regexp.MustCompile(`<polyline class="series"[^>]* points="([^"]+)"`).FindStringSubmatch(svg)
	if pts == nil || pts[1] != "218,50.4 326,88.8 434,127.2" {
		t.Errorf("series points %v, want 218,50.4 326,88.8 434,127.2", pts)
	}
	if n := strings.Count(svg, `<circle class="point"`); n != 3 {
		t.Errorf("%d points, want 3", n)
	}
	// The projection runs from the last point to the 5% target line on
	// the projected day's slot.
	if !strings.Contains(svg, `<line class="projection" x1="434" y1="127.2" x2="650" y2="184.8"`) {
		t.Errorf("projection line missing or misplaced:\n%s", svg)
	}
	for _, label := range []string{"2026-12-12", "2026-12-17", "50.0%", "0.0%", "exposed", "day (UTC)", "target 5.0%"} {
		if !strings.Contains(svg, ">"+label+"<") && !strings.Contains(svg, label) {
			t.Errorf("axis label %q missing", label)
		}
	}
	// Without data: an empty chart, still valid.
	mustParseSVG(t, string(BurnDownChart(nil, server.Projection{TargetShare: 0.95, Status: server.ProjectionUnknown})))
}

func TestHourlyChart(t *testing.T) {
	start := time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)
	hours := []server.HourResults{{Hour: start, Installed: 30, Failed: 10}, {Hour: start.Add(time.Hour)}, {Hour: start.Add(2 * time.Hour), Installed: 5}}
	svg := string(HourlyChart(hours))
	mustParseSVG(t, svg)
	// Top 40 rounds to 50; 3 slots of 216 units, bars 80% wide.
	// Installed 30 of 50 is 115.2 high from the bottom (y = 204); failed
	// 10 sits on it, 38.4 high.
	for _, want := range []string{
		`<rect class="s-installed" x="77.6" y="88.8" width="172.8" height="115.2"`,
		`<rect class="s-failed" x="77.6" y="50.4" width="172.8" height="38.4"`,
		`<rect class="s-installed" x="509.6" y="184.8" width="172.8" height="19.2"`,
	} {
		if !strings.Contains(svg, want) {
			t.Errorf("missing %s in\n%s", want, svg)
		}
	}
	if n := strings.Count(svg, `<rect class="s-`); n != 3 {
		t.Errorf("%d bars, want 3 (none for an empty hour)", n)
	}
	for _, label := range []string{"15 00h", "hour (UTC)", "handsets", ">50<", ">0<"} {
		if !strings.Contains(svg, label) {
			t.Errorf("label %q missing", label)
		}
	}
}

func mustParseSVG(tb testing.TB, svg string) {
	tb.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err != nil {
			if err.Error() == "EOF" {
				return
			}
			tb.Fatalf("not well-formed SVG: %v\n%s", err, svg)
		}
	}
}

// TestStatesChart: each hour's bar stacks its four states, named in the
// legend, with the counts in the bars' titles.
func TestStatesChart(t *testing.T) {
	h0 := time.Date(2026, 12, 1, 14, 0, 0, 0, time.UTC)
	svg := string(StatesChart([]server.HourStates{
		{Hour: h0, Pending: 20},
		{Hour: h0.Add(time.Hour), Pending: 8, Downloading: 4, Installed: 7, Failed: 1, RolledBack: 1},
	}))
	for _, want := range []string{">installed<", ">failed<", ">installing<", ">offered<", "01 14h", "01 15h"} {
		if !strings.Contains(svg, want) {
			t.Errorf("states chart lacks %q:\n%s", want, svg)
		}
	}
	// The second hour's failed bar counts the rollback too.
	for _, want := range []string{"<title>01 15h failed: 2</title>", "<title>01 15h installing: 4</title>",
		"<title>01 15h offered: 8</title>", "<title>01 14h offered: 20</title>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("states chart lacks the bar %s:\n%s", want, svg)
		}
	}
}
