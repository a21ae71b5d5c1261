package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/textrule"
)

// The audit entries of user, token and session changes. The admin API,
// the pages and the otad commands all make them here, so that one change
// reads the same in the log whichever way it was made, and a filter on
// action or object finds it made any way.

// UserCreatedEntry is the entry of creating u.
func UserCreatedEntry(u *User) audit.AuditEntry {
	return audit.AuditEntry{Action: "user.create", Object: u.Name, Detail: auditDetail(map[string]string{"kind": u.Kind(), "role": u.Role})}
}

// UserRoleEntry is the entry of giving u (as it is now) its role, which
// was from.
func UserRoleEntry(u *User, from string) audit.AuditEntry {
	return audit.AuditEntry{Action: "user.set-role", Object: u.Name, Detail: auditDetail(map[string]string{"from": from, "to": u.Role})}
}

// UserDisabledEntry is the entry of disabling or enabling u, as u.Disabled
// now says.
func UserDisabledEntry(u *User) audit.AuditEntry {
	action := "user.enable"
	if u.Disabled {
		action = "user.disable"
	}
	return audit.AuditEntry{Action: action, Object: u.Name}
}

// UserPasswordEntry is the entry of setting u's password.
func UserPasswordEntry(u *User) audit.AuditEntry {
	return audit.AuditEntry{Action: "user.password", Object: u.Name}
}

// TokenCreatedEntry is the entry of minting t for the user named owner.
func TokenCreatedEntry(t *Token, owner string) audit.AuditEntry {
	d := map[string]string{"name": t.Name, "user": owner}
	if !t.ExpiresAt.IsZero() {
		d["expires"] = t.ExpiresAt.UTC().Format(time.RFC3339)
	}
	if t.ParentID != "" {
		d["parent"] = t.ParentID
	}
	return audit.AuditEntry{Action: "token.create", Object: t.ID, Detail: auditDetail(d)}
}

// TokenRevokedEntry is the entry of revoking t and with it the tokens
// minted from it, with.
func TokenRevokedEntry(t *Token, with []string) audit.AuditEntry {
	d := map[string]string{"name": t.Name, "user_id": t.UserID}
	if len(with) > 0 {
		d["with"] = strings.Join(with, ",")
	}
	return audit.AuditEntry{Action: "token.revoke", Object: t.ID, Detail: auditDetail(d)}
}

// SessionEntry is the entry of u logging in (login true) or out of the
// dashboard.
func SessionEntry(u *User, login bool) audit.AuditEntry {
	action := "session.logout"
	if login {
		action = "session.login"
	}
	return audit.AuditEntry{Action: action, Object: u.Name}
}

// AnonymousActor is the actor of a failed login: nobody has shown who
// they are. It cannot be a user's name (ValidateUser).
const AnonymousActor = "(anonymous)"

// UnknownUserObject is the object of the entries that count failed
// logins at names that are no account.
const UnknownUserObject = "(unknown user)"

// loginClient names in an entry what judged a login attempt: a device
// cookie of the account ("device") or the account's lockout
// ("untrusted").
func loginClient(device bool) string {
	if device {
		return "device"
	}
	return "untrusted"
}

// LoginFailedEntry is the entry of a wrong password for the account
// name, the n-th failure within the lockout window of its client (device
// for a browser presenting the account's device cookie). The password
// tried is never in it, nor anything of the client.
func LoginFailedEntry(name string, n int, device bool) audit.AuditEntry {
	return audit.AuditEntry{Actor: AnonymousActor, Action: "session.login_failed", Object: name,
		Detail: auditDetail(map[string]string{"client": loginClient(device), "failures": strconv.Itoa(n)})}
}

// UnknownLoginFailedEntry is the entry of n failed logins at names that
// are no account (or could not be one) since the previous such entry.
// The names are left out: a password typed into the name field would
// otherwise land in the log.
func UnknownLoginFailedEntry(n int) audit.AuditEntry {
	return audit.AuditEntry{Actor: AnonymousActor, Action: "session.login_failed", Object: UnknownUserObject,
		Detail: auditDetail(map[string]string{"failures": strconv.Itoa(n)})}
}

// UserLockedEntry is the entry of the account name locking after n
// failures until until: for every client without its device cookie
// (device false), or for one device cookie (device true).
func UserLockedEntry(name string, n int, device bool, until time.Time) audit.AuditEntry {
	return audit.AuditEntry{Actor: audit.SystemActor, Action: "user.locked", Object: name,
		Detail: auditDetail(map[string]string{"client": loginClient(device), "failures": strconv.Itoa(n),
			"until": until.UTC().Format(time.RFC3339)})}
}

func auditDetail(m map[string]string) string {
	b, err := json.Marshal(m) // sorted keys
	if err != nil {
		panic(err) // strings always marshal
	}
	return string(b)
}

// RecordAction appends e, an action that has been done, as actor at at
// with reason. It is the one rule for the audit of every action that is
// not appended in the action's own transaction (rollout changes are):
// the action stays done and a failed append is ErrNotAudited. The
// reason is free text (the X-Reason header): it is scrubbed (Scrub), so
// that no identifier stays in a log that cannot be edited.
func RecordAction(ctx context.Context, log audit.AuditStore, e audit.AuditEntry, actor, reason string, at time.Time) error {
	e.Actor, e.Reason, e.At = actor, textrule.Scrub(reason), at
	if err := log.AppendAudit(ctx, e); err != nil {
		return fmt.Errorf("%w (%s %s is done: do not repeat it): %w", errs.ErrNotAudited, e.Action, e.Object, err)
	}
	return nil
}
