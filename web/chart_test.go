package web

import (
	"encoding/xml"
	"html"
	"io"
	"regexp"
	"slices"
	"strconv"
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
	svg := string(BurnDownChart(daily, proj, nil))
	mustParseSVG(t, svg)
	// 4 days and 2 projected: 6 slots of 338/6 units from x = 54,
	// centred; exposed shares 0.4, 0.3, 0.2 on a 0..50% axis of 172
	// units from y = 46. The day without data has no point.
	pts := regexp.MustCompile(`<polyline class="series"[^>]* points="([^"]+)"`).FindStringSubmatch(svg)
	if pts == nil || pts[1] != "138.5,80.4 194.8,114.8 251.2,149.2" {
		t.Errorf("series points %v, want 138.5,80.4 194.8,114.8 251.2,149.2", pts)
	}
	if n := strings.Count(svg, `<circle class="point"`); n != 3 {
		t.Errorf("%d points, want 3", n)
	}
	// The projection runs from the last point to the 5% target line on
	// the projected day's slot.
	if !strings.Contains(svg, `<line class="projection" x1="251.2" y1="149.2" x2="363.8" y2="200.8"`) {
		t.Errorf("projection line missing or misplaced:\n%s", svg)
	}
	for _, label := range []string{">2026-12-12<", ">2026-12-17<", ">50%<", ">0%<", ">day (UTC)<", ">target 5.0%<"} {
		if !strings.Contains(svg, label) {
			t.Errorf("label %q missing", label)
		}
	}
	// Without data: an empty chart, still valid.
	mustParseSVG(t, string(BurnDownChart(nil, server.Projection{TargetShare: 0.95, Status: server.ProjectionUnknown}, nil)))
}

// TestBurnDownSamples: while the series has fewer than three days with
// data, the burn-down plots the exposure samples, on a time axis, and
// says so in its title; from three days on, the days.
func TestBurnDownSamples(t *testing.T) {
	s := func(v float64) *float64 { return &v }
	t0 := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	samples := []server.ExposureSample{
		{At: t0, Active: 100, Exposed: 40, Compliant: 60},
		{At: t0.Add(5 * time.Minute), Active: 200, Exposed: 60, Compliant: 140},
		{At: t0.Add(10 * time.Minute), Active: 400, Exposed: 40, Compliant: 360},
	}
	daily := []server.DayExposure{{Day: "2026-12-06"}, {Day: "2026-12-07", Active: 400, Exposed: 40, ShareCompliant: s(0.9)}}
	proj := server.ProjectCompliance(daily, server.ComplianceTarget)
	svg := string(BurnDownChart(daily, proj, samples))
	mustParseSVG(t, svg)
	if n := strings.Count(svg, `<circle class="point"`); n != 3 {
		t.Errorf("%d points, want the 3 samples:\n%s", n, svg)
	}
	for _, want := range []string{"every minute", "<title>2026-12-07 05:05 UTC: 30.0% exposed (60 of 200 handsets)</title>", ">05:00<", ">05:10<"} {
		if !strings.Contains(svg, want) {
			t.Errorf("samples chart lacks %q:\n%s", want, svg)
		}
	}
	// Three days with data: one point a day, samples or not.
	daily = append([]server.DayExposure{{Day: "2026-12-05", Active: 10, ShareCompliant: s(0.5)}}, daily...)
	daily[2].ShareCompliant, daily[1].ShareCompliant = s(0.9), s(0.7)
	svg = string(BurnDownChart(daily, server.ProjectCompliance(daily, server.ComplianceTarget), samples))
	if n := strings.Count(svg, `<circle class="point"`); n != 3 || !strings.Contains(svg, "by day") {
		t.Errorf("%d points with 3 days of data, want 3 by day:\n%s", n, svg)
	}
}

// TestTimelineScale: the bucket width follows the rollout's lifetime,
// and the charts' titles say what a bucket is.
func TestTimelineScale(t *testing.T) {
	start := time.Date(2026, 12, 7, 5, 48, 1, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		life  time.Duration
		fine  bool
		width time.Duration
		n     int
		title string
	}{
		{"82 seconds", 82 * time.Second, true, 2 * time.Second, 42, "Installs and failures per 2 seconds"},
		{"82 seconds, records not read", 82 * time.Second, false, time.Hour, 1, "Installs and failures per hour"},
		// 5 minutes would take 61 buckets: 05:45 to 10:45.
		{"5 hours", 5 * time.Hour, true, 10 * time.Minute, 31, "Installs and failures per 10 minutes"},
		{"5 days", 5 * 24 * time.Hour, false, 3 * time.Hour, 41, "Installs and failures per 3 hours"},
		{"a year", 365 * 24 * time.Hour, false, 24 * time.Hour, server.TimelineBuckets, "Installs and failures per day"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			end := start.Add(tc.life)
			w, first, n := server.TimelineScale(start, end, tc.fine)
			if w != tc.width || n != tc.n {
				t.Errorf("width %v, %d buckets, want %v, %d", w, n, tc.width, tc.n)
			}
			if last := first.Add(time.Duration(n) * w); !last.After(end) || (tc.life < 60*24*time.Hour && first.After(start)) {
				t.Errorf("buckets %v to %v do not cover %v to %v", first, last, start, end)
			}
			tl := server.Timeline{BucketSeconds: int64(w / time.Second)}
			if got := ResultsTitle(tl); got != tc.title {
				t.Errorf("title %q, want %q", got, tc.title)
			}
		})
	}
}

func TestResultsChart(t *testing.T) {
	start := time.Date(2026, 12, 15, 0, 0, 0, 0, time.UTC)
	tl := server.Timeline{BucketSeconds: 3600, Kind: server.TimelineStates, Buckets: []server.TimelineBucket{
		{Start: start, Installs: 30, Failures: 10}, {Start: start.Add(time.Hour)}, {Start: start.Add(2 * time.Hour), Installs: 5}}}
	svg := string(ResultsChart(tl))
	mustParseSVG(t, svg)
	// Top 40 rounds to 50; 3 slots of 112.7 units from x = 54, bars 80% wide.
	// Installed 30 of 50 is 103.2 high from the bottom (y = 218); failed
	// 10 sits on it, 34.4 high.
	for _, want := range []string{
		`<rect class="s-installed" x="65.3" y="114.8" width="90.1" height="103.2"`,
		`<rect class="s-failed" x="65.3" y="80.4" width="90.1" height="34.4"`,
		`<rect class="s-installed" x="290.6" y="200.8" width="90.1" height="17.2"`,
	} {
		if !strings.Contains(svg, want) {
			t.Errorf("missing %s in\n%s", want, svg)
		}
	}
	if n := strings.Count(svg, `<rect class="s-`); n != 3 {
		t.Errorf("%d bars, want 3 (none for an empty hour)", n)
	}
	for _, label := range []string{">Dec 15 00h<", ">UTC, per hour<", ">50<", ">0<", "Installs and failures per hour"} {
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
		if err == io.EOF {
			return
		}
		if err != nil {
			tb.Fatalf("not well-formed SVG: %v\n%s", err, svg)
		}
	}
}

// TestStatesChart: each hour's bar stacks its five states, named in the
// legend with the counters' words, with the counts in the bars' titles.
func TestStatesChart(t *testing.T) {
	h0 := time.Date(2026, 12, 1, 14, 0, 0, 0, time.UTC)
	n := func(v int64) *int64 { return &v }
	tl := server.Timeline{BucketSeconds: 3600, Kind: server.TimelineStates, Buckets: []server.TimelineBucket{
		{Start: h0, Offered: 20, Pending: n(20), Downloading: n(0)},
		{Start: h0.Add(time.Hour), Offered: 21, Pending: n(8), Downloading: n(4), Installed: 7, Failed: 1, RolledBack: 1},
	}}
	svg := string(StatesChart(tl))
	mustParseSVG(t, svg)
	if got, want := legendNames(svg), []string{"installed", "failed", "rolled back", "downloading", "pending"}; !slices.Equal(got, want) {
		t.Errorf("legend %q, want %q", got, want)
	}
	for _, want := range []string{"<title>2026-12-01 15:00:00 failed: 1</title>", "<title>2026-12-01 15:00:00 rolled back: 1</title>",
		"<title>2026-12-01 15:00:00 downloading: 4</title>", "<title>2026-12-01 15:00:00 pending: 8</title>",
		"<title>2026-12-01 14:00:00 pending: 20</title>", "Handset states at the end of every hour"} {
		if !strings.Contains(svg, want) {
			t.Errorf("states chart lacks %s:\n%s", want, svg)
		}
	}
	for _, old := range []string{">installing<", ">offered<"} {
		if strings.Contains(svg, old) {
			t.Errorf("states chart says %s, not a counter's word", old)
		}
	}
}

// TestCumulativeChart: a timeline read from the records is drawn as
// cumulative lines, which its title says, ending at the totals.
func TestCumulativeChart(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 5, 48, 0, 0, time.UTC)
	tl := server.Timeline{BucketSeconds: 2, Kind: server.TimelineCumulative, Buckets: []server.TimelineBucket{
		{Start: t0, Offered: 10}, {Start: t0.Add(2 * time.Second), Offered: 30, Installed: 5, Failed: 1},
		{Start: t0.Add(4 * time.Second), Offered: 30, Installed: 20, Failed: 2, RolledBack: 1}}}
	svg := string(StatesChart(tl))
	mustParseSVG(t, svg)
	if got, want := legendNames(svg), []string{"offered", "installed", "failed", "rolled back"}; !slices.Equal(got, want) {
		t.Errorf("legend %q, want %q", got, want)
	}
	for _, want := range []string{"cumulative", "every 2 seconds", "<title>installed by 2026-12-07 05:48:06: 20</title>",
		"<title>rolled back by 2026-12-07 05:48:06: 1</title>", ">05:48:06<"} {
		if !strings.Contains(svg, want) {
			t.Errorf("cumulative chart lacks %q:\n%s", want, svg)
		}
	}
}

// TestChartsFit: every label of every chart lies within the viewBox
// (the right date is not cut), the target's label is not in the plot
// where the data are, and fonts stay at 11 px or more on a 360 px
// screen, where the page's padding leaves the chart about 320 px.
func TestChartsFit(t *testing.T) {
	s := func(v float64) *float64 { return &v }
	var daily []server.DayExposure
	d0 := time.Date(2026, 11, 8, 0, 0, 0, 0, time.UTC)
	for i := range 30 {
		daily = append(daily, server.DayExposure{Day: d0.AddDate(0, 0, i).Format(time.DateOnly), ShareCompliant: s(0.5 + float64(i)*0.0146)})
	}
	proj := server.ProjectCompliance(daily, server.ComplianceTarget)
	if proj.Status != server.ProjectionProjected {
		t.Fatalf("projection %+v, want a date", proj)
	}
	n := func(v int64) *int64 { return &v }
	var hours, fine []server.TimelineBucket
	for i := range 60 {
		hours = append(hours, server.TimelineBucket{Start: d0.Add(time.Duration(i) * 2 * time.Hour), Installs: 1_200_000,
			Pending: n(3), Downloading: n(2), Installed: int64(i) * 20000})
		fine = append(fine, server.TimelineBucket{Start: d0.Add(time.Duration(i) * time.Second), Offered: 40, Installed: int64(i)})
	}
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	var samples []server.ExposureSample
	for i := range 48 * 12 {
		samples = append(samples, server.ExposureSample{At: t0.Add(time.Duration(i) * 5 * time.Minute), Active: 1000, Exposed: 60})
	}
	charts := map[string]string{
		"burn-down":         string(BurnDownChart(daily, proj, nil)),
		"burn-down samples": string(BurnDownChart(daily[:1], proj, samples)),
		"burn-down at 100%": string(BurnDownChart(daily[:1], proj, append([]server.ExposureSample{{At: t0.Add(-time.Minute)}},
			server.ExposureSample{At: t0, Active: 10, Exposed: 9}, server.ExposureSample{At: t0.Add(time.Minute), Active: 10, Exposed: 6}))),
		"results":    string(ResultsChart(server.Timeline{BucketSeconds: 7200, Kind: server.TimelineStates, Buckets: hours})),
		"states":     string(StatesChart(server.Timeline{BucketSeconds: 7200, Kind: server.TimelineStates, Buckets: hours})),
		"cumulative": string(StatesChart(server.Timeline{BucketSeconds: 1, Kind: server.TimelineCumulative, Buckets: fine})),
	}
	text := regexp.MustCompile(`<text class="([^"]*)" x="([^"]+)" y="([^"]+)"(?: text-anchor="([^"]+)")? font-size="(\d+)">([^<]*)</text>`)
	view := regexp.MustCompile(`viewBox="0 0 (\d+) (\d+)"`)
	for name, svg := range charts {
		mustParseSVG(t, svg)
		vb := view.FindStringSubmatch(svg)
		if vb == nil {
			t.Fatalf("%s: no viewBox", name)
		}
		w, _ := strconv.ParseFloat(vb[1], 64)
		h, _ := strconv.ParseFloat(vb[2], 64)
		labels := text.FindAllStringSubmatch(svg, -1)
		if len(labels) < 5 || len(labels) != strings.Count(svg, "<text ") {
			t.Fatalf("%s: %d labels parsed of %d", name, len(labels), strings.Count(svg, "<text "))
		}
		for _, l := range labels {
			x, _ := strconv.ParseFloat(l[2], 64)
			y, _ := strconv.ParseFloat(l[3], 64)
			size, _ := strconv.ParseFloat(l[5], 64)
			width := float64(len([]rune(html.UnescapeString(l[6])))) * size * charWidth
			lo, hi := x, x+width
			switch l[4] {
			case "end":
				lo, hi = x-width, x
			case "middle":
				lo, hi = x-width/2, x+width/2
			}
			if lo < 0 || hi > w || y-size < 0 || y > h {
				t.Errorf("%s: label %q spans x %.0f..%.0f at y %.0f, outside the %.0fx%.0f viewBox", name, l[6], lo, hi, y, w, h)
			}
			if px := size * 320 / w; px < 11 {
				t.Errorf("%s: label %q is %.1f px on a 360 px screen (a 320 px chart), want 11 or more", name, l[6], px)
			}
			if strings.HasPrefix(l[6], "target") && y > marginT {
				t.Errorf("%s: the target's label is at y %.0f, in the plot (from %d) where points are", name, y, marginT)
			}
		}
	}
	// A sample taken before any check-in does not start the axis.
	if c := charts["burn-down at 100%"]; !strings.Contains(c, ">00:00:00<") || strings.Contains(c, ">23:59") {
		t.Errorf("the samples' axis starts before the first sample with handsets:\n%s", c)
	}
	// 48 hours of samples: a line, with a point (and its numbers) only
	// at the last one, not 576 of them.
	if n := strings.Count(charts["burn-down samples"], "<circle"); n != 1 || len(charts["burn-down samples"]) > 20000 {
		t.Errorf("48 hours of samples: %d points, %d bytes; want 1 point, under 20 kB", n, len(charts["burn-down samples"]))
	}
	if !strings.Contains(charts["burn-down"], ">"+*proj.Date+"<") {
		t.Errorf("the projected date %s is not labelled:\n%s", *proj.Date, charts["burn-down"])
	}
}

// legendNames are the names a chart's legend shows, in order.
func legendNames(svg string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`<text class="legend"[^>]*>([^<]*)</text>`).FindAllStringSubmatch(svg, -1) {
		out = append(out, html.UnescapeString(m[1]))
	}
	return out
}
