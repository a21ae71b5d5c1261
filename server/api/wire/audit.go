package wire

import "time"

// HeaderReason carries the reason of an administrative action for the
// audit log: optional, one printable line of at most rollout.MaxReasonLen
// bytes. One header for every admin route, whatever its body (an
// artifact upload's body is the build, a DELETE has none). Rollout
// actions take their reason in the body instead, where it is required.
const HeaderReason = "X-Reason"

// AuditEntry is one entry of the audit log as GET /admin/audit answers
// it.
type AuditEntry struct {
	Seq      int64     `json:"seq"`
	At       time.Time `json:"at"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Object   string    `json:"object"`
	Reason   string    `json:"reason"`
	Detail   string    `json:"detail"`
	PrevHash string    `json:"prev_hash"`
	Hash     string    `json:"hash"`
}

// AuditVerify is the answer of GET /admin/audit/verify.
type AuditVerify struct {
	OK bool `json:"ok"`
	// Entries and HeadHash are set when OK.
	Entries  *int64  `json:"entries,omitempty"`
	HeadHash *string `json:"head_hash,omitempty"`
	// Anchored, when OK, tells whether the chain was checked against
	// checkpoints kept outside the database: Checkpoints of them, the
	// newest NewestCheckpoint, with SinceCheckpoint entries appended
	// after it. When not, Unanchored says why (and a rewrite that
	// recomputes every hash would not show).
	Anchored         *bool            `json:"anchored,omitempty"`
	Checkpoints      int              `json:"checkpoints,omitempty"`
	NewestCheckpoint *AuditCheckpoint `json:"newest_checkpoint,omitempty"`
	SinceCheckpoint  *int64           `json:"since_checkpoint,omitempty"`
	Unanchored       string           `json:"unanchored,omitempty"`
	// BrokenAt and Why say where and how the chain breaks, or disagrees
	// with a checkpoint, when OK is false.
	BrokenAt int64  `json:"broken_at,omitempty"`
	Why      string `json:"why,omitempty"`
}

// AuditCheckpoint is a checkpoint as GET /admin/audit/verify names it:
// the entry it anchors, that entry's hash, when and by which key it was
// signed, and where it is stored.
type AuditCheckpoint struct {
	Seq   int64     `json:"seq"`
	Hash  string    `json:"hash"`
	At    time.Time `json:"at"`
	KeyID string    `json:"key_id"`
	Key   string    `json:"key"`
}
