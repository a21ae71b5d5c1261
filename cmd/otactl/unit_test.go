package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/humanize"
	"github.com/patchfleet/ota/manifests"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args    []string
		wantPos []string
		wantKey string
	}{
		{[]string{"ID", "--key", "k"}, []string{"ID"}, "k"},
		{[]string{"--key", "k", "ID"}, []string{"ID"}, "k"},
		{[]string{"A", "--key=k", "B"}, []string{"A", "B"}, "k"},
		{[]string{"--key", "k", "--", "--odd", "-x"}, []string{"--odd", "-x"}, "k"},
		{nil, nil, ""},
	}
	for _, tc := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		key := fs.String("key", "", "")
		pos, err := parseArgs(fs, tc.args)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !slices.Equal(pos, tc.wantPos) || *key != tc.wantKey {
			t.Errorf("%q: got %q key %q, want %q key %q", tc.args, pos, *key, tc.wantPos, tc.wantKey)
		}
	}
}

func TestProgress(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 1000)
	for _, tty := range []bool{false, true} {
		var out bytes.Buffer
		p := newProgress(&out, "f.bin", int64(len(data)), tty)
		clock := time.Unix(0, 0)
		p.start = clock
		p.now = func() time.Time { clock = clock.Add(time.Second); return clock }
		// Steps that do not fall on 10% boundaries, as a transport
		// reading 7 bytes at a time reports them.
		for sent := int64(7); ; sent += 7 {
			p.set(min(sent, int64(len(data))))
			if sent >= int64(len(data)) {
				break
			}
		}
		p.finish()
		p.set(int64(len(data))) // after finish: no output
		s := out.String()
		if tty {
			if !strings.HasPrefix(s, "\r") || !strings.HasSuffix(s, "(100%), 6 B/s\x1b[K\n") {
				t.Errorf("tty output %q: want \\r updates ending at 100%% and a newline", s)
			}
			continue
		}
		lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
		if len(lines) != 10 {
			t.Fatalf("%d lines, want 10:\n%s", len(lines), s)
		}
		if !strings.Contains(lines[0], "(10%)") {
			t.Errorf("first line %q, want 10%%", lines[0])
		}
		if !strings.Contains(lines[9], "1000 B of 1000 B (100%)") {
			t.Errorf("last line %q, want 100%%", lines[9])
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := humanize.Bytes(n); got != want {
			t.Errorf("humanize.Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDeltaCheck(t *testing.T) {
	d := targetsDelta{added: []string{"a b/new.zip"}, removed: []string{"old.zip"}}
	tests := []struct {
		name    string
		changes []string
		ok      bool
	}{
		{"matches", []string{"publishes targets v3, valid until 2026-01-01",
			"adds target a b/new.zip (10 bytes, sha256 00): patch P", "removes target old.zip: handsets are no longer offered it"}, true},
		{"hides a removal", []string{"adds target a b/new.zip (10 bytes, sha256 00)"}, false},
		{"invents an addition", []string{"adds target a b/new.zip (10 bytes)", "adds target x.zip (1 bytes)",
			"removes target old.zip: gone"}, false},
		{"calls a removal a replacement", []string{"adds target a b/new.zip (1 bytes)", "replaces target old.zip (1 bytes)"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := d.check(tc.changes)
			if (err == nil) != tc.ok {
				t.Errorf("check = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestPartsFor(t *testing.T) {
	ts := []manifests.PartStatus{
		{Part: "root", KeyIDs: []string{"a", "c"}, Signed: []string{"c"}},
		{Part: "root", KeyIDs: []string{"a", "b"}, Signed: []string{"a"}},
		{Part: "targets", KeyIDs: []string{"a", "b"}},
	}
	tests := []struct {
		key        string
		todo, done []string
	}{
		{"a", []string{"root", "targets"}, nil}, // a signed the new root but not the old one's threshold
		{"b", []string{"root", "targets"}, nil},
		{"c", nil, []string{"root"}},
		{"z", nil, nil},
	}
	for _, tc := range tests {
		todo, done := partsFor(ts, tc.key)
		if !slices.Equal(todo, tc.todo) || !slices.Equal(done, tc.done) {
			t.Errorf("key %s: todo %v done %v, want %v %v", tc.key, todo, done, tc.todo, tc.done)
		}
	}
}

func TestDraftDigest(t *testing.T) {
	// The digest of a draft without parts is sha256(sha256("") || sha256("")).
	empty := sha256.Sum256(nil)
	want := sha256.Sum256(append(empty[:], empty[:]...))
	d := &manifests.Draft{}
	if got := draftDigest(nil, nil); got != d.Digest() || got != hex.EncodeToString(want[:]) {
		t.Errorf("draftDigest = %s, server %s", got, d.Digest())
	}
	d = &manifests.Draft{Root: []byte("r"), Targets: []byte("t")}
	if got := draftDigest(d.Root, d.Targets); got != d.Digest() {
		t.Errorf("draftDigest = %s, server %s", got, d.Digest())
	}
}
