package signing

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// notTerminal returns a file that is not a terminal: the read end of a pipe.
func notTerminal(tb testing.TB) *os.File {
	tb.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close(); w.Close() })
	return r
}

func TestReadPassphraseFromEnv(t *testing.T) {
	t.Setenv("OTA_TEST_PASSPHRASE", "from env")
	for _, confirm := range []bool{false, true} {
		var out bytes.Buffer
		got, err := ReadPassphrase("OTA_TEST_PASSPHRASE", "passphrase: ", confirm, notTerminal(t), &out)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "from env" {
			t.Errorf("confirm=%v: got %q, want %q", confirm, got, "from env")
		}
		if out.Len() != 0 {
			t.Errorf("confirm=%v: wrote %q, want no prompt", confirm, out.String())
		}
	}
	// The environment wins even without any input file.
	if got, err := ReadPassphrase("OTA_TEST_PASSPHRASE", "", false, nil, nil); err != nil || string(got) != "from env" {
		t.Errorf("nil input: got %q, %v, want %q", got, err, "from env")
	}
}

func TestReadPassphraseNoTerminal(t *testing.T) {
	t.Setenv("OTA_TEST_EMPTY", "")
	tests := []struct {
		name    string
		envVar  string
		in      *os.File
		wantMsg string
	}{
		{"unset variable, pipe", "OTA_TEST_UNSET_VARIABLE", notTerminal(t), "no passphrase: set $OTA_TEST_UNSET_VARIABLE or run in a terminal"},
		{"empty variable, pipe", "OTA_TEST_EMPTY", notTerminal(t), "no passphrase: set $OTA_TEST_EMPTY or run in a terminal"},
		{"no variable, pipe", "", notTerminal(t), "no passphrase: run in a terminal"},
		{"nil input", "OTA_TEST_UNSET_VARIABLE", nil, "no passphrase: set $OTA_TEST_UNSET_VARIABLE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			got, err := ReadPassphrase(tc.envVar, "passphrase: ", true, tc.in, &out)
			if err == nil || got != nil {
				t.Fatalf("got %q, %v, want an error", got, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantMsg)
			}
			if out.Len() != 0 {
				t.Errorf("wrote %q, want no prompt", out.String())
			}
		})
	}
}
