package wire

import "time"

// User is the JSON of a user or service account.
type User struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Kind      string    `json:"kind"`
	Disabled  bool      `json:"disabled"`
	CreatedAt time.Time `json:"created_at"`
}

// UserRequest is the body of POST /admin/users: a person with a
// password, or a service account (Service, no password) that acts
// through tokens.
type UserRequest struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Password string `json:"password,omitempty"`
	Service  bool   `json:"service,omitempty"`
}

// RoleRequest is the body of POST /admin/users/{name}/role.
type RoleRequest struct {
	Role string `json:"role"`
}

// TokenRequest is the body of POST /admin/tokens. ExpiresIn is how
// long the token works ("90d", "720h"; default the server's token
// lifetime); a token minted with a token expires no later than it.
type TokenRequest struct {
	Name      string `json:"name"`
	ExpiresIn string `json:"expires_in,omitempty"`
}

// Token is the JSON of an API token; the secret is never in it. Parent
// is the token it was minted with, which revoking revokes it with.
type Token struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	User      string     `json:"user"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Parent    string     `json:"parent,omitempty"`
}

// NewToken is the answer of POST /admin/tokens: the token and its
// secret, shown this once.
type NewToken struct {
	Token
	Secret string `json:"secret"`
}
