package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/internal/termtext"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/sqlstore"
)

// userPasswordEnv gives otad user create and otad user password the
// password without a prompt, for automation.
const userPasswordEnv = "OTAD_USER_PASSWORD"

// adminCommand is what the user, token and audit commands share: the
// database flags, flags that may follow the positional arguments
// ("otad user create alice --role admin"), and an open database.
type adminCommand struct {
	cfg  Config
	fs   *envflag.FlagSet
	args []string // positional
}

func newAdminCommand(name, synopsis string, stderr io.Writer) *adminCommand {
	c := &adminCommand{cfg: defaultConfig()}
	c.fs = envflag.New(name, synopsis, stderr)
	c.cfg.registerCommon(c.fs)
	return c
}

// parse parses flags wherever they are among args: flag stops at the
// first positional argument, so parse collects it and goes on.
func (c *adminCommand) parse(args []string, getenv func(string) string, want int) error {
	if err := parseFlags(c.fs, args, getenv); err != nil {
		return err
	}
	for c.fs.NArg() > 0 {
		rest := c.fs.Args()
		c.args = append(c.args, rest[0])
		if err := c.fs.Parse(rest[1:]); err != nil {
			return usageError{err}
		}
	}
	if want >= 0 && len(c.args) != want {
		c.fs.Usage()
		return usageError{fmt.Errorf("%s: got %d arguments, want %d", c.fs.Name(), len(c.args), want)}
	}
	return c.cfg.Validate()
}

// open opens and migrates the database.
func (c *adminCommand) open(ctx context.Context, stderr io.Writer) (*sqlstore.DB, error) {
	if err := prepareDataDir(c.cfg.DataDir); err != nil {
		return nil, err
	}
	db, _, err := openDatabase(ctx, c.cfg, c.cfg.logger(stderr))
	return db, err
}

// cliActor is the audit log's actor of a command-line action: otad-cli
// and the operating system user who ran it, when known.
func cliActor() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "otad-cli:" + u.Username
	}
	return "otad-cli"
}

// recordAction appends the entry of a command-line action that is done (the
// entries are server's, the same as the admin API's and the pages').
func recordAction(ctx context.Context, db *sqlstore.DB, e audit.AuditEntry) error {
	return identity.RecordAction(ctx, db.Audit(), e, cliActor(), "", time.Now().UTC())
}

// subcommand picks the first argument among subs, printing usage when
// it is missing or unknown.
func subcommand(args []string, usage string, stderr io.Writer, subs ...string) (string, error) {
	if len(args) > 0 {
		for _, s := range subs {
			if args[0] == s {
				return s, nil
			}
		}
		if args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprint(stderr, usage)
			return "", flag.ErrHelp
		}
	}
	fmt.Fprint(stderr, usage)
	return "", usageError{fmt.Errorf("want one of: %s", strings.Join(subs, ", "))}
}

const userUsage = `Usage:
  otad user create NAME --role ROLE [--service]
  otad user list
  otad user disable NAME
  otad user enable NAME
  otad user set-role NAME ROLE
  otad user password NAME

Users log in to the dashboard and mint their own API tokens; service
accounts (--service) have no password and act through the tokens of
"otad token create". Roles: viewer, operator, release-engineer, admin.
Passwords are read from $OTAD_USER_PASSWORD or, on a terminal, prompted
for twice without echo. Run "otad user <command> --help" for the flags.
`

func runUser(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, err := subcommand(args, userUsage, stderr, "create", "list", "disable", "enable", "set-role", "password")
	if err != nil {
		return err
	}
	var synopsis string
	want := 1
	switch sub {
	case "create":
		synopsis = "Adds a user (with a password) or, with --service, a service account (without)."
	case "list":
		synopsis, want = "Lists users and service accounts.", 0
	case "disable":
		synopsis = "Disables a user: its sessions end and its tokens are revoked at once."
	case "enable":
		synopsis = "Enables a disabled user again; it logs in and mints tokens anew (disabling revoked the old ones)."
	case "set-role":
		synopsis, want = "Changes a user's role; its sessions and tokens have the new role at once.", 2
	case "password":
		synopsis = "Sets a user's password (from $" + userPasswordEnv + " or a prompt) and ends its sessions."
	}
	usageLine := map[string]string{"create": "NAME --role ROLE [--service]", "list": "", "disable": "NAME",
		"enable": "NAME", "set-role": "NAME ROLE", "password": "NAME"}[sub]
	c := newAdminCommand("otad user "+sub+" "+usageLine+" [flags]", synopsis, stderr)
	var role string
	var service bool
	if sub == "create" {
		c.fs.StringVar(&role, "role", "", "viewer, operator, release-engineer or admin (required)")
		c.fs.BoolVar(&service, "service", false, "a service account: no password, acts through its tokens")
	}
	if err := c.parse(args[1:], getenv, want); err != nil {
		return err
	}
	if sub == "create" && role == "" {
		return usageError{errors.New("user create needs --role (viewer, operator, release-engineer or admin)")}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartupTimeout)
	defer cancel()
	// The password is asked for before the database opens, so that a
	// slow prompt does not outlast the startup timeout's connection.
	var password string
	if (sub == "create" && !service) || sub == "password" {
		if password, err = readNewPassword(getenv, stderr); err != nil {
			return err
		}
	}
	db, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	store := db.Users()
	users := identity.Users{Store: store}
	byName := func(name string) (*identity.User, error) {
		u, _, err := store.UserByName(ctx, name)
		if errors.Is(err, errs.ErrNotFound) {
			return nil, fmt.Errorf("no user %s (see otad user list)", name)
		}
		return u, err
	}
	switch sub {
	case "create":
		u, err := users.Create(ctx, c.args[0], role, password, service)
		if err != nil {
			return err
		}
		kind := "user"
		if u.Service {
			kind = "service account"
		}
		if err := recordAction(ctx, db, identity.UserCreatedEntry(u)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created %s %s (%s)\n", kind, termtext.Escape(u.Name), termtext.Escape(u.Role))
	case "list":
		list, err := store.ListUsers(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tROLE\tKIND\tDISABLED\tCREATED")
		for _, u := range list {
			kind := "user"
			if u.Service {
				kind = "service"
			}
			disabled := "no"
			if u.Disabled {
				disabled = "yes"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", termtext.Escape(u.Name), termtext.Escape(u.Role), kind, disabled, u.CreatedAt.Format(time.RFC3339))
		}
		return w.Flush()
	case "disable", "enable":
		u, err := byName(c.args[0])
		if err != nil {
			return err
		}
		if err := store.SetUserDisabled(ctx, u.ID, sub == "disable"); err != nil {
			return err
		}
		u.Disabled = sub == "disable"
		if err := recordAction(ctx, db, identity.UserDisabledEntry(u)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%sd %s\n", sub, termtext.Escape(u.Name))
	case "set-role":
		newRole := c.args[1]
		if err := identity.ValidateUser(c.args[0], newRole, "", true); err != nil {
			return err
		}
		u, err := byName(c.args[0])
		if err != nil {
			return err
		}
		if err := store.SetUserRole(ctx, u.ID, newRole); err != nil {
			return err
		}
		from := u.Role
		u.Role = newRole
		if err := recordAction(ctx, db, identity.UserRoleEntry(u, from)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s is %s now (was %s)\n", termtext.Escape(u.Name), termtext.Escape(newRole), termtext.Escape(from))
	case "password":
		u, err := users.SetPassword(ctx, nil, c.args[0], password)
		if errors.Is(err, errs.ErrNotFound) {
			return fmt.Errorf("no user %s (see otad user list)", c.args[0])
		}
		if err != nil {
			return err
		}
		if err := recordAction(ctx, db, identity.UserPasswordEntry(u)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "set the password of %s\n", termtext.Escape(u.Name))
	}
	return nil
}

// readNewPassword reads a new password from $OTAD_USER_PASSWORD or, on a
// terminal, from two prompts without echo that must agree. A pipe is
// never read: a prompt answered by the next line of a script is a
// mistake.
func readNewPassword(getenv func(string) string, stderr io.Writer) (string, error) {
	if v := getenv(userPasswordEnv); v != "" {
		return v, nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return "", fmt.Errorf("no password: set $%s or run in a terminal", userPasswordEnv)
	}
	read := func(prompt string) (string, error) {
		fmt.Fprint(stderr, prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(stderr)
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		return string(b), nil
	}
	p1, err := read(fmt.Sprintf("Password (%d-%d characters): ", identity.MinPasswordLength, identity.MaxPasswordLength))
	if err != nil {
		return "", err
	}
	p2, err := read("Password again: ")
	if err != nil {
		return "", err
	}
	if p1 != p2 {
		return "", errors.New("the passwords do not match")
	}
	return p1, nil
}

const tokenUsage = `Usage:
  otad token create NAME --role ROLE [--expires 90d]     (also --name NAME)
  otad token create --user USER TOKENNAME [--expires 90d]
  otad token list [--user USER]
  otad token revoke ID

Tokens are shown once at creation; only their hash is stored. A token acts
as its user with the user's current role until it expires (--expires,
default 90d, at most 730d) or is revoked; disabling the user revokes it.
Revoking a token revokes the tokens minted with it. "create NAME --role
ROLE" mints a token for the service account NAME, creating it with ROLE
if it does not exist. Roles: viewer, operator, release-engineer, admin.
`

func runToken(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, err := subcommand(args, tokenUsage, stderr, "create", "list", "revoke")
	if err != nil {
		return err
	}
	synopsis := map[string]string{
		"create": "Mints an API token, shown once: for service account NAME (created with --role if new),\nor with --user for an existing user.",
		"list":   "Lists tokens, of one user with --user.",
		"revoke": "Revokes a token by id (see otad token list).",
	}[sub]
	usageLine := map[string]string{"create": "NAME --role ROLE | --user USER TOKENNAME", "list": "[--user USER]", "revoke": "ID"}[sub]
	c := newAdminCommand("otad token "+sub+" "+usageLine+" [flags]", synopsis, stderr)
	var name, role, userName, expires string
	want := 1
	switch sub {
	case "create":
		c.fs.StringVar(&expires, "expires", "", "how long the token works: 90d, 720h, ... (default 90d, at most 730d)")
		c.fs.StringVar(&name, "name", "", "the service account the token is for, e.g. ci (or give it as NAME)")
		c.fs.StringVar(&role, "role", identity.RoleReleaseEngineer, "the service account's role: viewer, operator, release-engineer or admin")
		c.fs.StringVar(&userName, "user", "", "mint the token for this existing user instead; the argument names the token")
		want = -1
	case "list":
		c.fs.StringVar(&userName, "user", "", "only this user's tokens")
		want = 0
	}
	if err := c.parse(args[1:], getenv, want); err != nil {
		return err
	}
	if sub == "create" {
		switch {
		case name == "" && len(c.args) == 1:
			name = c.args[0]
		case name != "" && len(c.args) == 0:
		default:
			c.fs.Usage()
			return usageError{errors.New("token create needs one name: NAME or --name NAME")}
		}
	}
	var opts identity.TokenOptions
	if expires != "" {
		if opts.Lifetime, err = identity.ParseTokenLifetime(expires); err != nil {
			return usageError{fmt.Errorf("--expires %q: want a duration such as 30d or 720h, at most %dd", expires, identity.MaxTokenLifetime/(24*time.Hour))}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartupTimeout)
	defer cancel()
	db, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	tokens := identity.Tokens{Store: db.Tokens(), Users: db.Users()}
	lookUp := func(name string) (*identity.User, error) {
		u, _, err := db.Users().UserByName(ctx, name)
		if errors.Is(err, errs.ErrNotFound) {
			return nil, fmt.Errorf("no user %s (see otad user list)", name)
		}
		return u, err
	}
	switch sub {
	case "create":
		var t *identity.Token
		var secret string
		var u *identity.User
		if userName != "" {
			if u, err = lookUp(userName); err != nil {
				return err
			}
			t, secret, err = tokens.Mint(ctx, u, name, opts)
		} else {
			_, _, existed := db.Users().UserByName(ctx, name)
			t, secret, err = tokens.CreateService(ctx, name, role, opts)
			if err == nil {
				u, err = db.Users().UserByID(ctx, t.UserID)
			}
			if err == nil && errors.Is(existed, errs.ErrNotFound) {
				err = recordAction(ctx, db, identity.UserCreatedEntry(u))
			}
		}
		if err != nil {
			return err
		}
		if err := recordAction(ctx, db, identity.TokenCreatedEntry(t, u.Name)); err != nil {
			return err
		}
		// The note goes to stderr and the token alone to stdout, so that
		// TOKEN=$(otad token create ...) captures the token and still
		// shows the note, which must then not promise the token below it.
		fmt.Fprintf(stderr, "created token %s %s for %s (%s), expires %s; the token is printed once, alone on standard output, and never again\n",
			t.ID, termtext.Escape(t.Name), termtext.Escape(u.Name), termtext.Escape(u.Role), t.ExpiresAt.Format(time.RFC3339))
		fmt.Fprintln(stdout, secret)
	case "list":
		userID := ""
		if userName != "" {
			u, err := lookUp(userName)
			if err != nil {
				return err
			}
			userID = u.ID
		}
		list, err := db.Tokens().ListTokens(ctx, userID)
		if err != nil {
			return err
		}
		users, err := db.Users().ListUsers(ctx)
		if err != nil {
			return err
		}
		byID := map[string]*identity.User{}
		for _, u := range users {
			byID[u.ID] = u
		}
		now := time.Now()
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tNAME\tUSER\tROLE\tCREATED\tEXPIRES\tSTATE")
		for _, t := range list {
			state := "active"
			switch {
			case t.RevokedAt != nil:
				state = "revoked " + t.RevokedAt.Format(time.RFC3339)
			case t.Expired(now):
				state = "expired"
			}
			if t.ParentID != "" {
				state += " (minted with " + t.ParentID + ")"
			}
			expiresAt := "never"
			if !t.ExpiresAt.IsZero() {
				expiresAt = t.ExpiresAt.Format(time.RFC3339)
			}
			owner, ownerRole := "?", "?"
			if u := byID[t.UserID]; u != nil {
				owner, ownerRole = u.Name, u.Role
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", termtext.Escape(t.ID), termtext.Escape(t.Name), termtext.Escape(owner),
				termtext.Escape(ownerRole), t.CreatedAt.Format(time.RFC3339), expiresAt, state)
		}
		return w.Flush()
	case "revoke":
		all, err := db.Tokens().ListTokens(ctx, "")
		if err != nil {
			return err
		}
		i := slices.IndexFunc(all, func(t *identity.Token) bool { return t.ID == c.args[0] })
		if i < 0 {
			return fmt.Errorf("no token %s (see otad token list)", c.args[0])
		}
		with := identity.LiveDescendants(all, c.args[0])
		if err := db.Tokens().RevokeToken(ctx, c.args[0]); err != nil {
			return err
		}
		if err := recordAction(ctx, db, identity.TokenRevokedEntry(all[i], with)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s\n", c.args[0])
		if len(with) > 0 {
			fmt.Fprintf(stdout, "revoked with it the tokens minted with it: %s\n", strings.Join(with, ", "))
		}
	}
	return nil
}

const auditUsage = `Usage:
  otad audit verify
  otad audit checkpoint
  otad audit list [--actor A] [--action A] [--limit N]

The audit log records every administrative action, chained by hash. The
server signs checkpoints of it with its online key into the blob store
(audit/checkpoints/), outside the database, every
--audit-checkpoint-interval. "verify" walks the log and checks every
link, the head and every checkpoint; it exits 1 naming the first entry
where the log breaks or disagrees with a checkpoint, and also when no
checkpoint could be checked (a rewrite with recomputed hashes would not
show). "checkpoint" makes the checkpoints now.
`

func runAudit(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, err := subcommand(args, auditUsage, stderr, "verify", "checkpoint", "list")
	if err != nil {
		return err
	}
	synopsis := map[string]string{
		"verify":     "Checks the audit log's hash chain, its head and its checkpoints; exits 1 at the first break,\nor when no checkpoint anchors the log.",
		"checkpoint": "Signs checkpoints of the audit entries appended since the last one with the online key\ninto the blob store (the server does it every --audit-checkpoint-interval).",
		"list":       "Shows audit entries, newest first.",
	}[sub]
	c := newAdminCommand("otad audit "+sub+" [flags]", synopsis, stderr)
	var q audit.AuditQuery
	switch sub {
	case "list":
		c.fs.StringVar(&q.Actor, "actor", "", "only this actor's entries")
		c.fs.StringVar(&q.Action, "action", "", `only this action, or a prefix ending in "." (rollout.)`)
		c.fs.IntVar(&q.Limit, "limit", 50, "at most this many entries (1-1000)")
	case "verify":
		c.cfg.registerStorage(c.fs)
	case "checkpoint":
		c.cfg.registerStorage(c.fs)
		c.cfg.registerOnlineKey(c.fs)
	}
	if err := c.parse(args[1:], getenv, 0); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartupTimeout)
	defer cancel()
	db, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	switch sub {
	case "verify":
		blobs, err := openStorage(ctx, c.cfg)
		if err != nil {
			return err
		}
		v, err := audit.VerifyAudit(ctx, db.Audit(), &audit.AuditCheckpoints{Blobs: blobs})
		if err != nil {
			return err
		}
		return printAuditVerification(stdout, v)
	case "checkpoint":
		blobs, err := openStorage(ctx, c.cfg)
		if err != nil {
			return err
		}
		online, err := loadExistingOnlineKey(c.cfg, c.cfg.logger(stderr))
		if err != nil {
			return err
		}
		n, err := (&audit.AuditCheckpoints{Blobs: blobs, Signer: online, Log: db.Audit()}).Checkpoint(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %d audit checkpoints\n", n)
	case "list":
		list, err := db.Audit().ListAudit(ctx, q)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "SEQ\tAT\tACTOR\tACTION\tOBJECT\tREASON\tDETAIL")
		for _, e := range list {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.Format(time.RFC3339), termtext.Escape(e.Actor),
				termtext.Escape(e.Action), termtext.Escape(e.Object), termtext.Escape(oneLine(e.Reason)), termtext.Escape(oneLine(e.Detail)))
		}
		return w.Flush()
	}
	return nil
}

// printAuditVerification prints what VerifyAudit found. A log that no
// checkpoint anchors is an error (exit 1): its chain is intact, but a
// rewrite that recomputed every hash would look the same. An empty log
// with no checkpoints has nothing to anchor.
func printAuditVerification(w io.Writer, v audit.AuditVerification) error {
	head := v.HeadHash
	if head == "" {
		head = "(none: the log is empty)"
	}
	if !v.Anchored() {
		if v.Entries == 0 {
			fmt.Fprintf(w, "audit log verified: 0 entries, nothing to anchor (%s)\n", v.Unanchored)
			return nil
		}
		return fmt.Errorf("audit log chain intact (%d entries, head %s) but not anchored: %s; "+
			"a rewrite that recomputed every hash would not show", v.Entries, head, v.Unanchored)
	}
	fmt.Fprintf(w, "audit log verified: %d entries, head %s; against %d checkpoints, the newest %s",
		v.Entries, head, v.Checkpoints, v.Newest)
	if n := v.SinceCheckpoint(); n > 0 {
		fmt.Fprintf(w, "; %d entries since are not checkpointed yet", n)
	}
	fmt.Fprintln(w)
	return nil
}
