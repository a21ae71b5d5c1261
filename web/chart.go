package web

import (
	"fmt"
	"html/template"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server"
)

// Chart geometry, in SVG user units: the plot area is inside the
// margins, which hold the axis labels.
const (
	chartW, chartH          = 720, 240
	marginL, marginR        = 56, 16
	marginT, marginB        = 12, 36
	plotW                   = chartW - marginL - marginR
	plotH                   = chartH - marginT - marginB
	maxProjectionChartDays  = 90
	projectionChartMinSlope = 1e-9
)

// f1 formats a coordinate with one decimal.
func f1(v float64) string { return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) }

// svgOpen starts a chart with its accessible title.
func svgOpen(b *strings.Builder, title string) {
	fmt.Fprintf(b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg"><title>%s</title>`,
		chartW, chartH, chartW, chartH, template.HTMLEscapeString(title), template.HTMLEscapeString(title))
}

// yAxis draws horizontal grid lines and labels at ticks (values in
// 0..top, formatted by label).
func yAxis(b *strings.Builder, top float64, ticks int, label func(float64) string, name string) {
	for i := 0; i <= ticks; i++ {
		v := top * float64(i) / float64(ticks)
		y := marginT + plotH - plotH*float64(i)/float64(ticks)
		fmt.Fprintf(b, `<line class="grid" x1="%d" y1="%s" x2="%d" y2="%s" stroke="#ddd"/>`, marginL, f1(y), marginL+plotW, f1(y))
		fmt.Fprintf(b, `<text class="tick" x="%d" y="%s" text-anchor="end" font-size="11">%s</text>`, marginL-6, f1(y+4), template.HTMLEscapeString(label(v)))
	}
	fmt.Fprintf(b, `<text class="axis-label" x="12" y="%d" font-size="11" transform="rotate(-90 12 %d)" text-anchor="middle">%s</text>`,
		marginT+plotH/2, marginT+plotH/2, template.HTMLEscapeString(name))
}

// xLabels writes the labels of the slots at indexes idx of n slots.
func xLabels(b *strings.Builder, n int, labels map[int]string, name string) {
	for i, l := range labels {
		x := marginL + plotW*(float64(i)+0.5)/float64(n)
		fmt.Fprintf(b, `<text class="tick" x="%s" y="%d" text-anchor="middle" font-size="11">%s</text>`, f1(x), marginT+plotH+16, template.HTMLEscapeString(l))
	}
	fmt.Fprintf(b, `<text class="axis-label" x="%d" y="%d" text-anchor="middle" font-size="11">%s</text>`, marginL+plotW/2, chartH-4, template.HTMLEscapeString(name))
}

// niceTop rounds a maximum up to 1, 2 or 5 times a power of ten.
func niceTop(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// BurnDownChart is the exposure burn-down: the share of active handsets
// still exposed on each day of the series, and a dashed projection from
// the latest day with data to the day the trend reaches the compliance
// target (when that is within 90 days), as an SVG line chart.
func BurnDownChart(daily []server.DayExposure, proj server.Projection) template.HTML {
	n := len(daily)
	var extra int
	var projDate time.Time
	if proj.Status == server.ProjectionProjected && proj.Date != nil && n > 0 {
		last, err1 := time.Parse(time.DateOnly, daily[n-1].Day)
		d, err2 := time.Parse(time.DateOnly, *proj.Date)
		if err1 == nil && err2 == nil && d.After(last) {
			if days := int(d.Sub(last).Hours() / 24); days <= maxProjectionChartDays {
				extra, projDate = days, d
			}
		}
	}
	slots := max(n+extra, 1)
	top := 0.0
	for _, d := range daily {
		if d.ShareCompliant != nil {
			top = max(top, 1-*d.ShareCompliant)
		}
	}
	top = min(niceTop(max(top, 1-proj.TargetShare)), 1)
	x := func(i int) float64 { return marginL + plotW*(float64(i)+0.5)/float64(slots) }
	y := func(v float64) float64 { return marginT + plotH - plotH*v/top }

	var b strings.Builder
	svgOpen(&b, "Share of active handsets still exposed, by day")
	yAxis(&b, top, 4, func(v float64) string { return share(v) }, "exposed")
	// The target line: at most 1 - target exposed.
	ty := y(1 - proj.TargetShare)
	fmt.Fprintf(&b, `<line class="target" x1="%d" y1="%s" x2="%d" y2="%s" stroke="#2a7" stroke-dasharray="2 3"/>`, marginL, f1(ty), marginL+plotW, f1(ty))
	fmt.Fprintf(&b, `<text class="tick" x="%d" y="%s" text-anchor="end" font-size="11">target %s</text>`, marginL+plotW, f1(ty-4), share(1-proj.TargetShare))
	var pts []string
	lastI, lastV := -1, 0.0
	for i, d := range daily {
		if d.ShareCompliant == nil {
			continue
		}
		v := 1 - *d.ShareCompliant
		pts = append(pts, f1(x(i))+","+f1(y(v)))
		fmt.Fprintf(&b, `<circle class="point" cx="%s" cy="%s" r="2.5" fill="#c33"><title>%s: %s exposed</title></circle>`,
			f1(x(i)), f1(y(v)), d.Day, share(v))
		lastI, lastV = i, v
	}
	if len(pts) > 0 {
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="#c33" stroke-width="2" points="%s"/>`, strings.Join(pts, " "))
	}
	if extra > 0 && lastI >= 0 {
		fmt.Fprintf(&b, `<line class="projection" x1="%s" y1="%s" x2="%s" y2="%s" stroke="#c33" stroke-dasharray="5 4"/>`,
			f1(x(lastI)), f1(y(lastV)), f1(x(n-1+extra)), f1(ty))
	}
	labels := map[int]string{}
	if n > 0 {
		labels[0] = daily[0].Day
		labels[n-1] = daily[n-1].Day
	}
	if extra > 0 {
		labels[n-1+extra] = projDate.Format(time.DateOnly)
		delete(labels, n-1) // the two would overlap at most widths; keep the projection's
		if extra > slots/5 {
			labels[n-1] = daily[n-1].Day
		}
	}
	xLabels(&b, slots, labels, "day (UTC)")
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// Stack is one series of a stacked bar chart.
type Stack struct {
	Name, Class, Color string
	Values             []int64
}

// StackedBars is a stacked bar chart of the series over the slots
// labelled labels (every few labels are written), as SVG.
func StackedBars(title, xName, yName string, labels []string, stacks []Stack) template.HTML {
	n := max(len(labels), 1)
	var top int64
	for i := range labels {
		var sum int64
		for _, s := range stacks {
			if i < len(s.Values) {
				sum += max(s.Values[i], 0)
			}
		}
		top = max(top, sum)
	}
	t := niceTop(float64(top))
	if t < 5 {
		t = 5
	}
	var b strings.Builder
	svgOpen(&b, title)
	yAxis(&b, t, 5, func(v float64) string { return Count(int64(math.Round(v))) }, yName)
	slot := float64(plotW) / float64(n)
	w := max(slot*0.8, 1)
	for i := range labels {
		base := 0.0
		for _, s := range stacks {
			if i >= len(s.Values) || s.Values[i] <= 0 {
				continue
			}
			h := plotH * float64(s.Values[i]) / t
			fmt.Fprintf(&b, `<rect class="%s" x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s %s: %s</title></rect>`,
				template.HTMLEscapeString(s.Class), f1(marginL+slot*float64(i)+(slot-w)/2), f1(marginT+plotH-base-h), f1(w), f1(h),
				template.HTMLEscapeString(s.Color), template.HTMLEscapeString(labels[i]), template.HTMLEscapeString(s.Name), Count(s.Values[i]))
			base += h
		}
	}
	every := max(n/6, 1)
	lab := map[int]string{}
	for i := 0; i < n && i < len(labels); i += every {
		lab[i] = labels[i]
	}
	xLabels(&b, n, lab, xName)
	// Legend.
	for k, s := range stacks {
		lx := marginL + 8 + k*120
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" font-size="11">%s</text>`,
			lx, marginT, template.HTMLEscapeString(s.Color), lx+14, marginT+9, template.HTMLEscapeString(s.Name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// HourlyChart is the rollout's installs and failures per hour.
func HourlyChart(hours []server.HourResults) template.HTML {
	labels := make([]string, len(hours))
	inst := make([]int64, len(hours))
	fail := make([]int64, len(hours))
	for i, h := range hours {
		labels[i] = h.Hour.UTC().Format("02 15h")
		inst[i], fail[i] = h.Installed, h.Failed
	}
	return StackedBars("Installs and failures per hour", "hour (UTC)", "handsets", labels, []Stack{
		{Name: "installed", Class: "s-installed", Color: "#2a7", Values: inst},
		{Name: "failed or rolled back", Class: "s-failed", Color: "#c33", Values: fail},
	})
}

// StatesChart is where the rollout's handsets stood at the end of each
// hour, stacked: installed, failed (or rolled back), installing
// (downloading to installing) and offered (no report yet). The legend
// names stay short: the legend places them at a fixed spacing.
func StatesChart(hours []server.HourStates) template.HTML {
	labels := make([]string, len(hours))
	inst := make([]int64, len(hours))
	fail := make([]int64, len(hours))
	down := make([]int64, len(hours))
	pend := make([]int64, len(hours))
	for i, h := range hours {
		labels[i] = h.Hour.UTC().Format("02 15h")
		inst[i], fail[i], down[i], pend[i] = h.Installed, h.Failed+h.RolledBack, h.Downloading, h.Pending
	}
	return StackedBars("Handset states at the end of each hour", "hour (UTC)", "handsets", labels, []Stack{
		{Name: "installed", Class: "s-installed", Color: "#2a7", Values: inst},
		{Name: "failed", Class: "s-failed", Color: "#c33", Values: fail},
		{Name: "installing", Class: "s-downloading", Color: "#e9a23b", Values: down},
		{Name: "offered", Class: "s-pending", Color: "#8aa4c8", Values: pend},
	})
}
