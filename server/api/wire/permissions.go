package wire

import (
	"github.com/patchfleet/ota/server/identity"
)

// WhoAmI is the answer of GET /admin/whoami.
type WhoAmI struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Kind is "user" (a person) or "service" (a service account).
	Kind        string                `json:"kind"`
	Permissions []identity.Permission `json:"permissions"`
}
