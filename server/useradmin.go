package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// SetRole changes the role of user name, acted by by, and returns the
// user as it is now with the role it had before. An admin cannot
// take away their own admin role (ErrConflict): there must always be
// someone left who can give it back, and a slip of the keyboard must not
// lock the last admin out.
func (us Users) SetRole(ctx context.Context, by *Principal, name, role string) (u *User, from string, err error) {
	if !slices.Contains(Roles, role) {
		return nil, "", fieldErr("role", "%q: want one of %s", role, strings.Join(Roles, ", "))
	}
	u, _, err = us.Store.UserByName(ctx, name)
	if err != nil {
		return nil, "", err
	}
	if by != nil && by.User != nil && by.User.ID == u.ID && RoleCan(u.Role, PermUserAdmin) && !RoleCan(role, PermUserAdmin) {
		return nil, "", fmt.Errorf("%w: you cannot take away your own admin role; ask another admin", ErrConflict)
	}
	if err := us.Store.SetUserRole(ctx, u.ID, role); err != nil {
		return nil, "", err
	}
	from, u.Role = u.Role, role
	return u, from, nil
}

// SetDisabled disables (ending its sessions and tokens) or re-enables
// user name, acted by by. An admin cannot disable themself
// (ErrConflict), for the same reason as in SetRole.
func (us Users) SetDisabled(ctx context.Context, by *Principal, name string, disabled bool) (*User, error) {
	u, _, err := us.Store.UserByName(ctx, name)
	if err != nil {
		return nil, err
	}
	if disabled && by != nil && by.User != nil && by.User.ID == u.ID {
		return nil, fmt.Errorf("%w: you cannot disable yourself; ask another admin", ErrConflict)
	}
	if err := us.Store.SetUserDisabled(ctx, u.ID, disabled); err != nil {
		return nil, err
	}
	u.Disabled = disabled
	return u, nil
}

// Revoke revokes token id for by: their own token, or anyone's when by
// has PermUserAdmin. Another user's token is ErrNotFound to someone
// without it, so that token ids cannot be probed.
func (ts Tokens) Revoke(ctx context.Context, by *Principal, id string) (*Token, error) {
	all := ""
	if !by.Can(PermUserAdmin) {
		all = by.User.ID
	}
	toks, err := ts.Store.ListTokens(ctx, all)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(toks, func(t *Token) bool { return t.ID == id })
	if i < 0 {
		return nil, fmt.Errorf("token %s: %w", id, ErrNotFound)
	}
	if err := ts.Store.RevokeToken(ctx, id); err != nil {
		return nil, err
	}
	return toks[i], nil
}
