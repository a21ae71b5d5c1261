// Command otactl is the release engineer's CLI for otad: keys, the root
// ceremony, releases, signing, yanks and repository status.
//
// Private keys never leave the engineer's machine: otactl signs locally and
// sends only public keys and signatures. Before signing, it checks that the
// draft's digest matches its bytes and shows what the draft contains,
// computed from those bytes, not from the server's description.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"
)

const usage = `otactl is the release engineer's CLI for the otad OTA update server.

Usage:
  otactl key generate --out FILE [--alg ed25519|ecdsa-p256]
                         create an encrypted signing key (and FILE.pub)
  otactl key show FILE   print a key's id and public key
  otactl repo init --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold K
                         draft root v1 and an empty targets v1 (the ceremony)
  otactl repo sign --key FILE [--draft ID] [--yes]
                         review and sign a draft (the pending one by default)
  otactl root rotate --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold K
                         draft the next root
  otactl release create FILE --name PATH --patch-id ID [flags]
                         upload a build and draft a targets version offering it
                         (--incremental-from BUILD=FILE adds incremental payloads)
  otactl delta make --from OLD --to NEW --out FILE
                         a binary delta between two builds' images, for --incremental-from
  otactl release sign ID --key FILE [--yes]
                         review and sign a draft
  otactl release show [ID]
                         show a draft (the pending one by default)
  otactl release yank PATH
                         draft a targets version without PATH
  otactl draft list      list recent drafts
  otactl draft show [ID] same as release show
  otactl draft discard ID
                         abandon a pending draft
  otactl status          repository versions, expiries, targets and the pending draft
  otactl rollout create --release PATH --stages 1,10,50,100 [flags]
                         offer a published release to handsets in stages
  otactl rollout list|show|events|audit|watch [ID]
                         read rollouts and their audit log; watch one live
  otactl rollout start|pause|resume|abort|advance|complete ID --reason TEXT
                         change a rollout (operator token or above)
  otactl rollout hold|release-hold ID --model M --reason TEXT
                         hold one model of a rollout, or offer it again
  otactl rollout approvals ID
  otactl rollout approve|reject ID APPROVAL --reason TEXT
                         four eyes: a start, advance or resume that lets a patch
                         reach more than 50% of the handsets its rollouts select
                         (all of them counted) waits for a second operator
  otactl help            show this help

The server and token come from --server/--token or OTACTL_SERVER/OTACTL_TOKEN;
key passphrases from OTACTL_KEY_PASSPHRASE or a prompt.
Run "otactl <command> <subcommand> --help" for the flags of a command.
`

// Exit codes: 2 for a command line otactl cannot run, 1 for anything else
// that failed.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// Environment variables.
const (
	envServer     = "OTACTL_SERVER"
	envToken      = "OTACTL_TOKEN"
	envPassphrase = "OTACTL_KEY_PASSPHRASE"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own
// arguments, environment and streams. Errors end as one line on stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	return newCLI(ctx, getenv, stdin, stdout, stderr).run(args)
}

// cli is one invocation of otactl.
type cli struct {
	ctx    context.Context
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// isTerminal reports whether a stream is an interactive terminal; it
	// decides about prompts and the progress display. Tests replace it.
	isTerminal func(any) bool
}

func newCLI(ctx context.Context, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) *cli {
	return &cli{ctx: ctx, getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr, isTerminal: isTerminal}
}

// isTerminal reports whether v is an *os.File attached to a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

type command struct {
	name string
	run  func(c *cli, args []string) error
}

// groups lists the subcommands of each command ("otactl GROUP SUB");
// status is the one command without subcommands.
var groups = map[string][]command{
	"key": {
		{"generate", (*cli).keyGenerate},
		{"show", (*cli).keyShow},
	},
	"repo": {
		{"init", (*cli).repoInit},
		{"sign", (*cli).repoSign},
	},
	"root": {
		{"rotate", (*cli).rootRotate},
	},
	"release": {
		{"create", (*cli).releaseCreate},
		{"sign", (*cli).releaseSign},
		{"show", (*cli).releaseShow},
		{"yank", (*cli).releaseYank},
	},
	"draft": {
		{"list", (*cli).draftList},
		{"discard", (*cli).draftDiscard},
		{"show", (*cli).releaseShow},
	},
	"rollout": rolloutCommands,
	"delta": {
		{"make", (*cli).deltaMake},
	},
}

func (c *cli) run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usage)
		return exitUsage
	}
	var err error
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(c.stdout, usage)
		return exitOK
	case "status":
		err = c.status(args[1:])
	default:
		cmds, ok := groups[name]
		if !ok {
			fmt.Fprintf(c.stderr, "otactl: unknown command %q; run \"otactl help\"\n", name)
			return exitUsage
		}
		err = c.runGroup(name, cmds, args[1:])
	}
	return c.exit(err)
}

func (c *cli) runGroup(name string, cmds []command, args []string) error {
	var subs []string
	for _, cmd := range cmds {
		subs = append(subs, cmd.name)
	}
	groupUsage := fmt.Sprintf("Usage: otactl %s %s [flags]\n\nRun \"otactl %s <subcommand> --help\" for its flags.\n",
		name, strings.Join(subs, "|"), name)
	if len(args) == 0 {
		fmt.Fprint(c.stderr, groupUsage)
		return usageError{fmt.Errorf("%s needs a subcommand: %s", name, strings.Join(subs, ", "))}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(c.stdout, groupUsage)
		return nil
	}
	for _, cmd := range cmds {
		if cmd.name == args[0] {
			return cmd.run(c, args[1:])
		}
	}
	fmt.Fprint(c.stderr, groupUsage)
	return usageError{fmt.Errorf("unknown subcommand %q of %s; want %s", args[0], name, strings.Join(subs, ", "))}
}

// exit prints err as one line and returns the exit code.
func (c *cli) exit(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	}
	fmt.Fprintf(c.stderr, "otactl: %s\n", esc(oneLine(err.Error())))
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailed
}

// usageError is a command line otactl cannot run; the exit code is 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// oneLine folds multi-line errors so that the engineer sees one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
