// Command otad is the OTA update server.
//
//	otad serve     run the server (embedded SQLite + filesystem store by default)
//	otad migrate   apply database migrations and exit
//
// Every flag has an environment variable; "otad serve --help" lists them.
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

	"github.com/patchfleet/ota/internal/envflag"
)

const usage = `otad is the OTA update server: it serves TUF-signed update manifests and
artifacts to handsets, tracks which handsets applied the patch and reports
rollout progress.

Usage:
  otad demo [flags]      a self-contained demo: dashboard, signed patch, simulated fleet
  otad serve [flags]     run the server
  otad migrate [flags]   apply database migrations and exit
  otad user create NAME --role ROLE [--service]
                         add a dashboard user (password from a prompt or
                         $OTAD_USER_PASSWORD) or a service account
  otad user list | disable NAME | enable NAME | set-role NAME ROLE | password NAME
                         manage users; roles: viewer, operator,
                         release-engineer, admin
  otad token create NAME --role ROLE
                         mint an API token for service account NAME,
                         created if new (printed once)
  otad token create --user NAME TOKENNAME
                         mint an API token acting as user NAME
  otad token list [--user NAME] | revoke ID
                         list or revoke tokens
  otad audit verify      check the audit log's hash chain and its checkpoints
  otad audit checkpoint  sign checkpoints of the audit log now
  otad audit list [--actor A] [--action A] [--limit N]
                         show the audit log, newest first
  otad rollups verify    recount the rollups reports read from their rows
  otad rollups fold      fold the rollups' delta logs now
  otad help              show this help

Run "otad <command> --help" for the flags of a command.
`

// Exit codes: 2 for a configuration error the operator must fix, 1 for
// anything else.
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own arguments,
// environment and output. Errors end as one line on stderr.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitConfig
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(ctx, args[1:], getenv, stderr)
	case "migrate":
		err = runMigrate(ctx, args[1:], getenv, stdout, stderr)
	case "token":
		err = runToken(ctx, args[1:], getenv, stdout, stderr)
	case "user":
		err = runUser(ctx, args[1:], getenv, stdout, stderr)
	case "audit":
		err = runAudit(ctx, args[1:], getenv, stdout, stderr)
	case "rollups":
		err = runRollups(ctx, args[1:], getenv, stdout, stderr)
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "otad: unknown command %q; run \"otad help\"\n", args[0])
		return exitConfig
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "otad: %s\n", oneLine(err.Error()))
		var ce *envflag.Error
		if errors.As(err, &ce) || isUsageError(err) {
			return exitConfig
		}
		return exitFailed
	}
	return exitOK
}

// usageError is a command-line parse error that flag has already printed
// usage for.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func isUsageError(err error) bool {
	var ue usageError
	return errors.As(err, &ue)
}

// oneLine folds multi-line errors (errors.Join, driver messages) so that
// the operator sees exactly one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func parseFlags(fs *envflag.FlagSet, args []string, getenv func(string) string) error {
	err := fs.ParseEnv(args, getenv)
	var ce *envflag.Error
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp), errors.As(err, &ce):
		return err
	default:
		return usageError{err}
	}
}

func runServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg := defaultConfig()
	fs := envflag.New("otad serve [flags]",
		"Runs the server. With no configuration it keeps everything under ./otad-data\n(SQLite and a filesystem blob store) and needs no other service.", stderr)
	cfg.registerServe(fs)
	if err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	cfg.OnlineKeyPassphrase = getenv("OTAD_ONLINE_KEY_PASSPHRASE")
	if err := cfg.ValidateServe(); err != nil {
		return err
	}
	m := NewMain(cfg, cfg.logger(stderr))
	if err := m.Run(ctx); err != nil {
		m.Close()
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-m.Done():
		m.Close()
		return fmt.Errorf("http server stopped: %w", err)
	}
	return m.Close()
}

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg := defaultConfig()
	fs := envflag.New("otad migrate [flags]",
		"Applies pending database migrations and exits. otad serve does the same on start;\nseveral replicas may run it at once on PostgreSQL.", stderr)
	cfg.registerCommon(fs)
	if err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancel()
	log := cfg.logger(stderr)
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return err
	}
	db, res, err := openDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	if len(res.Applied) == 0 {
		fmt.Fprintf(stdout, "database schema is up to date at version %d\n", res.To)
	} else {
		fmt.Fprintf(stdout, "database schema migrated from version %d to %d\n", res.From, res.To)
	}
	return nil
}
