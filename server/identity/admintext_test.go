package identity_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/textrule"
)

// Operators' names that hold an identifier, in the disguises of issue 13.
var plantedInNames = []string{"867530012345670", "imei867530x012345x670", "867530__012345__670", "203.0.113.77", "10-0-0-1",
	"0x7f000001", "0a-1b-2c-3d-4e-5f", "8613812345678"}

// TestOperatorNames: a user's name follows its pattern and the rule of
// fields with no reason to hold a long number; a token's name is one
// printable line without an identifier, however it is written. Refusals
// name the field and do not repeat the value.
func TestOperatorNames(t *testing.T) {
	for _, name := range []string{"alice", "ci", "release-team", "test-engineer", "bob.2026", "planting-admin"} {
		if err := identity.ValidateUser(name, identity.RoleOperator, "", true); err != nil {
			t.Errorf("user %q refused: %v", name, err)
		}
	}
	for _, name := range plantedInNames {
		err := identity.ValidateUser(name, identity.RoleOperator, "", true)
		if fe := new(errs.FieldError); !errors.As(err, &fe) || fe.Field != "name" || strings.Contains(fe.Message, name) {
			t.Errorf("user %q: got %v, want a field error naming name", name, err)
		}
	}
	for _, name := range []string{"laptop", "ci token", "Alice's laptop (2026-12)", "release-team", "t1", "build bot #3"} {
		if err := textrule.ValidateTokenName(name); err != nil {
			t.Errorf("token name %q refused: %v", name, err)
		}
	}
	for _, name := range append(plantedInNames, "IMEI867530x012345x670", "alice @example.com", "alice\uff20example.com",
		"10, 0, 0, 1", "10 : 0 : 0 : 1", "2001:db8::1", "phone +44 20", "867530\u200b012345\u200b670", "８６７５３００",
		"mac 00:1a:2b:3c:4d:5e", "", " ", "a\nb", strings.Repeat("a", 65)) {
		err := textrule.ValidateTokenName(name)
		if fe := new(errs.FieldError); !errors.As(err, &fe) || fe.Field != "name" || len(name) > 4 && strings.Contains(fe.Message, name) {
			t.Errorf("token name %q: got %v, want a field error naming name", name, err)
		}
	}
}

// auditLog is a audit.AuditStore that keeps what is appended.
type auditLog struct {
	audit.AuditStore
	entries []audit.AuditEntry
}

func (l *auditLog) AppendAudit(_ context.Context, es ...audit.AuditEntry) error {
	l.entries = append(l.entries, es...)
	return nil
}

// TestRecordActionScrubsReason: the reason of an action audited outside
// a rollout's transaction (the X-Reason header) reaches the log
// scrubbed, since the log cannot be edited afterwards.
func TestRecordActionScrubsReason(t *testing.T) {
	log := &auditLog{}
	reason := "asked by alice @example.com for handset 867,530,012,345,670 at 0x7f000001"
	err := identity.RecordAction(context.Background(), log, audit.AuditEntry{Action: "token.create", Object: "t-1"}, "alice", reason,
		time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if len(log.entries) != 1 {
		t.Fatalf("%d entries appended, want 1", len(log.entries))
	}
	got := log.entries[0].Reason
	if want := "asked by " + textrule.Redacted + " for handset " + textrule.Redacted + " at " + textrule.Redacted; got != want {
		t.Fatalf("reason kept as %q, want %q", got, want)
	}
}
