package api

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// mountUsers adds the users and tokens routes to the admin group r.
// The token routes act on the caller's own tokens; ?all=true and
// another user's token also need PermUserAdmin, checked in the
// handlers.
func (s *Server) mountUsers(r routes) {
	admin, own := needs(identity.PermUserAdmin), needs(identity.PermOwnTokens)
	r.add(http.MethodGet, "/users", admin, s.listUsers)
	r.add(http.MethodPost, "/users", admin, s.createUser)
	r.add(http.MethodPost, "/users/:name/role", admin, s.setUserRole)
	r.add(http.MethodPost, "/users/:name/disable", admin, s.setUserDisabled(true))
	r.add(http.MethodPost, "/users/:name/enable", admin, s.setUserDisabled(false))
	r.add(http.MethodGet, "/tokens", own, s.listTokens)
	r.add(http.MethodPost, "/tokens", own, s.createToken)
	r.add(http.MethodDelete, "/tokens/:id", own, s.revokeToken)
}

func userOf(u *identity.User) wire.User {
	return wire.User{ID: u.ID, Name: u.Name, Role: u.Role, Kind: u.Kind(), Disabled: u.Disabled, CreatedAt: u.CreatedAt.UTC()}
}

func (s *Server) listUsers(c echo.Context) error {
	us, err := s.users.Store.ListUsers(c.Request().Context())
	if err != nil {
		return err
	}
	out := make([]wire.User, len(us))
	for i, u := range us {
		out[i] = userOf(u)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) createUser(c echo.Context) error {
	var req wire.UserRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	u, err := s.users.Create(c.Request().Context(), req.Name, req.Role, req.Password, req.Service)
	if err != nil {
		return err
	}
	if err := s.record(c, identity.UserCreatedEntry(u)); err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, userOf(u))
}

func (s *Server) setUserRole(c echo.Context) error {
	var req wire.RoleRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	u, from, err := s.users.SetRole(c.Request().Context(), principal(c), c.Param("name"), req.Role)
	if err != nil {
		return err
	}
	if err := s.record(c, identity.UserRoleEntry(u, from)); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, userOf(u))
}

func (s *Server) setUserDisabled(disabled bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		u, err := s.users.SetDisabled(c.Request().Context(), principal(c), c.Param("name"), disabled)
		if err != nil {
			return err
		}
		if err := s.record(c, identity.UserDisabledEntry(u)); err != nil {
			return err
		}
		return c.JSON(http.StatusOK, userOf(u))
	}
}

// listTokens answers the caller's own tokens, or with ?all=true (and
// PermUserAdmin) everyone's.
func (s *Server) listTokens(c echo.Context) error {
	p := principal(c)
	ctx := c.Request().Context()
	userID := p.User.ID
	switch c.QueryParam("all") {
	case "", "false":
	case "true":
		if !p.Can(identity.PermUserAdmin) {
			return forbidden(p, identity.PermUserAdmin, "list everyone's tokens")
		}
		userID = ""
	default:
		return &errs.FieldError{Field: "all", Message: "want true or false"}
	}
	toks, err := s.tokens.Store.ListTokens(ctx, userID)
	if err != nil {
		return err
	}
	names := map[string]string{p.User.ID: p.User.Name}
	if userID == "" {
		us, err := s.users.Store.ListUsers(ctx)
		if err != nil {
			return err
		}
		for _, u := range us {
			names[u.ID] = u.Name
		}
	}
	out := make([]wire.Token, len(toks))
	for i, t := range toks {
		out[i] = tokenOf(t, names[t.UserID])
	}
	return c.JSON(http.StatusOK, out)
}

func tokenOf(t *identity.Token, user string) wire.Token {
	v := wire.Token{ID: t.ID, Name: t.Name, User: user, CreatedAt: t.CreatedAt.UTC(), Parent: t.ParentID}
	if !t.ExpiresAt.IsZero() {
		e := t.ExpiresAt.UTC()
		v.ExpiresAt = &e
	}
	if t.RevokedAt != nil {
		r := t.RevokedAt.UTC()
		v.RevokedAt = &r
	}
	return v
}

// createToken mints a token of the caller's own, acting as them; one
// minted with a token is that token's child (identity.TokenOptions).
func (s *Server) createToken(c echo.Context) error {
	var req wire.TokenRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	p := principal(c)
	opts := identity.TokenOptions{By: p}
	if req.ExpiresIn != "" {
		d, err := identity.ParseTokenLifetime(req.ExpiresIn)
		if err != nil {
			return err
		}
		opts.Lifetime = d
	}
	t, secret, err := s.tokens.Mint(c.Request().Context(), p.User, req.Name, opts)
	if err != nil {
		return err
	}
	if err := s.record(c, identity.TokenCreatedEntry(t, p.User.Name)); err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, wire.NewToken{Token: tokenOf(t, p.User.Name), Secret: secret})
}

func (s *Server) revokeToken(c echo.Context) error {
	t, with, err := s.tokens.Revoke(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	if err := s.record(c, identity.TokenRevokedEntry(t, with)); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
