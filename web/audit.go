package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/audit"
)

// auditRow is an audit entry as the audit page shows it: its detail as
// a key: value list when it is a JSON object, so that it wraps inside
// the page instead of stretching it.
type auditRow struct {
	audit.AuditEntry
	Items []detailItem
}

// detailItem is one field of an entry's detail.
type detailItem struct{ Key, Value string }

// detailItems reads detail as a JSON object, keys sorted; ok is false
// for free text (shown as it is). Lists of plain values read as "a, b",
// and anything nested as compact JSON.
func detailItems(detail string) (items []detailItem, ok bool) {
	var obj map[string]json.RawMessage
	if !strings.HasPrefix(strings.TrimSpace(detail), "{") || json.Unmarshal([]byte(detail), &obj) != nil {
		return nil, false
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		items = append(items, detailItem{Key: k, Value: detailValue(obj[k])})
	}
	return items, true
}

func detailValue(raw json.RawMessage) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return string(raw)
	}
	switch x := v.(type) {
	case nil:
		return "–"
	case string:
		return x
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			switch e.(type) {
			case map[string]any, []any:
				return compactJSON(raw)
			case string:
				parts[i] = e.(string)
			default:
				parts[i] = fmt.Sprint(e)
			}
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		return compactJSON(raw)
	}
	return compactJSON(raw) // numbers and booleans as written
}

func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// auditRows prepares entries for the page.
func auditRows(es []audit.AuditEntry) []auditRow {
	out := make([]auditRow, len(es))
	for i, e := range es {
		out[i] = auditRow{AuditEntry: e}
		out[i].Items, _ = detailItems(e.Detail)
	}
	return out
}

// Filter placeholders: examples relative to now (the last hour), in the
// layouts parseWhen reads, so that the form never shows a stale date.
const filterLayout = "2006-01-02T15:04"

func sincePlaceholder(now time.Time) string { return now.UTC().Add(-time.Hour).Format(filterLayout) }
func untilPlaceholder(now time.Time) string { return now.UTC().Format(filterLayout) }
