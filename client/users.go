package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/patchfleet/ota/server/api/wire"
)

// Users lists the users and service accounts (an admin's call).
func (c *Client) Users(ctx context.Context) ([]wire.User, error) {
	return list[wire.User](ctx, c, "/users")
}

// CreateUser creates a person with a password, or a service account
// (req.Service) that acts through tokens.
func (c *Client) CreateUser(ctx context.Context, req wire.UserRequest) (*wire.User, error) {
	return call[wire.User](ctx, c, http.MethodPost, "/users", req)
}

// SetRole gives user name another role.
func (c *Client) SetRole(ctx context.Context, name, role string) (*wire.User, error) {
	return call[wire.User](ctx, c, http.MethodPost, "/users/"+url.PathEscape(name)+"/role", wire.RoleRequest{Role: role})
}

// DisableUser stops user name from logging in and its tokens from
// working, until EnableUser.
func (c *Client) DisableUser(ctx context.Context, name string) (*wire.User, error) {
	return call[wire.User](ctx, c, http.MethodPost, "/users/"+url.PathEscape(name)+"/disable", nil)
}

// EnableUser undoes DisableUser.
func (c *Client) EnableUser(ctx context.Context, name string) (*wire.User, error) {
	return call[wire.User](ctx, c, http.MethodPost, "/users/"+url.PathEscape(name)+"/enable", nil)
}

// Tokens lists the caller's API tokens, or with all everyone's (an
// admin's call); secrets are never listed.
func (c *Client) Tokens(ctx context.Context, all bool) ([]wire.Token, error) {
	path := "/tokens"
	if all {
		path += "?all=true"
	}
	return list[wire.Token](ctx, c, path)
}

// CreateToken mints a token for the caller; its secret is in the
// answer, this once.
func (c *Client) CreateToken(ctx context.Context, req wire.TokenRequest) (*wire.NewToken, error) {
	return call[wire.NewToken](ctx, c, http.MethodPost, "/tokens", req)
}

// RevokeToken revokes token id, and the tokens minted with it.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.admin(ctx, http.MethodDelete, "/tokens/"+url.PathEscape(id), nil, nil)
}
