package web

import (
	"context"
	"encoding/json"
	"html"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
)

var tagRE = regexp.MustCompile(`<[^>]*>`)

// pageText is an HTML fragment's text, tags removed and spaces collapsed.
func pageText(fragment string) string {
	return strings.Join(strings.Fields(html.UnescapeString(tagRE.ReplaceAllString(fragment, " "))), " ")
}

// draftText is the text of draft id's entry in the releases page's history.
func draftText(tb testing.TB, body, id string) string {
	tb.Helper()
	i := strings.Index(body, `data-draft="`+id+`"`)
	if i < 0 {
		tb.Fatalf("the page has no entry for draft %s", id)
	}
	j := strings.Index(body[i:], "</article>")
	return pageText(body[i : i+j])
}

// TestReleasesPageHistory: the releases page reads as a history, newest
// first: each draft's kind in words, its one-line summary, its state
// with the time it closed, its signatures k of n with the key ids and
// the users who uploaded them (from the audit log), and a release whose
// target a later yank removed marked as yanked, by which draft and when.
func TestReleasesPageHistory(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	t0 := time.Date(2026, 12, 7, 5, 48, 1, 0, time.UTC)
	at := func(m int) *time.Time { x := t0.Add(time.Duration(m) * time.Minute); return &x }
	kA, kB, kC := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	signed := func(what string, ids ...string) manifests.PartStatus {
		return manifests.PartStatus{Part: "targets", What: what, Threshold: 2, KeyIDs: []string{kA, kB, kC}, Signed: ids}
	}
	const path = "cm/CM-1/update.zip"
	e.backend.drafts = []*manifests.DraftView{ // newest first, as Drafts answers
		{ID: "d-5", State: manifests.DraftPending, Kind: manifests.DraftKindRelease, CreatedBy: "rel-eng", CreatedAt: *at(50),
			Summary: "adds target cm/CM-2/update.zip", Added: []string{"cm/CM-2/update.zip"},
			Thresholds: []manifests.PartStatus{signed("root v2's targets keys", kA)}},
		{ID: "d-4", State: manifests.DraftPublished, Kind: manifests.DraftKindRotate, CreatedBy: "rel-eng", CreatedAt: *at(40), ClosedAt: at(41),
			Summary:    "rotates root to v2: root keys 2 of 3, adds cccccccccccc, removes dddddddddddd; targets keys 2 of 3, unchanged",
			Thresholds: []manifests.PartStatus{signed("root v1's root keys", kA, kB), signed("new root v2's root keys", kA, kB)}},
		{ID: "d-3", State: manifests.DraftPublished, Kind: manifests.DraftKindYank, CreatedBy: "carol", CreatedAt: *at(30), ClosedAt: at(31),
			Summary: "yanks " + path, Removed: []string{path}, Changes: []string{"removes target " + path + ": handsets are no longer offered it"},
			Thresholds: []manifests.PartStatus{signed("root v1's targets keys", kA, kB)}},
		{ID: "d-2", State: manifests.DraftPublished, Kind: manifests.DraftKindRelease, CreatedBy: "rel-eng", CreatedAt: *at(20), ClosedAt: at(21),
			Summary: "adds target " + path, Added: []string{path}, Changes: []string{"adds target " + path + " (3 bytes, sha256 00)"},
			Thresholds: []manifests.PartStatus{signed("root v1's targets keys", kB, kC)}},
		{ID: "d-1", State: manifests.DraftPublished, Kind: manifests.DraftKindInit, CreatedBy: "rel-eng", CreatedAt: *at(10), ClosedAt: at(11),
			Summary:    "ceremony: root v1 with root keys 2 of 3 (aaaaaaaaaaaa, bbbbbbbbbbbb, cccccccccccc) and targets keys 2 of 3 (aaaaaaaaaaaa, bbbbbbbbbbbb, cccccccccccc); targets v1, empty",
			Thresholds: []manifests.PartStatus{signed("new root v1's root keys", kA, kB), signed("root v1's targets keys", kA, kB)}},
	}
	sign := func(draft, actor string, keys ...string) audit.AuditEntry {
		return audit.AuditEntry{At: t0, Actor: actor, Action: "draft.sign", Object: draft,
			Detail: `{"digest":"ff","signatures":["targets:` + strings.Join(keys, `","targets:`) + `"]}`}
	}
	e.audit.AppendAudit(ctx, sign("d-1", "alice", kA), sign("d-1", "bob", kB), sign("d-2", "bob", kB), sign("d-2", "carol", kC),
		sign("d-3", "alice", kA), sign("d-3", "bob", kB), sign("d-4", "alice", kA), sign("d-4", "bob", kB), sign("d-5", "alice", kA),
		audit.AuditEntry{At: t0, Actor: "mallory", Action: "draft.discard", Object: "d-2", Detail: `{"signatures":["targets:` + kC + `"]}`})

	body := e.do(t, identity.RoleViewer, "GET", "/releases", nil).Body.String()
	order := []int{}
	for _, id := range []string{"d-5", "d-4", "d-3", "d-2", "d-1"} {
		order = append(order, strings.Index(body, `data-draft="`+id+`"`))
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] < 0 || order[i] < order[i-1] {
			t.Fatalf("history not newest first: positions %v", order)
		}
	}
	tests := []struct {
		id   string
		want []string
	}{
		{"d-5", []string{"release · pending · draft d-5 by rel-eng", "adds target cm/CM-2/update.zip",
			"root v2's targets keys: signatures 1 of 2 (3 keys may sign) by aaaaaaaaaaaa (alice)"}},
		{"d-4", []string{"root rotation · published 2026-12-07 06:29", "rotates root to v2: root keys 2 of 3, adds cccccccccccc",
			"root v1's root keys: signatures 2 of 2 (3 keys may sign) by aaaaaaaaaaaa (alice), bbbbbbbbbbbb (bob): threshold met",
			"new root v2's root keys: signatures 2 of 2"}},
		{"d-3", []string{"yank · published 2026-12-07 06:19", "yanks " + path, "by carol"}},
		{"d-2", []string{"release · published 2026-12-07 06:09", "adds target " + path,
			"Yanked by draft d-3 of carol, published 2026-12-07 06:19", "by bbbbbbbbbbbb (bob), cccccccccccc (carol): threshold met"}},
		{"d-1", []string{"ceremony · published 2026-12-07 05:59", "ceremony: root v1 with root keys 2 of 3",
			"new root v1's root keys: signatures 2 of 2 (3 keys may sign) by aaaaaaaaaaaa (alice), bbbbbbbbbbbb (bob): threshold met",
			"root v1's targets keys: signatures 2 of 2"}},
	}
	for _, tc := range tests {
		got := draftText(t, body, tc.id)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("draft %s reads %q\nwant it to contain %q", tc.id, got, w)
			}
		}
		if tc.id != "d-2" && strings.Contains(got, "Yanked") {
			t.Errorf("draft %s is marked yanked: %q", tc.id, got)
		}
	}
	if got := draftText(t, body, "d-2"); strings.Contains(got, "mallory") {
		t.Errorf("a discard was read as a signature upload: %q", got)
	}
	yanked := pageText(body[strings.Index(body, "<h2>Yanked</h2>"):strings.Index(body, "<h2>History</h2>")])
	if want := path + " yanked by draft d-3 of carol, published 2026-12-07 06:19"; !strings.Contains(yanked, want) {
		t.Errorf("yanked section reads %q, want %q", yanked, want)
	}
	if !strings.Contains(body, `<div class="scroll">`) {
		t.Error("the published releases table is not in a scrolling box")
	}
}

// TestAuditPageDetailsAndPlaceholders: a JSON detail shows as a key:
// value list (lists joined), not as raw JSON that stretches the page;
// free text stays as it is; the since/until placeholders are the last
// hour, not a fixed old date.
func TestAuditPageDetailsAndPlaceholders(t *testing.T) {
	e := newEnv(t)
	e.audit.AppendAudit(context.Background(),
		audit.AuditEntry{At: time.Now(), Actor: "bob", Action: "draft.sign", Object: "d-1",
			Detail: `{"digest":"` + strings.Repeat("e", 64) + `","signatures":["root:k1","targets:k2"],"n":2,"nested":{"a":1}}`},
		audit.AuditEntry{At: time.Now(), Actor: "bob", Action: "note", Object: "x", Detail: "plain words"})
	before := time.Now().UTC()
	body := e.do(t, identity.RoleViewer, "GET", "/audit", nil).Body.String()
	after := time.Now().UTC()
	for _, w := range []string{"<dt>digest</dt><dd>" + strings.Repeat("e", 64) + "</dd>", "<dt>signatures</dt><dd>root:k1, targets:k2</dd>",
		"<dt>n</dt><dd>2</dd>", `<dt>nested</dt><dd>{&#34;a&#34;:1}</dd>`, `<td data-label="Detail">plain words</td>`} {
		if !strings.Contains(body, w) {
			t.Errorf("audit page lacks %s", w)
		}
	}
	if strings.Contains(body, "&#34;signatures&#34;") {
		t.Error("audit page shows a detail as raw JSON")
	}
	for _, tc := range []struct{ name, layout string }{{"since", "-1h"}, {"until", "now"}} {
		ok := false
		for _, now := range []time.Time{before, after} {
			want := now.Format("2006-01-02T15:04")
			if tc.layout == "-1h" {
				want = now.Add(-time.Hour).Format("2006-01-02T15:04")
			}
			if strings.Contains(body, `name="`+tc.name+`" value="" placeholder="`+want+`"`) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("the %s placeholder is not relative to now (%s):\n%s", tc.name, tc.layout, regexp.MustCompile(`<label>.*</label>`).FindAllString(body, -1))
		}
	}
	if strings.Contains(body, "2026-12-01") || strings.Contains(body, "2026-12-02") {
		t.Error("the audit page still shows the old example dates")
	}
	if !strings.Contains(body, `<div class="scroll">`) {
		t.Error("the audit table is not in a scrolling box")
	}
}

// TestReleasesPageShowsIncrementalsUnderTheirRelease: an incremental
// payload is listed under the release it belongs to, not as a release of
// its own, and the new-rollout form does not offer it.
func TestReleasesPageShowsIncrementalsUnderTheirRelease(t *testing.T) {
	e := newEnv(t)
	inc := func(path, from string) manifests.TargetInfo {
		c, _ := json.Marshal(manifests.TargetCustom{PatchID: "CM-1", InstallsBuild: "7.5.0",
			Incremental: &manifests.Incremental{Of: "cm/CM-1/update.zip", FromBuild: from, Format: manifests.FormatPackage}})
		return manifests.TargetInfo{Path: path, Length: 100, SHA256: "cd", Custom: c}
	}
	st := e.backend.status
	full, _ := json.Marshal(manifests.TargetCustom{PatchID: "CM-1", InstallsBuild: "7.5.0",
		Incrementals: map[string]string{"7.4.2": "cm/CM-1/update.from-7.4.2.zip", "7.4.1": "cm/CM-1/update.from-7.4.1.zip"}})
	st.Targets = []manifests.TargetInfo{{Path: "cm/CM-1/update.zip", Length: 1234567, SHA256: "ab", Custom: full},
		inc("cm/CM-1/update.from-7.4.1.zip", "7.4.1"), inc("cm/CM-1/update.from-7.4.2.zip", "7.4.2")}
	body := e.do(t, identity.RoleViewer, "GET", "/releases", nil).Body.String()
	if !strings.Contains(body, "incrementals from 7.4.1, 7.4.2") {
		t.Error("the release does not list its incrementals")
	}
	if strings.Contains(body, "<code>cm/CM-1/update.from-7.4.1.zip</code>") {
		t.Error("an incremental payload is listed as a release of its own")
	}
	form := e.do(t, identity.RoleOperator, "GET", "/rollouts/new", nil).Body.String()
	if !strings.Contains(form, "cm/CM-1/update.zip") || strings.Contains(form, "update.from-7.4.1.zip") {
		t.Error("the new-rollout form does not offer the release alone")
	}
}
