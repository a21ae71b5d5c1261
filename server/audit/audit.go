package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// AuditEntry is one administrative action: who, what, on what, when and
// why. Entries chain by hash: each carries the hash of the one before
// it, and its own hash covers its fields and that link, so removing or
// editing an entry breaks the chain from there on (VerifyAudit).
type AuditEntry struct {
	// Seq is 1, 2, 3, ... in the order entries were appended; the store
	// assigns it.
	Seq   int64
	At    time.Time
	Actor string
	// Action is a dotted verb: "rollout.pause", "release.create",
	// "user.create", "token.revoke", "session.login", ...
	Action string
	// Object is what the action was on: a rollout id, a draft id, a
	// user name, a target path.
	Object string
	Reason string
	// Detail is a short JSON object or free text with what changed.
	Detail   string
	PrevHash string
	Hash     string
}

// AuditGenesis is the PrevHash of the first entry.
const AuditGenesis = "0000000000000000000000000000000000000000000000000000000000000000"

// auditHashed is what an entry's hash covers, in a fixed field order.
type auditHashed struct {
	Seq      int64  `json:"seq"`
	At       string `json:"at"`
	Actor    string `json:"actor"`
	Action   string `json:"action"`
	Object   string `json:"object"`
	Reason   string `json:"reason"`
	Detail   string `json:"detail"`
	PrevHash string `json:"prev"`
}

// AuditHash is the hash an entry must carry: sha256 over its fields and
// PrevHash. At is hashed in UTC at microsecond precision, what both
// SQLite and PostgreSQL keep.
func AuditHash(e AuditEntry) string {
	b, err := json.Marshal(auditHashed{Seq: e.Seq, At: e.At.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano),
		Actor: e.Actor, Action: e.Action, Object: e.Object, Reason: e.Reason, Detail: e.Detail, PrevHash: e.PrevHash})
	if err != nil {
		panic(err) // strings and numbers always marshal
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Chain sets e's Seq, PrevHash and Hash to follow prev (nil for the
// first entry). Stores call it while they hold the log's append lock.
func (e *AuditEntry) Chain(prev *AuditEntry) {
	e.Seq, e.PrevHash = 1, AuditGenesis
	if prev != nil {
		e.Seq, e.PrevHash = prev.Seq+1, prev.Hash
	}
	e.At = e.At.UTC().Truncate(time.Microsecond)
	e.Hash = AuditHash(*e)
}

// AuditQuery selects audit entries; zero fields match every entry.
type AuditQuery struct {
	Actor string
	// Action matches exactly, or a prefix when it ends in "." ("rollout.").
	Action string
	Object string
	// Since is inclusive, Until exclusive.
	Since, Until time.Time
	// Before, when set, returns entries with Seq below it (paging).
	Before int64
	Limit  int
}

// AuditStore keeps the audit log.
type AuditStore interface {
	// AppendAudit chains and appends entries in one transaction, in
	// order, serialised with every other append.
	AppendAudit(ctx context.Context, entries ...AuditEntry) error
	// ListAudit returns matching entries, newest first.
	ListAudit(ctx context.Context, q AuditQuery) ([]AuditEntry, error)
	// WalkAudit calls fn with every entry in Seq order, then returns the
	// head the store keeps beside the log (the last Seq and Hash
	// appended), so that entries cut from the end show too.
	WalkAudit(ctx context.Context, fn func(AuditEntry) error) (headSeq int64, headHash string, err error)
}

// AuditVerification is what VerifyAudit found.
type AuditVerification struct {
	Entries  int64
	HeadHash string
	// Checkpoints is how many checkpoints the chain was checked against
	// and Newest the newest of them (nil when none was).
	Checkpoints int
	Newest      *AuditCheckpoint
	// Unanchored says why the chain was checked against no checkpoint
	// ("no checkpoints yet", "no checkpoint store configured", no key
	// to check them with): then only its own hashes vouch for it, which
	// whoever can write the database can recompute.
	Unanchored string
}

// Anchored reports whether the chain was checked against at least one
// checkpoint kept outside the database.
func (v AuditVerification) Anchored() bool { return v.Checkpoints > 0 }

// SinceCheckpoint is how many entries were appended after the newest
// checkpoint: nothing outside the database vouches for them yet.
func (v AuditVerification) SinceCheckpoint() int64 {
	if v.Newest == nil {
		return v.Entries
	}
	return max(v.Entries-v.Newest.Seq, 0)
}

// AuditBrokenError is a chain that does not verify: the first entry
// where it breaks and why.
type AuditBrokenError struct {
	Seq int64
	Why string
}

func (e *AuditBrokenError) Error() string {
	return fmt.Sprintf("audit log broken at entry %d: %s", e.Seq, e.Why)
}

// VerifyAudit walks the whole log and checks that every entry follows
// the one before (no gap in Seq, PrevHash is the previous Hash), that
// every Hash matches its fields, that the last entry is the head the
// store recorded, and, against every checkpoint anchor holds, that each
// entry a checkpoint lists has the hash it lists and that the log is at
// least as long as the newest checkpoint. It returns an
// *AuditBrokenError for the first entry where any of that fails.
//
// The chain alone catches an entry edited, removed or inserted through
// SQL by someone who does not also recompute every hash after it and
// the head. The checkpoints catch the one who does, as far as the
// newest checkpoint. anchor may be nil (no checkpoint store): the
// answer's Unanchored then says so, as it does when there is no
// checkpoint yet.
func VerifyAudit(ctx context.Context, store AuditStore, anchor AuditAnchor) (AuditVerification, error) {
	var out AuditVerification
	// Checkpoints first, the log second: the log read is then at least
	// as new as every checkpoint, so a log shorter than one is a log cut.
	var cps []AuditCheckpoint
	if anchor == nil {
		out.Unanchored = "no checkpoint store configured"
	} else {
		var err error
		cps, err = anchor.Checkpoints(ctx)
		switch {
		case errors.Is(err, ErrAuditUnanchored):
			out.Unanchored = strings.TrimPrefix(err.Error(), ErrAuditUnanchored.Error()+": ")
		case err != nil:
			return AuditVerification{}, err
		}
	}
	var newest *AuditCheckpoint
	for i := range cps {
		if newest == nil || cps[i].Seq > newest.Seq {
			newest = &cps[i]
		}
	}
	var prev *AuditEntry
	var n int64
	next, active := 0, []*AuditCheckpoint(nil) // cps[next:] start after the current entry
	headSeq, headHash, err := store.WalkAudit(ctx, func(e AuditEntry) error {
		wantSeq, wantPrev := int64(1), AuditGenesis
		if prev != nil {
			wantSeq, wantPrev = prev.Seq+1, prev.Hash
		}
		switch {
		case e.Seq != wantSeq:
			return &AuditBrokenError{Seq: wantSeq, Why: fmt.Sprintf("entry %d is missing (next is %d)", wantSeq, e.Seq)}
		case e.PrevHash != wantPrev:
			return &AuditBrokenError{Seq: e.Seq, Why: "its link to the entry before does not match (an entry was replaced)"}
		case AuditHash(e) != e.Hash:
			return &AuditBrokenError{Seq: e.Seq, Why: "its fields do not match its hash (the entry was edited)"}
		}
		for next < len(cps) && cps[next].From <= e.Seq {
			active = append(active, &cps[next])
			next++
		}
		active = slices.DeleteFunc(active, func(c *AuditCheckpoint) bool { return c.Seq < e.Seq })
		for _, c := range active {
			if c.Hashes[e.Seq-c.From] != e.Hash {
				return &AuditBrokenError{Seq: e.Seq, Why: fmt.Sprintf("its hash differs from the one %s lists: "+
					"the entry was changed, removed or inserted and the hashes after it recomputed", c)}
			}
		}
		n++
		prev = &e
		return nil
	})
	if err != nil {
		return AuditVerification{}, err
	}
	lastSeq, lastHash := int64(0), ""
	if prev != nil {
		lastSeq, lastHash = prev.Seq, prev.Hash
	}
	if lastSeq != headSeq || (headSeq > 0 && lastHash != headHash) {
		return AuditVerification{}, &AuditBrokenError{Seq: lastSeq + 1,
			Why: fmt.Sprintf("the log ends at entry %d but its head records entry %d (entries were removed from the end)", lastSeq, headSeq)}
	}
	if newest != nil && lastSeq < newest.Seq {
		return AuditVerification{}, &AuditBrokenError{Seq: lastSeq + 1,
			Why: fmt.Sprintf("the log ends at entry %d but %s records entries up to %d (entries were removed from the end)", lastSeq, newest, newest.Seq)}
	}
	out.Entries, out.HeadHash = n, lastHash
	out.Checkpoints, out.Newest = len(cps), newest
	return out, nil
}

// SystemActor is the actor of what policies do on their own.
const SystemActor = "system"

// Limits of the audit log reads.
const (
	DefaultAuditLimit = 100
	MaxAuditLimit     = 1000
)
