package signing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// ReadPassphrase gets a key passphrase for a command-line tool. If envVar
// names a set, non-empty environment variable, its value is the passphrase
// (scripts and CI). Otherwise, if in is a terminal, it writes prompt to out
// and reads a line without echo; with confirm it asks a second time and
// fails if the two differ, so a typo cannot lock a new key away. Anything
// else is an error that names envVar: a pipe is never read, because a
// passphrase prompt answered by the next line of a script is a mistake.
func ReadPassphrase(envVar, prompt string, confirm bool, in *os.File, out io.Writer) ([]byte, error) {
	if envVar != "" {
		if v := os.Getenv(envVar); v != "" {
			return []byte(v), nil
		}
	}
	if in == nil || !term.IsTerminal(int(in.Fd())) {
		if envVar == "" {
			return nil, errors.New("no passphrase: run in a terminal")
		}
		return nil, fmt.Errorf("no passphrase: set $%s or run in a terminal", envVar)
	}
	if out == nil {
		out = io.Discard
	}
	pass, err := readHidden(in, out, prompt)
	if err != nil {
		return nil, err
	}
	if len(pass) == 0 {
		return nil, fmt.Errorf("%w: empty passphrase", ErrPassphraseRequired)
	}
	if confirm {
		again, err := readHidden(in, out, "(again) "+prompt)
		if err != nil {
			return nil, err
		}
		same := bytes.Equal(pass, again)
		clear(again)
		if !same {
			clear(pass)
			return nil, errors.New("passphrases do not match")
		}
	}
	return pass, nil
}

func readHidden(in *os.File, out io.Writer, prompt string) ([]byte, error) {
	fmt.Fprint(out, prompt)
	pass, err := term.ReadPassword(int(in.Fd()))
	// The user's Enter was not echoed either; end the prompt's line.
	fmt.Fprintln(out)
	if err != nil {
		return nil, fmt.Errorf("read passphrase: %w", err)
	}
	return pass, nil
}
