package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// An action done but not audited answers 500 with its own code and a
// message that says so, without the store's words.
func TestNotAuditedAnswer(t *testing.T) {
	store := errors.New(`pq: could not extend file "base/16384/2619": No space left on device`)
	err := identity.RecordAction(context.Background(), failingAudit{store}, identity.UserCreatedEntry(&identity.User{Name: "dave", Role: "viewer"}),
		"root", "", time.Now())
	if !errors.Is(err, errs.ErrNotAudited) || !errors.Is(err, store) {
		t.Fatalf("RecordAction with a failing log: got %v, want ErrNotAudited wrapping the store's error", err)
	}
	status, body, logIt := errorResponse(err)
	if status != http.StatusInternalServerError || body.Error.Code != "not_audited" || !logIt ||
		!strings.Contains(body.Error.Message, "was made") || strings.Contains(body.Error.Message, "No space") {
		t.Errorf("answer: %d %+v (logged %v), want 500 not_audited saying the change was made, without the store's error",
			status, body.Error, logIt)
	}
}

type failingAudit struct{ err error }

func (f failingAudit) AppendAudit(context.Context, ...audit.AuditEntry) error { return f.err }
func (f failingAudit) ListAudit(context.Context, audit.AuditQuery) ([]audit.AuditEntry, error) {
	return nil, f.err
}
func (f failingAudit) WalkAudit(context.Context, func(audit.AuditEntry) error) (int64, string, error) {
	return 0, "", f.err
}
