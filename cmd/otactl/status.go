package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/manifests"
)

func (c *cli) status(args []string) error {
	var sf serverFlags
	fs := newFlagSet("status [flags]",
		"Shows the published repository: whether it is initialized, each role's version and\nexpiry (with warnings), the published targets and the pending draft.", c.stderr)
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	st, err := cl.RepoStatus(c.ctx)
	if err != nil {
		return cl.explain(err)
	}
	printStatus(c.stdout, st, time.Now())
	return nil
}

func printStatus(w io.Writer, st *manifests.Status, now time.Time) {
	if st.Initialized {
		fmt.Fprintf(w, "repository: initialized (online key %s)\n", esc(st.OnlineKeyID))
	} else {
		next := "run otactl repo init"
		if st.Pending != nil && st.Pending.Kind == manifests.DraftKindInit {
			next = "the ceremony draft waits for signatures: otactl repo sign"
		}
		fmt.Fprintf(w, "repository: not initialized (online key %s); %s\n", esc(st.OnlineKeyID), next)
	}
	for _, r := range st.Roles {
		role := esc(r.Role)
		fmt.Fprintf(w, "  %-9s v%-4d expires %s (%s)\n", role, r.Version, r.Expires.UTC().Format(time.RFC3339), until(r.Expires, now))
		switch {
		case !r.Expires.After(now):
			fmt.Fprintf(w, "    WARNING: %s v%d has EXPIRED: handsets refuse it until a new %s is signed\n", role, r.Version, role)
		case r.Warning != "":
			fmt.Fprintf(w, "    WARNING: %s\n", esc(r.Warning))
		}
	}
	fmt.Fprintf(w, "published targets: %d\n", len(st.Targets))
	for _, t := range st.Targets {
		fmt.Fprintf(w, "  %s\n    %d bytes, sha256 %s\n", esc(t.Path), t.Length, esc(t.SHA256))
		if len(t.Custom) > 0 {
			fmt.Fprintf(w, "    %s\n", describeCustom(t.Custom))
		}
	}
	if st.Pending == nil {
		fmt.Fprintln(w, "pending draft: none")
		return
	}
	p := st.Pending
	fmt.Fprintf(w, "pending draft: %s (%s) by %s, %s\n", esc(p.ID), esc(p.Kind), esc(p.CreatedBy), p.CreatedAt.UTC().Format(time.RFC3339))
	for _, t := range p.Thresholds {
		fmt.Fprintf(w, "  %s\n", thresholdLine(t))
	}
}

// until says how long until t, in days (or hours when less than two days).
func until(t, now time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "expired " + roughDuration(-d) + " ago"
	}
	return "in " + roughDuration(d)
}

func roughDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
}

// thresholdLine is "root: 1 of 2 signed (new root v1's root keys)".
func thresholdLine(t manifests.PartStatus) string {
	s := fmt.Sprintf("%s: %d of %d signed (%s", esc(t.Part), len(t.Signed), t.Threshold, esc(t.What))
	if len(t.KeyIDs) != t.Threshold {
		s += fmt.Sprintf(", %d keys may sign", len(t.KeyIDs))
	}
	s += ")"
	if len(t.Signed) >= t.Threshold {
		s += ", threshold met"
	}
	return s
}

// describeCustom prints a target's custom metadata: every known field and
// any other key, so that nothing signed goes unseen, escaped (esc).
func describeCustom(raw json.RawMessage) string {
	var all map[string]any
	if err := json.Unmarshal(raw, &all); err != nil {
		return "custom: (not a JSON object) " + esc(string(raw))
	}
	var c manifests.TargetCustom
	if err := json.Unmarshal(raw, &c); err != nil {
		return "custom: (unexpected shape) " + esc(string(raw))
	}
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("patch_id", c.PatchID)
	add("models", strings.Join(c.Models, ","))
	add("build_min", c.BuildMin)
	add("build_max", c.BuildMax)
	add("installs_build", c.InstallsBuild)
	add("cloud_messaging_default", c.CloudMessagingDefault)
	add("number_encryption", c.NumberEncryption)
	if !c.Released.IsZero() {
		add("released", c.Released.UTC().Format(time.RFC3339))
	}
	for _, k := range sortedKeys(c.Extra) {
		add("extra."+k, fmt.Sprintf("%q", c.Extra[k]))
	}
	var incs []string
	for _, b := range sortedKeys(c.Incrementals) {
		incs = append(incs, esc(b)+":"+esc(c.Incrementals[b]))
	}
	add("incrementals", strings.Join(incs, ","))
	if i := c.Incremental; i != nil {
		add("incremental", fmt.Sprintf("%s payload of %s for build %s", esc(i.Format), esc(i.Of), esc(i.FromBuild)))
	}
	known := map[string]bool{"patch_id": true, "models": true, "build_min": true, "build_max": true, "installs_build": true,
		"cloud_messaging_default": true, "number_encryption": true, "extra": true, "released": true,
		"incrementals": true, "incremental": true}
	for _, k := range sortedKeys(all) {
		if !known[k] {
			b, _ := json.Marshal(all[k])
			parts = append(parts, k+"="+string(b))
		}
	}
	if len(parts) == 0 {
		return "custom: (none)"
	}
	return "custom: " + esc(strings.Join(parts, " "))
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
