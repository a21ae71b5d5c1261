package signing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// openPTY returns both ends of a new pseudo-terminal, so the prompt path of
// ReadPassphrase runs against a real terminal without a person.
func openPTY(tb testing.TB) (master, slave *os.File) {
	tb.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		tb.Skipf("no pseudo-terminal: %v", err)
	}
	var unlock int32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		m.Close()
		tb.Skipf("unlock pty: %v", e)
	}
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, m.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		m.Close()
		tb.Skipf("pty number: %v", e)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		tb.Skipf("open pty: %v", err)
	}
	// Drain what the terminal echoes before ReadPassword turns echo off.
	go io.Copy(io.Discard, m)
	tb.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

func TestReadPassphraseTerminal(t *testing.T) {
	tests := []struct {
		name    string
		confirm bool
		typed   string
		want    string
		wantErr string
		prompts int
	}{
		{"once", false, "s3cret\n", "s3cret", "", 1},
		{"confirmed", true, "s3cret\ns3cret\n", "s3cret", "", 2},
		{"mismatch", true, "s3cret\ns3cre7\n", "", "passphrases do not match", 2},
		{"empty", true, "\n", "", "passphrase required: empty passphrase", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OTA_TEST_UNSET_VARIABLE", "")
			master, slave := openPTY(t)
			var out bytes.Buffer
			type result struct {
				pass []byte
				err  error
			}
			done := make(chan result, 1)
			go func() {
				p, err := ReadPassphrase("OTA_TEST_UNSET_VARIABLE", "key passphrase: ", tc.confirm, slave, &out)
				done <- result{p, err}
			}()
			if _, err := master.Write([]byte(tc.typed)); err != nil {
				t.Fatal(err)
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(time.Minute): // only bounds a hang
				t.Fatal("ReadPassphrase did not return")
			}
			if tc.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
					t.Errorf("got %q, %v, want error %q", r.pass, r.err, tc.wantErr)
				}
			} else if r.err != nil || string(r.pass) != tc.want {
				t.Errorf("got %q, %v, want %q", r.pass, r.err, tc.want)
			}
			if got := strings.Count(out.String(), "key passphrase: "); got != tc.prompts {
				t.Errorf("got %d prompts in %q, want %d", got, out.String(), tc.prompts)
			}
			if errors.Is(r.err, ErrPassphraseRequired) != strings.Contains(tc.wantErr, "required") {
				t.Errorf("errors.Is(%v, ErrPassphraseRequired) is wrong", r.err)
			}
		})
	}
}
