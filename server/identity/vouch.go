package identity

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
)

// VouchWindow is how long making an account able to approve keeps it
// from approving for whoever did it. Without it four eyes are one
// person's: an admin creates a second user (whose password they chose),
// or raises one of their own, and approves their own widening with it.
const VouchWindow = 24 * time.Hour

// VouchedError is an approver refused because the requester vouched for
// the approver's account within VouchWindow: created it, re-enabled it,
// raised its role or set its password, directly or through accounts they
// vouched for in turn. It is an ErrForbidden.
type VouchedError struct {
	Approver, Requester string
	// Chain is the audit entries that link the requester to the
	// approver, the requester's first.
	Chain []audit.AuditEntry
}

func (e *VouchedError) Error() string {
	links := make([]string, len(e.Chain))
	for i, c := range e.Chain {
		links[i] = fmt.Sprintf("%s %s %s at %s", c.Actor, vouchVerb[c.Action], c.Object, c.At.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s cannot approve a request of %s: %s, less than %s ago, so the two are not two people for four eyes; ask another operator (or wait until %s)",
		e.Approver, e.Requester, strings.Join(links, ", then "), vouchWindowText, e.until().Format(time.RFC3339))
}

// until is when the newest link of the chain leaves the window.
func (e *VouchedError) until() time.Time {
	var t time.Time
	for _, c := range e.Chain {
		if c.At.After(t) {
			t = c.At
		}
	}
	return t.Add(VouchWindow).UTC()
}

// Is makes a VouchedError an ErrForbidden.
func (e *VouchedError) Is(target error) bool { return target == errs.ErrForbidden }

const vouchWindowText = "24 hours"

var vouchVerb = map[string]string{
	"user.create":   "created",
	"user.enable":   "re-enabled",
	"user.set-role": "raised the role of",
	"user.password": "set the password of",
}

// vouches reports whether audit entry e gave its actor a hold on the
// account it names: creating it, re-enabling it, raising its role (a
// role later in Roles; lowering it does not count) or setting another's
// password. Entries are named by user name whether the actor used a
// session or a token, so a token is no way around it.
func vouches(e audit.AuditEntry) bool {
	if e.Actor == "" || e.Object == "" || e.Actor == e.Object {
		return false
	}
	switch e.Action {
	case "user.create", "user.enable", "user.password":
		return true
	case "user.set-role":
		var d struct{ From, To string }
		if json.Unmarshal([]byte(e.Detail), &d) != nil {
			return true // unreadable: count it, as a raise
		}
		return slices.Index(Roles, d.To) > slices.Index(Roles, d.From)
	}
	return false
}

// CheckVouched refuses approver for requester's request (a
// *VouchedError) when the audit log shows, within VouchWindow before
// now, a chain of accounts from requester to approver, each link one
// account vouching for the next (see vouches). Without an audit log
// there is nothing to check.
func CheckVouched(ctx context.Context, log audit.AuditStore, requester, approver string, now time.Time) error {
	if log == nil {
		return nil
	}
	var entries []audit.AuditEntry
	q := audit.AuditQuery{Action: "user.", Since: now.Add(-VouchWindow), Limit: audit.MaxAuditLimit}
	for {
		page, err := log.ListAudit(ctx, q)
		if err != nil {
			return fmt.Errorf("four eyes: read who vouched for %s: %w", approver, err)
		}
		if len(page) == 0 {
			break
		}
		entries = append(entries, page...)
		q.Before = page[len(page)-1].Seq
	}
	// Breadth first from the requester; via[account] is the entry that
	// reached it.
	via := map[string]*audit.AuditEntry{requester: nil}
	queue := []string{requester}
	for len(queue) > 0 {
		from := queue[0]
		queue = queue[1:]
		for i := range entries {
			e := &entries[i]
			if e.Actor != from || !vouches(*e) {
				continue
			}
			if _, seen := via[e.Object]; seen {
				continue
			}
			via[e.Object] = e
			if e.Object != approver {
				queue = append(queue, e.Object)
				continue
			}
			var chain []audit.AuditEntry
			for at := e; at != nil; at = via[at.Actor] {
				chain = append(chain, *at)
			}
			slices.Reverse(chain)
			return &VouchedError{Approver: approver, Requester: requester, Chain: chain}
		}
	}
	return nil
}
