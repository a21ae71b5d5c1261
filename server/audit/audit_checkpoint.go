package audit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/signing"
)

// The audit log chains by hash, but the chain and its head both live in
// the database: someone who can write the database can edit an entry
// and recompute every hash after it and the head, and the chain
// verifies. Checkpoints anchor it outside the database: the server signs
// the hashes of the entries appended since the last checkpoint with its
// online key (a file or secret, never in the database; root metadata,
// signed offline by the release engineers, names it) and writes them to
// the blob store, never overwriting one. VerifyAudit then checks the
// chain against every checkpoint. What a checkpoint cannot vouch for:
// entries appended after the newest one, and a rewrite by someone who
// also controls the blob store (and deletes or replaces checkpoints,
// which S3 object lock or versioning prevents).

// AuditCheckpointPrefix is the blob-store prefix of checkpoints: one of
// their own, which TUF serving (tuf/, targets/) never reads, so that a
// checkpoint is neither served by accident nor touched by a publish. A
// checkpoint's key is the prefix, its Seq in 20 digits and ".json".
const AuditCheckpointPrefix = "audit/checkpoints/"

// auditCheckpointType is the _type of a checkpoint's signed part: the
// online key also signs TUF timestamps and snapshots, and neither kind
// of document can pass for the other.
const auditCheckpointType = "audit-checkpoint"

// Checkpoint bounds. A checkpoint lists at most
// DefaultAuditCheckpointEntries hashes (a log that grew by more between
// two passes, or that is anchored for the first time, gets several);
// one Checkpoint call writes at most maxCheckpointsPerPass of them, the
// rest at the next pass. A checkpoint file is at most
// maxCheckpointSize bytes, well above what the most hashes take.
const (
	DefaultAuditCheckpointEntries = 1000
	maxCheckpointsPerPass         = 100
	maxCheckpointSize             = 256 << 10
)

// ErrAuditUnanchored is returned (wrapped, with why) by an AuditAnchor
// that has no checkpoint to check the chain against: none made yet, or
// no trusted key to check them with.
var ErrAuditUnanchored = errors.New("the audit log is not anchored outside the database")

// AuditCheckpoint is a signed statement, kept outside the database, that
// entries From to Seq of the audit log had the hashes Hashes at time At.
// Because each entry's hash covers the one before, a checkpoint also
// vouches for every entry before From.
type AuditCheckpoint struct {
	// Key is where the checkpoint is stored in the blob store.
	Key       string
	From, Seq int64
	// Hashes[i] is the hash of entry From+i.
	Hashes []string
	At     time.Time
	// KeyID is the TUF key id of the key that signed it.
	KeyID string
}

// Hash is the hash of entry Seq, the head when the checkpoint was made.
func (c *AuditCheckpoint) Hash() string { return c.Hashes[len(c.Hashes)-1] }

// String names the checkpoint for people: "checkpoint 12 (signed
// 2026-12-01T10:00:00Z by key 1a2b3c4d)".
func (c *AuditCheckpoint) String() string {
	return fmt.Sprintf("checkpoint %d (signed %s by key %.8s)", c.Seq, c.At.UTC().Format(time.RFC3339), c.KeyID)
}

// AuditCheckpointKey is the blob key of the checkpoint whose last entry
// is seq.
func AuditCheckpointKey(seq int64) string {
	return fmt.Sprintf("%s%020d.json", AuditCheckpointPrefix, seq)
}

var checkpointName = regexp.MustCompile(`^[0-9]{20}\.json$`)

// auditCheckpointSigned is what a checkpoint's signature covers, as
// canonical JSON (the encoding TUF signs).
type auditCheckpointSigned struct {
	Type   string   `json:"_type"`
	From   int64    `json:"from"`
	Seq    int64    `json:"seq"`
	Hashes []string `json:"hashes"`
	At     string   `json:"at"`
}

// auditCheckpointFile is a checkpoint as stored: TUF's envelope, so that
// a TUF library or a reader who knows TUF can check it with the online
// key's public key from root.json.
type auditCheckpointFile struct {
	Signed     json.RawMessage      `json:"signed"`
	Signatures []metadata.Signature `json:"signatures"`
}

// AuditAnchor hands VerifyAudit the checkpoints of the audit log kept
// outside the database.
type AuditAnchor interface {
	// Checkpoints returns every checkpoint, each checked to be signed
	// by a trusted key. A stored checkpoint that is not is an
	// *AuditBrokenError: the checkpoints were written by someone other
	// than the server. No checkpoint to check against is
	// ErrAuditUnanchored.
	Checkpoints(ctx context.Context) ([]AuditCheckpoint, error)
}

// AuditCheckpoints makes and reads the audit log's checkpoints in a blob
// store. It is the AuditAnchor of every replica; Checkpoint runs on one
// replica at a time (under the background jobs' lease).
type AuditCheckpoints struct {
	Blobs manifests.BlobStore
	// Signer signs checkpoints: the server's online key. Only
	// Checkpoint needs it.
	Signer signing.Signer
	// Log is the audit log Checkpoint anchors.
	Log AuditStore
	// Keys returns the keys a checkpoint may be signed with, by id;
	// default manifests.TimestampKeys on Blobs: the timestamp keys of
	// every published root, which k release engineers signed offline.
	Keys func(ctx context.Context) (map[string]*metadata.Key, error)
	// Now is the clock of checkpoints' At (default time.Now).
	Now func() time.Time
	// Entries is the most hashes one checkpoint lists (default and
	// at most DefaultAuditCheckpointEntries).
	Entries int

	// making serialises Checkpoint; newest is where it goes on from,
	// read from the store when positioned is false.
	making     sync.Mutex
	positioned bool
	newest     *AuditCheckpoint

	// mu guards verified: checkpoints are immutable, so one checked
	// once is not read again (a page view reads only the new ones).
	mu       sync.Mutex
	verified map[string]*AuditCheckpoint
}

var _ AuditAnchor = (*AuditCheckpoints)(nil)

func (c *AuditCheckpoints) now() time.Time { return clock.Now(c.Now).UTC() }

func (c *AuditCheckpoints) keys(ctx context.Context) (map[string]*metadata.Key, error) {
	if c.Keys != nil {
		return c.Keys(ctx)
	}
	return manifests.TimestampKeys(ctx, c.Blobs)
}

// Reset makes the next Checkpoint read where to go on from the store:
// call it when this replica takes the background jobs' lease, since
// another replica may have written checkpoints meanwhile.
func (c *AuditCheckpoints) Reset() {
	c.making.Lock()
	defer c.making.Unlock()
	c.positioned, c.newest = false, nil
}

// Checkpoint signs and stores checkpoints of the entries appended since
// the newest checkpoint, and reports how many it wrote (none when the
// head has not moved). It checks first that those entries follow the
// newest checkpoint: it refuses, with an *AuditBrokenError, to sign a
// log rewritten under it, which would vouch for the rewrite. It never
// overwrites a checkpoint.
func (c *AuditCheckpoints) Checkpoint(ctx context.Context) (int, error) {
	if c.Signer == nil || c.Log == nil || c.Blobs == nil {
		return 0, errors.New("audit checkpoints: Blobs, Signer and Log are required to make checkpoints")
	}
	c.making.Lock()
	defer c.making.Unlock()
	if !c.positioned {
		newest, err := c.readNewest(ctx)
		if err != nil {
			return 0, err
		}
		c.newest, c.positioned = newest, true
	}
	per := DefaultAuditCheckpointEntries
	if c.Entries > 0 {
		per = min(c.Entries, per)
	}
	written := 0
	for range maxCheckpointsPerPass {
		from, prevHash := int64(1), AuditGenesis
		if c.newest != nil {
			from, prevHash = c.newest.Seq+1, c.newest.Hash()
		}
		es, err := c.Log.ListAudit(ctx, AuditQuery{Before: from + int64(per), Limit: per})
		if err != nil {
			return written, fmt.Errorf("audit checkpoint: %w", err)
		}
		es = slices.DeleteFunc(es, func(e AuditEntry) bool { return e.Seq < from })
		if len(es) == 0 {
			return written, nil
		}
		slices.Reverse(es) // ListAudit answers newest first
		cp := AuditCheckpoint{From: from, Seq: es[len(es)-1].Seq, At: c.now(), KeyID: c.Signer.KeyID(),
			Hashes: make([]string, len(es))}
		for i, e := range es {
			var why string
			switch {
			case e.Seq != from+int64(i):
				why = fmt.Sprintf("entry %d is missing (next is %d)", from+int64(i), e.Seq)
			case e.PrevHash != prevHash && i == 0 && c.newest != nil:
				why = fmt.Sprintf("its link to the entry before does not match %s: the log was rewritten", c.newest)
			case e.PrevHash != prevHash:
				why = "its link to the entry before does not match (an entry was replaced)"
			case AuditHash(e) != e.Hash:
				why = "its fields do not match its hash (the entry was edited)"
			}
			if why != "" {
				return written, fmt.Errorf("audit checkpoint: not signing a broken log: %w", &AuditBrokenError{Seq: from + int64(i), Why: why})
			}
			cp.Hashes[i], prevHash = e.Hash, e.Hash
		}
		if err := c.write(ctx, &cp); err != nil {
			return written, err
		}
		c.newest = &cp
		written++
		if len(es) < per {
			return written, nil
		}
	}
	return written, nil
}

// write signs cp and stores it under its key, which must be free.
func (c *AuditCheckpoints) write(ctx context.Context, cp *AuditCheckpoint) error {
	cp.Key = AuditCheckpointKey(cp.Seq)
	payload, err := signing.CanonicalSigned(auditCheckpointSigned{Type: auditCheckpointType, From: cp.From, Seq: cp.Seq,
		Hashes: cp.Hashes, At: cp.At.Format(time.RFC3339Nano)})
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	sig, err := c.Signer.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("audit checkpoint: sign: %w", err)
	}
	data, err := json.Marshal(auditCheckpointFile{Signed: payload,
		Signatures: []metadata.Signature{{KeyID: c.Signer.KeyID(), Signature: sig}}})
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	// Checkpoints are immutable. Only a replica that lost the lease in
	// the middle of a pass races here; it re-reads its position at the
	// next pass.
	switch _, err := c.Blobs.Stat(ctx, cp.Key); {
	case err == nil:
		c.positioned = false
		return fmt.Errorf("audit checkpoint: %s exists already; not overwriting it", cp.Key)
	case !errors.Is(err, manifests.ErrNotExist):
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if _, err := c.Blobs.Put(ctx, cp.Key, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("audit checkpoint: store %s: %w", cp.Key, err)
	}
	return nil
}

// readNewest returns the newest stored checkpoint (nil when there is
// none), checked against the trusted keys or, before any root lists
// one, against this server's own key.
func (c *AuditCheckpoints) readNewest(ctx context.Context) (*AuditCheckpoint, error) {
	var last string
	for info, err := range c.Blobs.List(ctx, AuditCheckpointPrefix) {
		if err != nil {
			return nil, fmt.Errorf("audit checkpoint: list: %w", err)
		}
		if checkpointName.MatchString(strings.TrimPrefix(info.Key, AuditCheckpointPrefix)) {
			last = max(last, info.Key)
		}
	}
	if last == "" {
		return nil, nil
	}
	keys, err := c.keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint: trusted keys: %w", err)
	}
	if len(keys) == 0 {
		keys = map[string]*metadata.Key{c.Signer.KeyID(): c.Signer.Key()}
	}
	cp, err := c.read(ctx, last, keys)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint: the newest checkpoint: %w", err)
	}
	return cp, nil
}

// Checkpoints implements AuditAnchor. It reads and checks the
// checkpoints it has not checked before, and returns them all ordered by
// From, then Seq.
func (c *AuditCheckpoints) Checkpoints(ctx context.Context) ([]AuditCheckpoint, error) {
	if c == nil || c.Blobs == nil {
		return nil, fmt.Errorf("%w: no checkpoint store configured", ErrAuditUnanchored)
	}
	var names []string
	for info, err := range c.Blobs.List(ctx, AuditCheckpointPrefix) {
		if err != nil {
			return nil, fmt.Errorf("list audit checkpoints: %w", err)
		}
		names = append(names, info.Key)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no checkpoints yet", ErrAuditUnanchored)
	}
	var keys map[string]*metadata.Key
	out := make([]AuditCheckpoint, 0, len(names))
	for _, name := range names {
		c.mu.Lock()
		cp := c.verified[name]
		c.mu.Unlock()
		if cp == nil {
			if keys == nil {
				var err error
				if keys, err = c.keys(ctx); err != nil {
					return nil, fmt.Errorf("audit checkpoints: trusted keys: %w", err)
				}
				if len(keys) == 0 {
					return nil, fmt.Errorf("%w: %d checkpoints, but no published root lists a timestamp key to check them with (the TUF repository is not initialized)",
						ErrAuditUnanchored, len(names))
				}
			}
			var err error
			if cp, err = c.read(ctx, name, keys); err != nil {
				return nil, err
			}
			c.mu.Lock()
			if c.verified == nil {
				c.verified = map[string]*AuditCheckpoint{}
			}
			c.verified[name] = cp
			c.mu.Unlock()
		}
		out = append(out, *cp)
	}
	slices.SortFunc(out, func(a, b AuditCheckpoint) int { return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.Seq, b.Seq)) })
	return out, nil
}

// read reads the checkpoint stored under name and checks it: its form,
// its name, and its signature by one of keys. Anything else is an
// *AuditBrokenError at the entry the checkpoint names (its Seq, or 0
// when even that cannot be read).
func (c *AuditCheckpoints) read(ctx context.Context, name string, keys map[string]*metadata.Key) (*AuditCheckpoint, error) {
	base := strings.TrimPrefix(name, AuditCheckpointPrefix)
	var seq int64
	if checkpointName.MatchString(base) {
		seq, _ = strconv.ParseInt(strings.TrimSuffix(base, ".json"), 10, 64)
	}
	bad := func(why string) error {
		return &AuditBrokenError{Seq: seq, Why: fmt.Sprintf("the checkpoint %s %s: the checkpoints were written by someone other than this server", name, why)}
	}
	if seq == 0 {
		return nil, bad("is not named as the server names checkpoints")
	}
	data, err := manifests.ReadSmall(ctx, c.Blobs, name, maxCheckpointSize)
	if errors.Is(err, manifests.ErrNotExist) {
		return nil, bad("was listed but cannot be read")
	}
	if err != nil {
		return nil, fmt.Errorf("read audit checkpoint: %w", err)
	}
	var f auditCheckpointFile
	var s auditCheckpointSigned
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, bad("is not a checkpoint")
	}
	dec := json.NewDecoder(bytes.NewReader(f.Signed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil || s.Type != auditCheckpointType {
		return nil, bad("is not a checkpoint")
	}
	at, err := time.Parse(time.RFC3339Nano, s.At)
	if err != nil || s.Seq != seq || s.From < 1 || s.From > s.Seq || int64(len(s.Hashes)) != s.Seq-s.From+1 {
		return nil, bad("is not a well-formed checkpoint of entry " + strconv.FormatInt(seq, 10))
	}
	for _, h := range s.Hashes {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 || strings.ToLower(h) != h {
			return nil, bad("lists a hash that is not a sha256")
		}
	}
	payload, err := signing.CanonicalSigned(s)
	if err != nil {
		return nil, bad("is not a checkpoint")
	}
	for _, sig := range f.Signatures {
		k := keys[sig.KeyID]
		if k == nil || signing.VerifySignature(k, payload, sig.Signature) != nil {
			continue
		}
		return &AuditCheckpoint{Key: name, From: s.From, Seq: s.Seq, Hashes: s.Hashes, At: at.UTC(), KeyID: sig.KeyID}, nil
	}
	return nil, bad("is not signed by a timestamp key of any published root (forged, or made with an online key no root lists)")
}
