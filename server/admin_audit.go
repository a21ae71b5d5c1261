package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The audit entries of user, token and session changes. The admin API,
// the pages and the otad commands all make them here, so that one change
// reads the same in the log whichever way it was made, and a filter on
// action or object finds it made any way.

// UserCreatedEntry is the entry of creating u.
func UserCreatedEntry(u *User) AuditEntry {
	return AuditEntry{Action: "user.create", Object: u.Name, Detail: auditDetail(map[string]string{"kind": u.Kind(), "role": u.Role})}
}

// UserRoleEntry is the entry of giving u (as it is now) its role, which
// was from.
func UserRoleEntry(u *User, from string) AuditEntry {
	return AuditEntry{Action: "user.set-role", Object: u.Name, Detail: auditDetail(map[string]string{"from": from, "to": u.Role})}
}

// UserDisabledEntry is the entry of disabling or enabling u, as u.Disabled
// now says.
func UserDisabledEntry(u *User) AuditEntry {
	action := "user.enable"
	if u.Disabled {
		action = "user.disable"
	}
	return AuditEntry{Action: action, Object: u.Name}
}

// UserPasswordEntry is the entry of setting u's password.
func UserPasswordEntry(u *User) AuditEntry {
	return AuditEntry{Action: "user.password", Object: u.Name}
}

// TokenCreatedEntry is the entry of minting t for the user named owner.
func TokenCreatedEntry(t *Token, owner string) AuditEntry {
	return AuditEntry{Action: "token.create", Object: t.ID, Detail: auditDetail(map[string]string{"name": t.Name, "user": owner})}
}

// TokenRevokedEntry is the entry of revoking t.
func TokenRevokedEntry(t *Token) AuditEntry {
	return AuditEntry{Action: "token.revoke", Object: t.ID, Detail: auditDetail(map[string]string{"name": t.Name, "user_id": t.UserID})}
}

// SessionEntry is the entry of u logging in (login true) or out of the
// dashboard.
func SessionEntry(u *User, login bool) AuditEntry {
	action := "session.logout"
	if login {
		action = "session.login"
	}
	return AuditEntry{Action: action, Object: u.Name}
}

func auditDetail(m map[string]string) string {
	b, err := json.Marshal(m) // sorted keys
	if err != nil {
		panic(err) // strings always marshal
	}
	return string(b)
}

// ErrNotAudited is the error of an administrative action that was done
// but whose audit entry could not be appended. Callers answer with it
// (the admin API and the pages with a 500, the otad commands with a
// non-zero exit) instead of reporting success: whoever acted must learn
// that the log lacks it.
var ErrNotAudited = errors.New("the change was made but its audit entry was not written")

// RecordAction appends e, an action that has been done, as actor at at
// with reason. It is the one rule for the audit of every action that is
// not appended in the action's own transaction (rollout changes are):
// the action stays done and a failed append is ErrNotAudited. The
// reason is free text (the X-Reason header): it is scrubbed (Scrub), so
// that no identifier stays in a log that cannot be edited.
func RecordAction(ctx context.Context, log AuditStore, e AuditEntry, actor, reason string, at time.Time) error {
	e.Actor, e.Reason, e.At = actor, Scrub(reason), at
	if err := log.AppendAudit(ctx, e); err != nil {
		return fmt.Errorf("%w (%s %s is done: do not repeat it): %w", ErrNotAudited, e.Action, e.Object, err)
	}
	return nil
}
