package api

import "testing"

func TestEchoPath(t *testing.T) {
	for in, want := range map[string]string{
		"/":                       "/",
		"/rollouts/{id}":          "/rollouts/:id",
		"/rollouts/{id}/{action}": "/rollouts/:id/:action",
		"/static/{file...}":       "/static/*",
		"/tokens/{id}/revoke":     "/tokens/:id/revoke",
		"/rollouts/{id}/approvals/{aid}/{verdict}": "/rollouts/:id/approvals/:aid/:verdict",
	} {
		if got := echoPath(in); got != want {
			t.Errorf("echoPath(%q) = %q, want %q", in, got, want)
		}
	}
}
