package identity

import "slices"

// Permission is what a route or a page action needs. Checks are by
// permission, never by comparing role names: RolePermissions is the one
// table that says which role may do what, and the endpoint × role test
// walks it.
type Permission string

// Permissions.
const (
	// PermRead reads everything: repository status, drafts, releases,
	// fleet, devices, rollouts, reports, the audit log.
	PermRead Permission = "read"
	// PermRolloutChange creates rollouts and starts, pauses, resumes,
	// aborts, advances, completes, holds and releases them.
	PermRolloutChange Permission = "rollouts:change"
	// PermRolloutApprove approves a widening another user asked for
	// (four eyes): one that lets a patch reach more than
	// FourEyesPercent of the handsets its rollouts select.
	PermRolloutApprove Permission = "rollouts:approve"
	// PermReleaseChange runs the repository ceremony, uploads artifacts,
	// stages releases and yanks, uploads signatures and discards drafts.
	PermReleaseChange Permission = "releases:change"
	// PermOwnTokens mints and revokes one's own API tokens.
	PermOwnTokens Permission = "tokens:own"
	// PermUserAdmin manages users, service accounts and everyone's tokens.
	PermUserAdmin Permission = "users:admin"
)

// Roles.
const (
	// RoleViewer reads everything and changes nothing.
	RoleViewer = "viewer"
	// RoleOperator also changes rollouts.
	RoleOperator = "operator"
	// RoleReleaseEngineer also changes the repository: ceremony,
	// releases, signatures, yanks.
	RoleReleaseEngineer = "release-engineer"
	// RoleAdmin also manages users and tokens.
	RoleAdmin = "admin"
)

// Roles lists the valid roles, least to most allowed.
var Roles = []string{RoleViewer, RoleOperator, RoleReleaseEngineer, RoleAdmin}

// RolePermissions is the permission table. Each role has what the one
// before it has, and more.
var RolePermissions = map[string][]Permission{
	RoleViewer:          {PermRead, PermOwnTokens},
	RoleOperator:        {PermRead, PermOwnTokens, PermRolloutChange, PermRolloutApprove},
	RoleReleaseEngineer: {PermRead, PermOwnTokens, PermRolloutChange, PermRolloutApprove, PermReleaseChange},
	RoleAdmin:           {PermRead, PermOwnTokens, PermRolloutChange, PermRolloutApprove, PermReleaseChange, PermUserAdmin},
}

// RoleCan reports whether role has permission p. An unknown role has
// none.
func RoleCan(role string, p Permission) bool {
	return slices.Contains(RolePermissions[role], p)
}

// FourEyesPercent is the exposure of a patch (Exposure: how much of the
// handsets its rollouts select it can reach, every rollout counted) past
// which a start, advance or resume needs a second person's approval.
const FourEyesPercent = 50
