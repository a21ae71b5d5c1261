// Package manifests owns the TUF repository (from the TUF issue on) and the
// blob storage it publishes to. Storage implementations live in the
// fsstore and s3store subpackages; both satisfy BlobStore and return the
// sentinels declared here, so callers never see a filesystem or S3 error type.
package manifests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"time"
)

// ErrNotExist is returned (wrapped) when an object does not exist.
var ErrNotExist = errors.New("object does not exist")

// ErrInvalidKey is returned (wrapped) for a key that is empty, absolute,
// contains "." or ".." segments, a backslash, a NUL byte, an empty segment
// or a segment longer than MaxSegmentLen.
var ErrInvalidKey = errors.New("invalid object key")

// ErrPresignUnsupported is returned by stores that cannot hand out
// presigned URLs (the filesystem store); the server streams instead.
var ErrPresignUnsupported = errors.New("presigned URLs not supported by this store")

// ErrInvalidRange is returned when a requested byte range does not fit the object.
var ErrInvalidRange = errors.New("invalid byte range")

// MaxKeyLen bounds object keys; S3 allows 1024 bytes.
const MaxKeyLen = 1024

// MaxSegmentLen bounds each slash-separated segment of a key: the
// filesystem store makes every segment a file or directory name, and Linux
// filesystems hold at most 255 bytes in one (NAME_MAX). S3 would take
// longer ones, but both stores must accept the same keys, or an artifact
// could be published on S3 that a filesystem-backed replica cannot hold.
const MaxSegmentLen = 255

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
	// SHA256 is the lowercase hex sha256 of the content. Put always fills it;
	// Stat, Get and List leave it empty because neither backend keeps it
	// without reading the whole object.
	SHA256 string
}

// Range selects bytes [Offset, Offset+Length) of an object. Length 0 means
// "to the end", so the zero Range is the whole object.
type Range struct {
	Offset int64
	Length int64
}

// BlobStore stores immutable-by-convention objects under slash-separated keys.
// Writes are atomic: a reader sees either the previous object or the complete
// new one, never a partial write.
type BlobStore interface {
	// Put streams r into key and returns the stored size and sha256. Nothing
	// is visible under key unless Put returns nil.
	Put(ctx context.Context, key string, r io.Reader) (ObjectInfo, error)
	// Get opens key for reading the given range. Info describes the whole
	// object (Size is the full object size). The caller closes the reader.
	Get(ctx context.Context, key string, rng Range) (io.ReadCloser, ObjectInfo, error)
	// Stat describes key without reading it.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List yields the objects whose keys start with prefix, in lexical key order.
	List(ctx context.Context, prefix string) iter.Seq2[ObjectInfo, error]
	// Delete removes key. Deleting a missing key returns ErrNotExist.
	Delete(ctx context.Context, key string) error
	// PresignGet returns a URL that fetches key without credentials until ttl
	// passes, or ErrPresignUnsupported.
	PresignGet(ctx context.Context, key string, ttl time.Duration) (string, error)
	// Ping reports whether the store is reachable and usable.
	Ping(ctx context.Context) error
}

// ValidateKey checks that key is a clean relative slash-separated path that
// both the filesystem and S3 can hold.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidKey, MaxKeyLen)
	case strings.HasPrefix(key, "/"):
		return fmt.Errorf("%w: %q is absolute", ErrInvalidKey, key)
	case strings.ContainsAny(key, "\\\x00"):
		return fmt.Errorf("%w: %q contains a backslash or NUL", ErrInvalidKey, key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("%w: %q has an empty, \".\" or \"..\" segment", ErrInvalidKey, key)
		}
		if len(seg) > MaxSegmentLen {
			return fmt.Errorf("%w: a path segment is %d bytes, longer than %d", ErrInvalidKey, len(seg), MaxSegmentLen)
		}
	}
	return nil
}

// ValidateRange checks rng against an object of the given size.
func ValidateRange(rng Range, size int64) error {
	if rng.Offset < 0 || rng.Length < 0 || rng.Offset > size || rng.Offset+rng.Length > size {
		return fmt.Errorf("%w: offset %d length %d for size %d", ErrInvalidRange, rng.Offset, rng.Length, size)
	}
	return nil
}
