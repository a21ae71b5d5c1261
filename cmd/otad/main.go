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
	"time"

	"github.com/patchfleet/ota/server"

	"github.com/patchfleet/ota/internal/envflag"
)

const usage = `otad is the OTA update server: it serves TUF-signed update manifests and
artifacts to handsets, tracks which handsets applied the patch and reports
rollout progress.

Usage:
  otad serve [flags]     run the server
  otad migrate [flags]   apply database migrations and exit
  otad token create --name NAME --role release-engineer|operator|viewer
                         mint an admin API token (printed once)
  otad token list        list tokens
  otad token revoke ID   revoke a token
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

func runToken(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "list" && args[0] != "revoke") {
		fmt.Fprint(stderr, "Usage: otad token create --name NAME --role ROLE | otad token list | otad token revoke ID\n")
		return usageError{errors.New("token needs create, list or revoke")}
	}
	sub := args[0]
	cfg := defaultConfig()
	var name, role string
	fs := envflag.New("otad token "+sub+" [flags]",
		"Manages admin API tokens. Tokens are shown once at creation; only their hash is stored.\nRoles: release-engineer (ceremony, releases, signing, yanks, rollouts), operator (rollouts),\nviewer (read only).", stderr)
	cfg.registerCommon(fs)
	if sub == "create" {
		fs.StringVar(&name, "name", "", "who the token is for, e.g. alice")
		fs.StringVar(&role, "role", server.RoleReleaseEngineer, "release-engineer, operator or viewer")
	}
	if err := parseFlags(fs, args[1:], getenv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancel()
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return err
	}
	db, _, err := openDatabase(ctx, cfg, cfg.logger(stderr))
	if err != nil {
		return err
	}
	defer db.Close()
	tokens := server.Tokens{Store: db.Tokens()}
	switch sub {
	case "create":
		t, secret, err := tokens.Create(ctx, name, role)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "created token %s for %s (%s); it is shown once:\n", t.ID, t.Name, t.Role)
		fmt.Fprintln(stdout, secret)
	case "list":
		list, err := db.Tokens().ListTokens(ctx)
		if err != nil {
			return err
		}
		for _, t := range list {
			state := "active"
			if t.RevokedAt != nil {
				state = "revoked " + t.RevokedAt.Format(time.RFC3339)
			}
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.CreatedAt.Format(time.RFC3339), state)
		}
	case "revoke":
		if fs.NArg() != 1 {
			return usageError{errors.New("token revoke needs the token id (see otad token list)")}
		}
		if err := db.Tokens().RevokeToken(ctx, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s\n", fs.Arg(0))
	}
	return nil
}
