// Package identity holds who may do what: users and their passwords,
// sessions, API tokens, logins and their throttling (login.go), roles and
// permissions (permissions.go), user administration (useradmin.go),
// vouching for a new user before their four-eyes approvals count
// (vouch.go) and the audit entries of all of these (admin_audit.go). It
// is apart from server, which holds the fleet and the rollouts, so that
// a newcomer finds the access rules in one place; the rollouts import it
// (four eyes), never the reverse.
package identity
