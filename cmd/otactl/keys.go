package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/term"

	"github.com/patchfleet/ota/signing"
)

// tufSigner is what go-tuf's Sign takes.
type tufSigner = signature.Signer

func (c *cli) keyGenerate(args []string) error {
	var out string
	alg := &choiceFlag{value: "ed25519", choices: []string{"ed25519", "ecdsa-p256"}}
	fs := newFlagSet("key generate --out FILE [--alg ed25519|ecdsa-p256]",
		"Creates a signing key: FILE holds the private key encrypted with a passphrase\n"+
			"(file mode 0600; from "+envPassphrase+" or asked twice), FILE.pub the public key\n"+
			"to hand to whoever runs the ceremony. Prints the key id. Existing files are never\n"+
			"overwritten. The private key never leaves this machine.", c.stderr)
	fs.StringVar(&out, "out", "", "private key file to create (required); the public key goes to FILE.pub")
	fs.Var(alg, "alg", "key algorithm: ed25519 or ecdsa-p256")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	if out == "" {
		return usageError{errors.New("key generate needs --out FILE")}
	}
	pubPath := out + ".pub"
	for _, p := range []string{out, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists; otactl never overwrites a key: choose another --out or move it away", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	pass, err := c.passphrase("passphrase for the new key: ", true)
	if err != nil {
		return fmt.Errorf("%w; no key was written", err)
	}
	var a signing.Algorithm = signing.AlgEd25519
	if alg.value == "ecdsa-p256" {
		a = signing.AlgECDSAP256
	}
	key, err := signing.Generate(a)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	pub, err := signing.MarshalPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := signing.WriteKeyFile(out, key, pass); err != nil {
		return fmt.Errorf("write %s: %w", out, unwrapPathError(err))
	}
	if err := writeNewFile(pubPath, append(pub, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w (the private key %s was written)", pubPath, err, out)
	}
	fmt.Fprintf(c.stderr, "wrote %s (private, encrypted) and %s (public)\n", out, pubPath)
	fmt.Fprintln(c.stdout, key.KeyID())
	return nil
}

func (c *cli) keyShow(args []string) error {
	fs := newFlagSet("key show FILE",
		"Prints the key id and public key (TUF JSON) of FILE, a public key file or a\nprivate key file (no passphrase needed: only the public half is read).", c.stderr)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, 1, "key FILE"); err != nil {
		return err
	}
	k, id, err := readPublicKey(pos[0])
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	pub, err := signing.MarshalPublicKey(k)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "key id: %s\ntype: %s/%s\n%s\n", id, k.Type, k.Scheme, pub)
	return nil
}

// readPublicKey reads a public key file or the public half of a private
// key file, and returns the key with its id.
func readPublicKey(path string) (*metadata.Key, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", unwrapPathError(err)
	}
	k, err := signing.ParsePublicKey(data)
	if err != nil {
		return nil, "", fmt.Errorf("not a key file from otactl key generate: %w", err)
	}
	id, err := k.ID()
	if err != nil {
		return nil, "", err
	}
	return k, id, nil
}

// loadSigner decrypts the private key file; its id must be wantID.
func (c *cli) loadSigner(path, wantID string) (tufSigner, error) {
	pass, err := c.passphrase(fmt.Sprintf("passphrase for %s: ", path), false)
	if err != nil {
		return nil, fmt.Errorf("%w; nothing was signed", err)
	}
	key, err := signing.ReadKeyFile(path, pass)
	if err != nil {
		if errors.Is(err, signing.ErrWrongPassphrase) {
			return nil, fmt.Errorf("%s: wrong passphrase (check %s); nothing was signed", path, envPassphrase)
		}
		return nil, fmt.Errorf("%s: %w; nothing was signed", path, unwrapPathError(err))
	}
	if key.KeyID() != wantID {
		return nil, fmt.Errorf("%s: the private key is %s but its public half says %s: the file is inconsistent", path, key.KeyID(), wantID)
	}
	return key.Signer(), nil
}

// passphrase returns OTACTL_KEY_PASSPHRASE or asks on the terminal
// without echo (twice when confirm is set).
func (c *cli) passphrase(prompt string, confirm bool) ([]byte, error) {
	if p := c.getenv(envPassphrase); p != "" {
		return []byte(p), nil
	}
	in, ok := c.stdin.(*os.File)
	if !ok || !c.isTerminal(in) {
		return nil, usageError{fmt.Errorf("no passphrase: set %s or run otactl in a terminal to be asked", envPassphrase)}
	}
	// Ctrl-C reaches otactl as a cancelled context, not as death, so the
	// prompt must give up by itself and turn echo back on.
	fd := int(in.Fd())
	state, _ := term.GetState(fd)
	pass, err := interruptible(c.ctx, func() ([]byte, error) {
		return signing.ReadPassphrase("", prompt, confirm, in, c.stderr)
	})
	if errors.Is(err, errInterrupted) {
		if state != nil {
			term.Restore(fd, state)
		}
		fmt.Fprintln(c.stderr)
	}
	return pass, err
}

var errInterrupted = errors.New("interrupted")

// interruptible runs read (a blocking terminal read) until it returns or
// ctx ends. On interruption the read goroutine stays blocked; otactl exits
// soon after.
func interruptible[T any](ctx context.Context, read func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := read()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, errInterrupted
	}
}

// writeNewFile creates path with data; it fails if path exists.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return unwrapPathError(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// unwrapPathError keeps the cause ("no such file or directory") and drops
// the repeated path.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
