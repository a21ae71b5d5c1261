package web

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"math"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/humanize"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// page is what every template gets: the chrome (user, banner, CSRF
// token) and the page's own Data.
type page struct {
	Title  string
	Banner string
	Path   string
	User   *identity.User
	CSRF   string
	// Flash is a success message, Error a refusal, shown above the page.
	Flash, Error string
	Data         any
	// Live, when set, is the URL of the page's content alone: static/live.js
	// fetches it every LiveEvery milliseconds and swaps it in, so that
	// every part of the page that can change (numbers, tables, the actions
	// the state allows) stays current without a reload.
	Live      string
	LiveEvery int64
}

// Can reports whether the page's user may do perm: templates render an
// action only for those who may take it (the server checks again).
func (p *page) Can(perm string) bool { return p.User.Can(identity.Permission(perm)) }

// MinCell is the smallest count a breakdown cell shows; 1 to MinCell-1
// handsets show as "<5", so that a table cannot single one out.
const MinCell = 5

// Masked is how a breakdown cell of 1 to MinCell-1 handsets shows.
const Masked = "<5"

// Cell formats a breakdown cell: the count with thousands separators, 0
// as 0 (a cell of no handset singles none out), or Masked from 1 to
// MinCell-1.
func Cell(n int64) string {
	if n > 0 && n < MinCell {
		return Masked
	}
	return Count(n)
}

// Count formats a total with thousands separators.
func Count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// share formats a share (0..1) as a percentage.
func share(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "–"
	}
	return strconv.FormatFloat(math.Round(f*1000)/10, 'f', 1, 64) + "%"
}

// pctText is a percent as typed: 10%, 0.5%.
func pctText(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) + "%" }

// ratio is n/d as a share, 0 without d.
func ratio(n, d int64) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / float64(d)
}

var funcs = template.FuncMap{
	"cell":  Cell,
	"count": Count,
	"share": share,
	"ratio": ratio,
	"pct":   pctText,
	"millis": func(ms int64) string {
		d := time.Duration(ms) * time.Millisecond
		if d < time.Second {
			return d.String()
		}
		return humanDuration(d)
	},
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	// stage is a stage index as people count it: "stage 1 of 2", as
	// otactl says.
	"stage":    func(i int) int { return i + 1 },
	"duration": func(seconds int64) string { return humanDuration(time.Duration(seconds) * time.Second) },
	"seconds": func(f *float64) string {
		if f == nil {
			return "–"
		}
		return humanDuration(time.Duration(*f * float64(time.Second)))
	},
	"join": strings.Join,
	"percentOf": func(n, d int64) int64 { // for <progress>
		if d <= 0 {
			return 0
		}
		return min(100, n*100/d)
	},
	"list":       func(v ...any) []any { return v },
	"sub":        func(a, b int64) int64 { return a - b },
	"bytes":      humanize.Bytes,
	"sortedKeys": func(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) },
	// span is a policy's duration as the API writes it: 6h, 90m.
	"span": rollout.FormatDuration,
}

// parsePages parses the layout with each page template: pages[name] is
// "layout.html" with that page's "content" (and "live") blocks.
func parsePages(fsys fs.FS) (map[string]*template.Template, error) {
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(fsys, "layout.html")
	if err != nil {
		return nil, fmt.Errorf("web: parse layout: %w", err)
	}
	names, err := fs.Glob(fsys, "*.html")
	if err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		if n == "layout.html" {
			continue
		}
		t, err := template.Must(base.Clone()).ParseFS(fsys, n)
		if err != nil {
			return nil, fmt.Errorf("web: parse %s: %w", n, err)
		}
		pages[strings.TrimSuffix(path.Base(n), ".html")] = t
	}
	for _, want := range []string{"login", "error", "overview", "rollouts", "rollout", "rollout_new", "confirm", "releases",
		"device", "devices", "audit", "users", "tokens"} {
		if pages[want] == nil {
			return nil, fmt.Errorf("web: template %s.html is missing", want)
		}
	}
	return pages, nil
}

// render writes page name with status; part "live" renders only the
// page's content block (what static/live.js fetches and swaps in).
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p *page) {
	t := h.pages[name]
	var buf bytes.Buffer
	tmpl := "layout.html"
	if p.Live != "" {
		p.LiveEvery = h.liveEvery.Milliseconds()
		if r.URL.Query().Get("part") == "live" {
			tmpl = "content"
		}
	}
	if err := t.ExecuteTemplate(&buf, tmpl, p); err != nil {
		h.log.ErrorContext(r.Context(), "render", "page", name, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// renderError answers status with a page that says msg.
func (h *Handler) renderError(w http.ResponseWriter, r *http.Request, p *page, status int, msg string) {
	if p == nil {
		p = &page{Banner: h.opts.Banner, Path: r.URL.Path}
	}
	p.Title = http.StatusText(status)
	p.Error = msg
	p.Data = status
	h.render(w, r, status, "error", p)
}

// humanDuration is a duration for people: days past two, else hours and
// minutes.
func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "expired " + humanDuration(-d) + " ago"
	case d >= 48*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	case d >= time.Minute:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	return d.Round(time.Second).String()
}
