package identity

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/patchfleet/ota/server/errs"
)

// SetRole changes the role of user name, acted by by, and returns the
// user as it is now with the role it had before. An admin cannot
// take away their own admin role (ErrConflict): there must always be
// someone left who can give it back, and a slip of the keyboard must not
// lock the last admin out.
func (us Users) SetRole(ctx context.Context, by *Principal, name, role string) (u *User, from string, err error) {
	if !slices.Contains(Roles, role) {
		return nil, "", errs.Fieldf("role", "%q: want one of %s", role, strings.Join(Roles, ", "))
	}
	u, _, err = us.Store.UserByName(ctx, name)
	if err != nil {
		return nil, "", err
	}
	if by != nil && by.User != nil && by.User.ID == u.ID && RoleCan(u.Role, PermUserAdmin) && !RoleCan(role, PermUserAdmin) {
		return nil, "", fmt.Errorf("%w: you cannot take away your own admin role; ask another admin", errs.ErrConflict)
	}
	if err := us.Store.SetUserRole(ctx, u.ID, role); err != nil {
		return nil, "", err
	}
	from, u.Role = u.Role, role
	return u, from, nil
}

// SetDisabled disables (ending its sessions and revoking its tokens:
// enabling it again brings neither back) or re-enables user name, acted
// by by. An admin cannot disable themself
// (ErrConflict), for the same reason as in SetRole.
func (us Users) SetDisabled(ctx context.Context, by *Principal, name string, disabled bool) (*User, error) {
	u, _, err := us.Store.UserByName(ctx, name)
	if err != nil {
		return nil, err
	}
	if disabled && by != nil && by.User != nil && by.User.ID == u.ID {
		return nil, fmt.Errorf("%w: you cannot disable yourself; ask another admin", errs.ErrConflict)
	}
	if err := us.Store.SetUserDisabled(ctx, u.ID, disabled); err != nil {
		return nil, err
	}
	u.Disabled = disabled
	return u, nil
}

// SetPassword sets the password of user name, acted by by, and ends the
// user's sessions: whoever knew the old password and logged in with it
// is out. A user who changes their own password in a dashboard session
// keeps that session.
func (us Users) SetPassword(ctx context.Context, by *Principal, name, password string) (*User, error) {
	u, _, err := us.Store.UserByName(ctx, name)
	if err != nil {
		return nil, err
	}
	if u.Service {
		return nil, fmt.Errorf("%w: %s is a service account: it has no password and acts through its tokens", errs.ErrConflict, u.Name)
	}
	if err := ValidateUser(u.Name, u.Role, password, false); err != nil {
		return nil, err
	}
	keep := ""
	if by != nil && by.User != nil && by.User.ID == u.ID {
		keep = by.SessionHash
	}
	if err := us.Store.SetPassword(ctx, u.ID, HashPassword(password), keep); err != nil {
		return nil, err
	}
	return u, nil
}

// Revoke revokes token id for by (their own token, or anyone's when by
// has PermUserAdmin) and the tokens minted from it, whose ids it
// returns as with. Another user's token is ErrNotFound to someone
// without PermUserAdmin, so that token ids cannot be probed.
func (ts Tokens) Revoke(ctx context.Context, by *Principal, id string) (t *Token, with []string, err error) {
	all := ""
	if !by.Can(PermUserAdmin) {
		all = by.User.ID
	}
	toks, err := ts.Store.ListTokens(ctx, all)
	if err != nil {
		return nil, nil, err
	}
	i := slices.IndexFunc(toks, func(t *Token) bool { return t.ID == id })
	if i < 0 {
		return nil, nil, fmt.Errorf("token %s: %w", id, errs.ErrNotFound)
	}
	with = LiveDescendants(toks, id)
	if err := ts.Store.RevokeToken(ctx, id); err != nil {
		return nil, nil, err
	}
	return toks[i], with, nil
}

// LiveDescendants returns the ids of the unrevoked tokens in toks
// minted from id, directly or down a chain: what revoking id revokes
// with it.
func LiveDescendants(toks []*Token, id string) []string {
	children := map[string][]*Token{}
	for _, t := range toks {
		if t.ParentID != "" {
			children[t.ParentID] = append(children[t.ParentID], t)
		}
	}
	var out []string
	queue := []string{id}
	seen := map[string]bool{id: true}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			if seen[c.ID] {
				continue
			}
			seen[c.ID] = true
			queue = append(queue, c.ID)
			if c.RevokedAt == nil {
				out = append(out, c.ID)
			}
		}
	}
	return out
}
