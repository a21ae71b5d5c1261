package manifests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/signing"
)

// Expiry is how long each role's metadata stays valid after signing.
type Expiry struct {
	Root, Targets, Snapshot, Timestamp time.Duration
}

// DefaultExpiry is the design's default: root 1 year, targets 3 months,
// snapshot 7 days, timestamp 1 day.
func DefaultExpiry() Expiry {
	return Expiry{
		Root:      365 * 24 * time.Hour,
		Targets:   91 * 24 * time.Hour,
		Snapshot:  7 * 24 * time.Hour,
		Timestamp: 24 * time.Hour,
	}
}

// ExpiryWarning is how close to expiry an offline-signed role (root,
// targets) must be before the server warns: re-signing those takes k
// engineers, so they need notice.
const ExpiryWarning = 14 * 24 * time.Hour

// MaxMetadataSize bounds the metadata files the repository reads back.
const MaxMetadataSize = 16 << 20

// Blob key prefixes. Metadata lives under tuf/, artifacts under targets/
// at their hash-prefixed path, as consistent snapshots need.
const (
	metadataPrefix = "tuf/"
	targetsPrefix  = "targets/"
)

// Config is what a Repository needs.
type Config struct {
	Blobs  BlobStore
	Drafts DraftStore
	Lock   Locker
	// Online signs snapshot and timestamp. It is the only key the server
	// holds; root and targets are signed offline.
	Online signing.Signer
	Expiry Expiry
	Now    func() time.Time
	Logger *slog.Logger
}

// Repository is the TUF repository: it builds drafts of offline-signed
// metadata, collects their signatures, publishes them crash-safely to the
// blob store and keeps timestamp and snapshot fresh with the online key.
// Published metadata is cached in memory for serving.
type Repository struct {
	blobs  BlobStore
	drafts DraftStore
	lock   Locker
	online signing.Signer
	expiry Expiry
	now    func() time.Time
	log    *slog.Logger

	state atomic.Pointer[state]
	// hist keeps older published targets versions parsed, for
	// describing the drafts that replaced them (targetsAt).
	hist struct {
		sync.Mutex
		targets map[int64]*metadata.Metadata[metadata.TargetsType]
	}
}

// New returns a Repository; call Load before serving.
func New(cfg Config) (*Repository, error) {
	if cfg.Blobs == nil || cfg.Drafts == nil || cfg.Lock == nil || cfg.Online == nil {
		return nil, errors.New("manifests: Blobs, Drafts, Lock and Online are required")
	}
	cfg.Now = clock.Or(cfg.Now)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Expiry == (Expiry{}) {
		cfg.Expiry = DefaultExpiry()
	}
	r := &Repository{blobs: cfg.Blobs, drafts: cfg.Drafts, lock: cfg.Lock, online: cfg.Online,
		expiry: cfg.Expiry, now: cfg.Now, log: cfg.Logger}
	r.state.Store(&state{})
	return r, nil
}

// OnlineKey is the public half of the server's timestamp/snapshot key, for
// release engineers to put into root.
func (r *Repository) OnlineKey() *metadata.Key { return r.online.Key() }

// state is one consistent published view: the newest root, and the
// timestamp with the snapshot and targets it points at. It is replaced
// whole, never changed.
type state struct {
	roots        [][]byte // roots[i] is version i+1, as published
	root         *metadata.Metadata[metadata.RootType]
	tsBytes      []byte
	timestamp    *metadata.Metadata[metadata.TimestampType]
	snapBytes    []byte
	snapshot     *metadata.Metadata[metadata.SnapshotType]
	targetsBytes []byte
	targets      *metadata.Metadata[metadata.TargetsType]
	// prev keeps the snapshot and targets of the state before, so a client
	// that fetched the old timestamp just before a publish is still served
	// from memory.
	prevSnap, prevTargets versioned
}

type versioned struct {
	version int64
	data    []byte
}

func (s *state) rootVersion() int64 { return int64(len(s.roots)) }

func (s *state) targetsVersion() int64 {
	if s.targets == nil {
		return 0
	}
	return s.targets.Signed.Version
}

func (s *state) snapshotVersion() int64 {
	if s.snapshot == nil {
		return 0
	}
	return s.snapshot.Signed.Version
}

// Load reads the published repository from the blob store. Call it at start;
// Refresh keeps it current afterwards.
func (r *Repository) Load(ctx context.Context) error {
	st, err := r.read(ctx, r.state.Load())
	if err != nil {
		return err
	}
	r.setState(st)
	return nil
}

// setState publishes st to readers unless the cached state is already
// newer: a refresh that read the store just before a publish must not
// put the older timestamp back, which clients would take for a rollback.
func (r *Repository) setState(st *state) {
	for {
		cur := r.state.Load()
		if st.rootVersion() < cur.rootVersion() || st.timestampVersion() < cur.timestampVersion() {
			return
		}
		if r.state.CompareAndSwap(cur, st) {
			return
		}
	}
}

func (s *state) timestampVersion() int64 {
	if s.timestamp == nil {
		return 0
	}
	return s.timestamp.Signed.Version
}

// Refresh picks up what another replica published: it reads timestamp.json
// and probes for a newer root, and reloads the rest only if they changed.
func (r *Repository) Refresh(ctx context.Context) error { return r.Load(ctx) }

// read builds the published state from the blob store, reusing what prev
// already holds (roots are immutable; an unchanged timestamp means an
// unchanged snapshot and targets).
func (r *Repository) read(ctx context.Context, prev *state) (*state, error) {
	st := &state{roots: slices.Clone(prev.roots), root: prev.root}
	for v := len(st.roots) + 1; ; v++ {
		b, err := r.readBlob(ctx, metadataPrefix+strconv.Itoa(v)+".root.json")
		if errors.Is(err, ErrNotExist) {
			break
		}
		if err != nil {
			return nil, err
		}
		root, err := (&metadata.Metadata[metadata.RootType]{}).FromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("published %d.root.json: %w", v, err)
		}
		st.roots, st.root = append(st.roots, b), root
	}

	ts, err := r.readBlob(ctx, metadataPrefix+"timestamp.json")
	if errors.Is(err, ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if bytes.Equal(ts, prev.tsBytes) {
		st.tsBytes, st.timestamp = prev.tsBytes, prev.timestamp
		st.snapBytes, st.snapshot = prev.snapBytes, prev.snapshot
		st.targetsBytes, st.targets = prev.targetsBytes, prev.targets
		st.prevSnap, st.prevTargets = prev.prevSnap, prev.prevTargets
		return st, nil
	}
	st.tsBytes = ts
	if st.timestamp, err = (&metadata.Metadata[metadata.TimestampType]{}).FromBytes(ts); err != nil {
		return nil, fmt.Errorf("published timestamp.json: %w", err)
	}
	snapMeta := st.timestamp.Signed.Meta["snapshot.json"]
	if snapMeta == nil {
		return nil, errors.New("published timestamp.json lists no snapshot.json")
	}
	if st.snapBytes, err = r.readNamed(ctx, "timestamp.json", strconv.FormatInt(snapMeta.Version, 10)+".snapshot.json"); err != nil {
		return nil, err
	}
	if st.snapshot, err = (&metadata.Metadata[metadata.SnapshotType]{}).FromBytes(st.snapBytes); err != nil {
		return nil, fmt.Errorf("published snapshot: %w", err)
	}
	targetsMeta := st.snapshot.Signed.Meta["targets.json"]
	if targetsMeta == nil {
		return nil, errors.New("published snapshot lists no targets.json")
	}
	if st.targetsBytes, err = r.readNamed(ctx, "snapshot", strconv.FormatInt(targetsMeta.Version, 10)+".targets.json"); err != nil {
		return nil, err
	}
	if st.targets, err = (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(st.targetsBytes); err != nil {
		return nil, fmt.Errorf("published targets: %w", err)
	}
	st.prevSnap, st.prevTargets = prev.current()
	return st, nil
}

// current returns the snapshot and targets of s, for the next state's prev.
func (s *state) current() (snap, targets versioned) {
	if s.snapshot != nil {
		snap = versioned{s.snapshot.Signed.Version, s.snapBytes}
	}
	if s.targets != nil {
		targets = versioned{s.targets.Signed.Version, s.targetsBytes}
	}
	return snap, targets
}

// ErrCorrupt is returned (wrapped) when the published metadata names a
// file the blob store does not hold: the store was changed behind the
// repository's back, which no client request can cause or fix.
var ErrCorrupt = errors.New("published repository is corrupt")

// readNamed reads the metadata file name that the published file by names.
// Its absence is corruption, not a missing object: the ErrNotExist is
// kept as text only (%v), so that it cannot become a "not found" answer.
func (r *Repository) readNamed(ctx context.Context, by, name string) ([]byte, error) {
	b, err := r.readBlob(ctx, metadataPrefix+name)
	if errors.Is(err, ErrNotExist) {
		return nil, fmt.Errorf("%w: published %s names %s, which is missing from the blob store (%v)", ErrCorrupt, by, metadataPrefix+name, err)
	}
	return b, err
}

func (r *Repository) readBlob(ctx context.Context, key string) ([]byte, error) {
	return ReadSmall(ctx, r.blobs, key, MaxMetadataSize)
}

// ReadSmall reads the object key whole, refusing one of more than max
// bytes: for metadata and other small signed files read back from the
// store, which a corrupt or hostile store must not make unbounded.
func ReadSmall(ctx context.Context, blobs BlobStore, key string, max int64) ([]byte, error) {
	rc, _, err := blobs.Get(ctx, key, Range{})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("read %s: larger than %d bytes", key, max)
	}
	return b, nil
}

// File is one metadata file as served.
type File struct {
	Data []byte
	// ETag is the quoted sha256 of Data.
	ETag string
	// Immutable is true for every file but timestamp.json: versioned
	// files never change once published.
	Immutable bool
	// Expires is the metadata's own expiry (timestamp.json only), which
	// bounds how long a cache may keep it.
	Expires time.Time
}

// ErrBadName is returned for metadata file names the repository never
// publishes.
var ErrBadName = errors.New("not a metadata file name")

// MetadataFile returns a published metadata file by its consistent-snapshot
// name: "timestamp.json" or "N.root.json", "N.snapshot.json",
// "N.targets.json". Recent versions come from memory; an older snapshot or
// targets comes from the blob store.
func (r *Repository) MetadataFile(ctx context.Context, name string) (File, error) {
	st := r.state.Load()
	if name == "timestamp.json" {
		if st.timestamp == nil {
			return File{}, fmt.Errorf("timestamp.json: %w", ErrNotExist)
		}
		return File{Data: st.tsBytes, ETag: etag(st.tsBytes), Expires: st.timestamp.Signed.Expires}, nil
	}
	version, role, ok := parseMetadataName(name)
	if !ok {
		return File{}, fmt.Errorf("%q: %w", name, ErrBadName)
	}
	var data []byte
	switch {
	case role == "root" && version <= st.rootVersion():
		data = st.roots[version-1]
	case role == "snapshot" && version == st.snapshotVersion():
		data = st.snapBytes
	case role == "snapshot" && version == st.prevSnap.version:
		data = st.prevSnap.data
	case role == "targets" && version == st.targetsVersion():
		data = st.targetsBytes
	case role == "targets" && version == st.prevTargets.version:
		data = st.prevTargets.data
	case role == "root":
		return File{}, fmt.Errorf("%s: %w", name, ErrNotExist)
	default:
		if (role == "snapshot" && version > st.snapshotVersion()) || (role == "targets" && version > st.targetsVersion()) {
			// Not published (perhaps written by a publish that crashed
			// before its timestamp): clients must not see it.
			return File{}, fmt.Errorf("%s: %w", name, ErrNotExist)
		}
		b, err := r.readBlob(ctx, metadataPrefix+name)
		if err != nil {
			return File{}, err
		}
		data = b
	}
	return File{Data: data, ETag: etag(data), Immutable: true}, nil
}

// parseMetadataName splits "N.role.json"; N is a positive decimal without
// leading zeros, sign or spaces ([1-9][0-9]*), so each file has exactly one
// name: strconv.ParseInt alone would take "+1" for 1.
func parseMetadataName(name string) (int64, string, bool) {
	num, rest, ok := strings.Cut(name, ".")
	if !ok || num == "" || num[0] == '0' || len(num) > 18 {
		return 0, "", false
	}
	for _, c := range []byte(num) {
		if c < '0' || c > '9' {
			return 0, "", false
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 1 {
		return 0, "", false
	}
	switch rest {
	case "root.json", "snapshot.json", "targets.json":
		return v, strings.TrimSuffix(rest, ".json"), true
	}
	return 0, "", false
}

func etag(data []byte) string {
	sum := sha256.Sum256(data)
	return `"` + hex.EncodeToString(sum[:]) + `"`
}

// TargetKey is the blob key of an artifact: consistent snapshots name a
// target file by its sha256, "dir/<sha256>.name", which is what TUF
// clients request under the targets URL.
func TargetKey(targetPath, sha256Hex string) string {
	dir, base := path.Split(targetPath)
	return targetsPrefix + dir + sha256Hex + "." + base
}

// PublishedTargetFile reports whether rel, a path under the targets URL
// as TUF clients request it ("dir/<sha256>.name", TargetKey without its
// prefix), names a target of the published targets metadata, with that
// sha256. It reads memory only. An artifact uploaded for a release that
// was never published, and one whose target was yanked or replaced, is no
// published target file, though its blob may still be stored.
func (r *Repository) PublishedTargetFile(rel string) bool {
	st := r.state.Load()
	if st.targets == nil {
		return false
	}
	dir, base := path.Split(rel)
	sum, name, ok := strings.Cut(base, ".")
	if !ok || len(sum) != 2*sha256.Size {
		return false
	}
	t, ok := st.targets.Signed.Targets[dir+name]
	return ok && hex.EncodeToString(t.Hashes["sha256"]) == sum
}

// MaxTargetNameLen bounds the file name (last segment) of a target path:
// TargetKey puts the 64-digit sha256 and a dot before it, and the result
// must still be a key segment of at most MaxSegmentLen bytes.
const MaxTargetNameLen = MaxSegmentLen - 65

// ValidateTargetPath checks a target path: a clean relative slash path of
// at most 512 bytes with a non-empty file name of at most MaxTargetNameLen
// bytes, whose blob key both stores can hold.
func ValidateTargetPath(p string) error {
	if len(p) > 512 {
		return fmt.Errorf("%w: target path longer than 512 bytes", ErrInvalidKey)
	}
	if err := ValidateKey(p); err != nil {
		return err
	}
	if name := path.Base(p); len(name) > MaxTargetNameLen {
		return fmt.Errorf("%w: target file name is %d bytes, longer than %d", ErrInvalidKey, len(name), MaxTargetNameLen)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == '%' || r == '?' || r == '#' {
			return fmt.Errorf("%w: target path %q has a control character, %%, ? or #", ErrInvalidKey, p)
		}
	}
	return nil
}
