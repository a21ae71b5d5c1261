package web

import (
	"fmt"
	"html/template"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server"
)

// Chart geometry, in SVG user units. The SVG scales to its box (the
// style sheet caps it at the page's width): on a 360 px screen, less the
// page's padding, a chart is about 320 px wide, a unit 0.8 px, and the
// 14-unit font 11 px. The top margin holds up to two rows of legend; the
// bottom one the time labels and the axis's name.
const (
	chartW, chartH          = 400, 260
	fontSize                = 14
	marginL, marginR        = 54, 8
	marginT, marginB        = 46, 42
	plotW                   = chartW - marginL - marginR
	plotH                   = chartH - marginT - marginB
	legendRow               = 18
	maxProjectionChartDays  = 90
	projectionChartMinSlope = 1e-9
	// xTicks is how many time labels an axis aims at; those that would
	// overlap are left out.
	xTicks = 4
	// maxSamplePoints is how many exposure samples get a point (with
	// its numbers on hover); past it, only the last does.
	maxSamplePoints = 60
	// charWidth estimates a character's width, in units of the font
	// size, to keep labels apart and inside the chart.
	charWidth = 0.65
)

// f1 formats a coordinate with one decimal.
func f1(v float64) string { return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) }

// textWidth estimates the width of s at the chart's font size.
func textWidth(s string) float64 { return float64(len([]rune(s))) * fontSize * charWidth }

// svgOpen starts a chart with its accessible title.
func svgOpen(b *strings.Builder, title string) {
	fmt.Fprintf(b, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg"><title>%s</title>`,
		chartW, chartH, chartW, chartH, template.HTMLEscapeString(title), template.HTMLEscapeString(title))
}

// yAxis draws horizontal grid lines and labels at ticks (values in
// 0..top, formatted by label).
func yAxis(b *strings.Builder, top float64, ticks int, label func(float64) string) {
	for i := 0; i <= ticks; i++ {
		v := top * float64(i) / float64(ticks)
		y := marginT + plotH - plotH*float64(i)/float64(ticks)
		fmt.Fprintf(b, `<line class="grid" x1="%d" y1="%s" x2="%d" y2="%s" stroke="#ddd"/>`, marginL, f1(y), marginL+plotW, f1(y))
		fmt.Fprintf(b, `<text class="tick" x="%d" y="%s" text-anchor="end" font-size="%d">%s</text>`, marginL-5, f1(y+5), fontSize, template.HTMLEscapeString(label(v)))
	}
}

// tick is a label of the time axis at x.
type tick struct {
	x    float64
	text string
}

// xAxis writes the labels of the time axis that fit: the last always,
// then from the left those that keep clear of the ones placed. A label
// that would cross an edge of the chart is anchored at that edge
// instead of centred. name is the axis's name, under the labels.
func xAxis(b *strings.Builder, ticks []tick, name string) {
	type span struct{ lo, hi float64 }
	place := func(t tick) (span, string, float64) {
		w := textWidth(t.text)
		switch {
		case t.x+w/2 > chartW-2:
			return span{chartW - 2 - w, chartW - 2}, "end", chartW - 2
		case t.x-w/2 < 2:
			return span{2, 2 + w}, "start", 2
		}
		return span{t.x - w/2, t.x + w/2}, "middle", t.x
	}
	var placed []span
	write := func(t tick) {
		s, anchor, x := place(t)
		for _, p := range placed {
			if s.lo < p.hi+fontSize && p.lo < s.hi+fontSize {
				return
			}
		}
		placed = append(placed, s)
		fmt.Fprintf(b, `<text class="tick" x="%s" y="%d" text-anchor="%s" font-size="%d">%s</text>`,
			f1(x), marginT+plotH+17, anchor, fontSize, template.HTMLEscapeString(t.text))
	}
	if n := len(ticks); n > 0 {
		write(ticks[n-1])
		for _, t := range ticks[:n-1] {
			write(t)
		}
	}
	fmt.Fprintf(b, `<text class="axis-label" x="%d" y="%d" text-anchor="middle" font-size="%d">%s</text>`,
		marginL+plotW/2, chartH-6, fontSize, template.HTMLEscapeString(name))
}

// legendItem is one entry of a chart's legend: a swatch (a box, or a
// line, dashed when dash is set) and its name.
type legendItem struct {
	name, color string
	line        bool
	dash        string
}

// legend writes the items in rows across the top margin, wrapping when
// a row is full.
func legend(b *strings.Builder, items []legendItem) {
	x, row := float64(marginL), 0
	for _, it := range items {
		w := 18 + textWidth(it.name) + 14
		if x+w-14 > chartW-marginR && x > marginL {
			x, row = marginL, row+1
		}
		y := 6 + row*legendRow
		if it.line {
			dash := ""
			if it.dash != "" {
				dash = ` stroke-dasharray="` + it.dash + `"`
			}
			fmt.Fprintf(b, `<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="%s" stroke-width="2"%s/>`, f1(x), y+6, f1(x+12), y+6,
				template.HTMLEscapeString(it.color), dash)
		} else {
			fmt.Fprintf(b, `<rect x="%s" y="%d" width="12" height="12" fill="%s"/>`, f1(x), y, template.HTMLEscapeString(it.color))
		}
		fmt.Fprintf(b, `<text class="legend" x="%s" y="%d" font-size="%d">%s</text>`, f1(x+18), y+11, fontSize, template.HTMLEscapeString(it.name))
		x += w
	}
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

// shortCount is a count for an axis: 950, 12k, 1.5M.
func shortCount(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return strconv.FormatFloat(math.Round(v/1e5)/10, 'f', -1, 64) + "M"
	case a >= 1e4:
		return strconv.FormatFloat(math.Round(v/1e3), 'f', -1, 64) + "k"
	case a >= 1e3:
		return strconv.FormatFloat(math.Round(v/1e2)/10, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(math.Round(v), 'f', -1, 64)
}

// shortShare is a share for an axis, without a needless decimal: 100%,
// 37.5%, 0%.
func shortShare(f float64) string {
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%"
}

// shortTime is a label of t on an axis whose points are step apart:
// seconds under a minute, the day of the month once steps reach hours.
func shortTime(t time.Time, step time.Duration) string {
	t = t.UTC()
	switch {
	case step < time.Minute:
		return t.Format("15:04:05")
	case step >= 24*time.Hour:
		return t.Format("Jan 2")
	case step >= time.Hour:
		return t.Format("Jan 2 15h")
	}
	return t.Format("15:04")
}

// Every is "every minute", "every 2 minutes": a bucket width in words.
func Every(d time.Duration) string { return "every " + bucketWords(d) }

// bucketWords is a bucket width in words: "minute", "2 minutes".
func bucketWords(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "day"}, {time.Hour, "hour"}, {time.Minute, "minute"}, {time.Second, "second"}} {
		if d >= u.d && d%u.d == 0 {
			if d == u.d {
				return u.name
			}
			return strconv.FormatInt(int64(d/u.d), 10) + " " + u.name + "s"
		}
	}
	return d.String()
}

// timeTicks are about xTicks labels of n slots, slot i at x(i) showing
// at(i).
func timeTicks(n int, x func(int) float64, at func(int) time.Time, step time.Duration) []tick {
	if n == 0 {
		return nil
	}
	every := max((n+xTicks-1)/xTicks, 1)
	var ts []tick
	for i := 0; i < n; i += every {
		ts = append(ts, tick{x(i), shortTime(at(i), step)})
	}
	if (n-1)%every != 0 {
		ts = append(ts, tick{x(n - 1), shortTime(at(n-1), step)})
	}
	return ts
}

// BurnDownTitle is the burn-down's title: what a point is.
func BurnDownTitle(daily []server.DayExposure, samples []server.ExposureSample) string {
	if useSamples(daily, samples) {
		return "Share of today's handsets still exposed, " + Every(server.ExposureSampleEvery)
	}
	return "Share of active handsets still exposed, by day"
}

// useSamples reports whether the burn-down plots the exposure samples:
// while the daily series has fewer than three days with data (a day is
// one point) and there are samples.
func useSamples(daily []server.DayExposure, samples []server.ExposureSample) bool {
	days := 0
	for _, d := range daily {
		if d.ShareCompliant != nil {
			days++
		}
	}
	return days < 3 && len(samples) > 0
}

// BurnDownChart is the exposure burn-down, as an SVG line chart: the
// share of active handsets still exposed on each day of the series,
// with a dashed projection from the latest day with data to the day the
// trend reaches the compliance target (when that is within 90 days).
// While the series has fewer than three days with data it plots the
// exposure samples instead (the last 48 hours, every minute: the
// share of the handsets seen that day so far), without the projection.
// The target line's label is in the legend, out of the data's way.
func BurnDownChart(daily []server.DayExposure, proj server.Projection, samples []server.ExposureSample) template.HTML {
	if useSamples(daily, samples) {
		return samplesChart(samples, proj, BurnDownTitle(daily, samples))
	}
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
	svgOpen(&b, BurnDownTitle(daily, samples))
	yAxis(&b, top, 4, shortShare)
	items := []legendItem{{name: "exposed", color: "#c33", line: true},
		{name: "target " + share(1-proj.TargetShare), color: "#2a7", line: true, dash: "2 3"}}
	if extra > 0 {
		items = append(items, legendItem{name: "projection", color: "#c33", line: true, dash: "5 4"})
	}
	legend(&b, items)
	ty := y(1 - proj.TargetShare)
	fmt.Fprintf(&b, `<line class="target" x1="%d" y1="%s" x2="%d" y2="%s" stroke="#2a7" stroke-dasharray="2 3"/>`, marginL, f1(ty), marginL+plotW, f1(ty))
	var pts []string
	lastI, lastV := -1, 0.0
	for i, d := range daily {
		if d.ShareCompliant == nil {
			continue
		}
		v := 1 - *d.ShareCompliant
		pts = append(pts, f1(x(i))+","+f1(y(v)))
		fmt.Fprintf(&b, `<circle class="point" cx="%s" cy="%s" r="3" fill="#c33"><title>%s: %s exposed</title></circle>`,
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
	var ticks []tick
	if n > 0 {
		ticks = append(ticks, tick{x(0), daily[0].Day})
		if n > 1 && extra <= slots/5 {
			ticks = append(ticks, tick{x(n - 1), daily[n-1].Day})
		}
	}
	if extra > 0 {
		ticks = append(ticks, tick{x(n - 1 + extra), projDate.Format(time.DateOnly)})
	}
	xAxis(&b, ticks, "day (UTC)")
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// samplesChart is the burn-down of the exposure samples: the exposed
// share of each sample, on a time axis from the first to the last.
func samplesChart(samples []server.ExposureSample, proj server.Projection, title string) template.HTML {
	// The axis spans the samples with handsets: a fleet's first sample
	// may predate every check-in.
	if i := slices.IndexFunc(samples, func(s server.ExposureSample) bool { return s.Active > 0 }); i > 0 {
		samples = samples[i:]
	}
	first, last := samples[0].At, samples[len(samples)-1].At
	span := last.Sub(first)
	top := 0.0
	for _, s := range samples {
		top = max(top, s.ShareExposed())
	}
	top = min(niceTop(max(top, 1-proj.TargetShare)), 1)
	x := func(t time.Time) float64 {
		if span <= 0 {
			return marginL + plotW/2
		}
		return marginL + 6 + (plotW-12)*float64(t.Sub(first))/float64(span)
	}
	y := func(v float64) float64 { return marginT + plotH - plotH*v/top }
	var b strings.Builder
	svgOpen(&b, title)
	yAxis(&b, top, 4, shortShare)
	legend(&b, []legendItem{{name: "exposed", color: "#c33", line: true},
		{name: "target " + share(1-proj.TargetShare), color: "#2a7", line: true, dash: "2 3"}})
	ty := y(1 - proj.TargetShare)
	fmt.Fprintf(&b, `<line class="target" x1="%d" y1="%s" x2="%d" y2="%s" stroke="#2a7" stroke-dasharray="2 3"/>`, marginL, f1(ty), marginL+plotW, f1(ty))
	pts := make([]string, 0, len(samples))
	for i, s := range samples {
		if s.Active <= 0 {
			continue
		}
		v := s.ShareExposed()
		pts = append(pts, f1(x(s.At))+","+f1(y(v)))
		if len(samples) > maxSamplePoints && i < len(samples)-1 {
			continue // the line alone: 576 points of 48 hours would weigh 80 kB
		}
		fmt.Fprintf(&b, `<circle class="point" cx="%s" cy="%s" r="2" fill="#c33"><title>%s: %s exposed (%s of %s handsets)</title></circle>`,
			f1(x(s.At)), f1(y(v)), s.At.UTC().Format("2006-01-02 15:04 UTC"), share(v), Count(s.Exposed), Count(s.Active))
	}
	if len(pts) > 0 {
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="#c33" stroke-width="2" points="%s"/>`, strings.Join(pts, " "))
	}
	// Labels to the second while the samples span a few minutes, else
	// to the minute, with the day once they span a day.
	step := max(span/xTicks, time.Second)
	ticks := []tick{{x(first), shortTime(first, step)}}
	for i := 1; i < xTicks && span > 0; i++ {
		t := first.Add(span * time.Duration(i) / xTicks)
		ticks = append(ticks, tick{x(t), shortTime(t, step)})
	}
	if span > 0 {
		ticks = append(ticks, tick{x(last), shortTime(last, step)})
	}
	xAxis(&b, ticks, "UTC, "+Every(server.ExposureSampleEvery))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// Stack is one series of a stacked bar chart.
type Stack struct {
	Name, Class, Color string
	Values             []int64
}

// StackedBars is a stacked bar chart of the series over the slots
// starting at starts, step apart, as SVG.
func StackedBars(title, xName string, starts []time.Time, step time.Duration, stacks []Stack) template.HTML {
	n := max(len(starts), 1)
	var top int64
	for i := range starts {
		var sum int64
		for _, s := range stacks {
			if i < len(s.Values) {
				sum += max(s.Values[i], 0)
			}
		}
		top = max(top, sum)
	}
	t := max(niceTop(float64(top)), 5)
	var b strings.Builder
	svgOpen(&b, title)
	yAxis(&b, t, 5, shortCount)
	slot := float64(plotW) / float64(n)
	w := max(slot*0.8, 1)
	for i, at := range starts {
		base := 0.0
		label := at.UTC().Format("2006-01-02 15:04:05")
		for _, s := range stacks {
			if i >= len(s.Values) || s.Values[i] <= 0 {
				continue
			}
			h := plotH * float64(s.Values[i]) / t
			fmt.Fprintf(&b, `<rect class="%s" x="%s" y="%s" width="%s" height="%s" fill="%s"><title>%s %s: %s</title></rect>`,
				template.HTMLEscapeString(s.Class), f1(marginL+slot*float64(i)+(slot-w)/2), f1(marginT+plotH-base-h), f1(w), f1(h),
				template.HTMLEscapeString(s.Color), label, template.HTMLEscapeString(s.Name), Count(s.Values[i]))
			base += h
		}
	}
	items := make([]legendItem, len(stacks))
	for k, s := range stacks {
		items[k] = legendItem{name: s.Name, color: s.Color}
	}
	legend(&b, items)
	x := func(i int) float64 { return marginL + slot*(float64(i)+0.5) }
	xAxis(&b, timeTicks(len(starts), x, func(i int) time.Time { return starts[i] }, step), xName)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// The counters' words and colours, shared by the charts and legends.
var (
	stackPending     = Stack{Name: "pending", Class: "s-pending", Color: "#8aa4c8"}
	stackDownloading = Stack{Name: "downloading", Class: "s-downloading", Color: "#e9a23b"}
	stackInstalled   = Stack{Name: "installed", Class: "s-installed", Color: "#2a7"}
	stackFailed      = Stack{Name: "failed", Class: "s-failed", Color: "#c33"}
	stackRolledBack  = Stack{Name: "rolled back", Class: "s-rolled-back", Color: "#7b4fa0"}
)

// timelineStarts are the starts of the timeline's buckets.
func timelineStarts(tl server.Timeline) []time.Time {
	out := make([]time.Time, len(tl.Buckets))
	for i, b := range tl.Buckets {
		out[i] = b.Start
	}
	return out
}

// ResultsTitle is the results chart's title: "Installs and failures
// per 2 minutes".
func ResultsTitle(tl server.Timeline) string {
	return "Installs and failures per " + bucketWords(tl.Bucket())
}

// ResultsChart is the rollout's installs and failures (rollbacks
// included) per bucket of its timeline.
func ResultsChart(tl server.Timeline) template.HTML {
	inst := make([]int64, len(tl.Buckets))
	fail := make([]int64, len(tl.Buckets))
	for i, b := range tl.Buckets {
		inst[i], fail[i] = b.Installs, b.Failures
	}
	installed, failed := stackInstalled, stackFailed
	installed.Values, failed.Values = inst, fail
	failed.Name = "failed or rolled back"
	return StackedBars(ResultsTitle(tl), "UTC, per "+bucketWords(tl.Bucket()), timelineStarts(tl), tl.Bucket(),
		[]Stack{installed, failed})
}

// StatesTitle is the states chart's title, which says what a bucket is
// and, for a cumulative timeline, that the counts are cumulative.
func StatesTitle(tl server.Timeline) string {
	if tl.Kind == server.TimelineCumulative {
		return "Handsets offered, installed, failed and rolled back so far, " + Every(tl.Bucket()) + " (cumulative, by latest result)"
	}
	return "Handset states at the end of every " + bucketWords(tl.Bucket())
}

// StatesChart is where the rollout's handsets stood over its timeline:
// for hour buckets, each bucket's records in each state at its end,
// stacked (pending, downloading, installed, failed, rolled back: the
// counters' words); for finer buckets, whose states the records cannot
// tell, the cumulative offered, installed, failed and rolled back as
// lines (StatesTitle says which).
func StatesChart(tl server.Timeline) template.HTML {
	if tl.Kind == server.TimelineCumulative {
		return cumulativeChart(tl)
	}
	n := len(tl.Buckets)
	pend, down := stackPending, stackDownloading
	inst, fail, back := stackInstalled, stackFailed, stackRolledBack
	for _, s := range []*Stack{&pend, &down, &inst, &fail, &back} {
		s.Values = make([]int64, n)
	}
	for i, b := range tl.Buckets {
		if b.Pending != nil {
			pend.Values[i] = *b.Pending
		}
		if b.Downloading != nil {
			down.Values[i] = *b.Downloading
		}
		inst.Values[i], fail.Values[i], back.Values[i] = b.Installed, b.Failed, b.RolledBack
	}
	return StackedBars(StatesTitle(tl), "UTC, end of every "+bucketWords(tl.Bucket()), timelineStarts(tl), tl.Bucket(),
		[]Stack{inst, fail, back, down, pend})
}

// cumulativeChart draws a TimelineCumulative timeline as lines, each
// point at its bucket's end.
func cumulativeChart(tl server.Timeline) template.HTML {
	n := max(len(tl.Buckets), 1)
	series := []struct {
		stack Stack
		value func(server.TimelineBucket) int64
	}{
		{Stack{Name: "offered", Class: "s-offered", Color: "#8aa4c8"}, func(b server.TimelineBucket) int64 { return b.Offered }},
		{stackInstalled, func(b server.TimelineBucket) int64 { return b.Installed }},
		{stackFailed, func(b server.TimelineBucket) int64 { return b.Failed }},
		{stackRolledBack, func(b server.TimelineBucket) int64 { return b.RolledBack }},
	}
	var top int64
	for _, b := range tl.Buckets {
		top = max(top, b.Offered, b.Installed, b.Failed, b.RolledBack)
	}
	t := max(niceTop(float64(top)), 5)
	x := func(i int) float64 { return marginL + plotW*float64(i+1)/float64(n) }
	y := func(v int64) float64 { return marginT + plotH - plotH*float64(v)/t }
	var b strings.Builder
	title := StatesTitle(tl)
	svgOpen(&b, title)
	yAxis(&b, t, 5, shortCount)
	items := make([]legendItem, len(series))
	for k, s := range series {
		items[k] = legendItem{name: s.stack.Name, color: s.stack.Color, line: true}
		pts := make([]string, len(tl.Buckets))
		for i, bk := range tl.Buckets {
			pts[i] = f1(x(i)) + "," + f1(y(s.value(bk)))
		}
		if len(pts) > 0 {
			last := tl.Buckets[len(tl.Buckets)-1]
			fmt.Fprintf(&b, `<polyline class="%s" fill="none" stroke="%s" stroke-width="2" points="%s"><title>%s by %s: %s</title></polyline>`,
				s.stack.Class, s.stack.Color, strings.Join(pts, " "), s.stack.Name,
				last.Start.Add(tl.Bucket()).UTC().Format("2006-01-02 15:04:05"), Count(s.value(last)))
		}
	}
	legend(&b, items)
	end := func(i int) time.Time { return tl.Buckets[i].Start.Add(tl.Bucket()) }
	xAxis(&b, timeTicks(len(tl.Buckets), x, end, tl.Bucket()), "UTC, "+Every(tl.Bucket()))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
