package app_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
)

// TestOneClock: the clock the wiring is given reaches the parts that
// used to read the wall clock on their own: the dashboard's audit
// entries (web) and the times the database stores write themselves (a
// token's revocation). With a clock years from the wall clock's, every
// such time is the clock's.
func TestOneClock(t *testing.T) {
	at := time.Date(2031, 5, 5, 10, 0, 0, 0, time.UTC)
	clk := &clock{now: at}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	ctx := t.Context()
	u, err := env.App.Users.Create(ctx, "clock-admin", identity.RoleAdmin, "correct horse battery staple", false)
	if err != nil {
		t.Fatal(err)
	}

	// A page action: logging out records a session entry.
	secret, sess, err := env.App.Sessions.Start(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "/logout", strings.NewReader(url.Values{"csrf": {sess.CSRFToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: apitest.SessionCookie, Value: secret})
	rec := httptest.NewRecorder()
	env.API.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("POST /logout: %d %s", rec.Code, rec.Body)
	}
	entries, err := env.App.Audit.ListAudit(ctx, audit.AuditQuery{Actor: u.Name, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("the logout left no audit entry")
	}
	for _, e := range entries {
		if !e.At.Equal(at) {
			t.Errorf("audit entry %s at %s, want the wiring's clock's %s", e.Action, e.At, at)
		}
	}

	// A store's own time: the revocation of a token.
	tok, _, err := env.App.Tokens.CreateFor(ctx, u, "clocked")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.DB.Tokens().RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	toks, err := env.DB.Tokens().ListTokens(ctx, u.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range toks {
		if got.ID != tok.ID {
			continue
		}
		if got.RevokedAt == nil || !got.RevokedAt.Equal(at) {
			t.Errorf("token revoked at %v, want the wiring's clock's %s", got.RevokedAt, at)
		}
		return
	}
	t.Fatalf("token %s not listed", tok.ID)
}
