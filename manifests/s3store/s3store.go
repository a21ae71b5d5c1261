// Package s3store is a manifests.BlobStore on an S3-compatible object store
// (AWS S3, MinIO), using minio-go. Errors are translated here: callers see
// manifests sentinels and never need a minio type.
package s3store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/patchfleet/ota/manifests"
)

// DefaultPartSize is the multipart part size Put uses when Config.PartSize
// is zero. Put buffers one part in memory at a time.
const DefaultPartSize = 16 << 20

// minPartSize is the smallest part S3 accepts for all but the last part.
const minPartSize = 5 << 20

// Config locates a bucket and the key prefix the store keeps its objects
// under.
type Config struct {
	// Endpoint is host:port, without a scheme.
	Endpoint string
	// Secure selects https.
	Secure bool
	// Region is the bucket's region. Empty lets the client look it up.
	Region string
	// AccessKey and SecretKey are static credentials; both empty means
	// anonymous requests.
	AccessKey string
	SecretKey string
	// Bucket must follow the S3 bucket naming rules.
	Bucket string
	// Prefix is prepended to every key with a "/". Empty stores keys at the
	// top of the bucket.
	Prefix string
	// PartSize is the multipart part size for Put; 0 means DefaultPartSize.
	// S3 requires at least 5 MiB.
	PartSize uint64
}

// Store is a manifests.BlobStore backed by an S3 bucket. It is safe for
// concurrent use.
type Store struct {
	client   *minio.Client
	pinger   *minio.Client // same as client, without retries
	bucket   string
	region   string
	prefix   string
	partSize uint64
}

var _ manifests.BlobStore = (*Store)(nil)

// New returns a Store for cfg. It does not contact the server; use Ping or
// EnsureBucket for that.
func New(cfg Config) (*Store, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("s3store: empty endpoint; want host:port")
	}
	if strings.Contains(cfg.Endpoint, "://") || strings.Contains(cfg.Endpoint, "/") {
		return nil, fmt.Errorf("s3store: endpoint %q: want host:port without scheme or path (set Secure for https)", cfg.Endpoint)
	}
	if err := validateBucket(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	prefix, err := cleanPrefix(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < minPartSize {
		return nil, fmt.Errorf("s3store: part size %d is below the S3 minimum of %d bytes", partSize, minPartSize)
	}
	opts := minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.Secure,
		Region: cfg.Region,
	}
	client, err := minio.New(cfg.Endpoint, &opts)
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	// Ping gets a client that does not retry: minio-go retries a refused
	// connection until the deadline and then reports only "context deadline
	// exceeded", while a readiness probe should say what is wrong.
	opts.MaxRetries = 1
	pinger, err := minio.New(cfg.Endpoint, &opts)
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	return &Store{client: client, pinger: pinger, bucket: cfg.Bucket, region: cfg.Region, prefix: prefix, partSize: partSize}, nil
}

// Put stores r under key. An object smaller than PartSize (TUF metadata,
// most artifacts' signatures) goes up in one PUT of known size; a larger one
// streams as a multipart upload of PartSize parts, so memory use stays
// bounded whatever the object size. S3 makes the object visible only when
// the upload completes; a failed upload is aborted. The returned ModTime is
// zero for multipart uploads: S3 does not report it for them.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (manifests.ObjectInfo, error) {
	if err := manifests.ValidateKey(key); err != nil {
		return manifests.ObjectInfo{}, err
	}
	h := sha256.New()
	body := io.TeeReader(sourceReader{r}, h)
	// Read up to one part first: if the data ends there, the size is known.
	var head bytes.Buffer
	if _, err := head.ReadFrom(io.LimitReader(body, int64(s.partSize)+1)); err != nil {
		return manifests.ObjectInfo{}, s.translate(ctx, "put", key, err)
	}
	var src io.Reader = &head
	size := int64(head.Len())
	if size > int64(s.partSize) {
		src, size = io.MultiReader(&head, body), -1
	}
	up, err := s.client.PutObject(ctx, s.bucket, s.name(key), src, size, minio.PutObjectOptions{
		PartSize:    s.partSize,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return manifests.ObjectInfo{}, s.translate(ctx, "put", key, err)
	}
	return manifests.ObjectInfo{
		Key:     key,
		Size:    up.Size,
		ModTime: up.LastModified,
		SHA256:  hex.EncodeToString(h.Sum(nil)),
	}, nil
}

// sourceReader wraps the errors of the caller's reader. minio-go takes a
// bare io.ErrUnexpectedEOF from the reader for the end of the data and would
// complete the upload with a truncated object; a wrapped error aborts it.
type sourceReader struct{ r io.Reader }

func (r sourceReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read object data: %w", err)
	}
	return n, err
}

// Get stats key, checks rng against its size and then opens the range. The
// read is conditional on the ETag seen by the stat, so the data and the
// returned info always describe the same version of the object.
func (s *Store) Get(ctx context.Context, key string, rng manifests.Range) (io.ReadCloser, manifests.ObjectInfo, error) {
	if err := manifests.ValidateKey(key); err != nil {
		return nil, manifests.ObjectInfo{}, err
	}
	core := minio.Core{Client: s.client}
	for attempt := 1; ; attempt++ {
		oi, err := s.client.StatObject(ctx, s.bucket, s.name(key), minio.StatObjectOptions{})
		if err != nil {
			return nil, manifests.ObjectInfo{}, s.translate(ctx, "get", key, err)
		}
		info := objectInfo(key, oi)
		if err := manifests.ValidateRange(rng, info.Size); err != nil {
			return nil, manifests.ObjectInfo{}, fmt.Errorf("s3store: get %s: %w", key, err)
		}
		n := rng.Length
		if n == 0 {
			n = info.Size - rng.Offset
		}
		if n == 0 {
			// S3 answers 416 to any range on an empty object and to a
			// range starting at the end.
			return io.NopCloser(strings.NewReader("")), info, nil
		}
		var opts minio.GetObjectOptions
		if err := opts.SetMatchETag(oi.ETag); err != nil {
			return nil, manifests.ObjectInfo{}, fmt.Errorf("s3store: get %s: %w", key, err)
		}
		if n < info.Size {
			if err := opts.SetRange(rng.Offset, rng.Offset+n-1); err != nil {
				return nil, manifests.ObjectInfo{}, fmt.Errorf("s3store: get %s: %w", key, err)
			}
		}
		// Core.GetObject sends the request now, so errors surface here
		// rather than on the first Read as with Client.GetObject.
		body, _, _, err := core.GetObject(ctx, s.bucket, s.name(key), opts)
		if err == nil {
			return body, info, nil
		}
		if errorCode(err) == minio.PreconditionFailed && attempt < 10 {
			// Overwritten between stat and get: stat again. An object
			// rewritten without pause can win a few rounds in a row (the
			// conformance suite's ConcurrentOverwrite does that).
			continue
		}
		return nil, manifests.ObjectInfo{}, s.translate(ctx, "get", key, err)
	}
}

// Stat describes key.
func (s *Store) Stat(ctx context.Context, key string) (manifests.ObjectInfo, error) {
	if err := manifests.ValidateKey(key); err != nil {
		return manifests.ObjectInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.name(key), minio.StatObjectOptions{})
	if err != nil {
		return manifests.ObjectInfo{}, s.translate(ctx, "stat", key, err)
	}
	return objectInfo(key, oi), nil
}

// List yields the objects whose keys start with prefix in lexical key order,
// with the store prefix removed. A prefix whose part up to the last "/" is
// not a valid key yields a single manifests.ErrInvalidKey error. Iteration
// stops after the first error.
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[manifests.ObjectInfo, error] {
	return func(yield func(manifests.ObjectInfo, error) bool) {
		if i := strings.LastIndex(prefix, "/"); i >= 0 {
			if err := manifests.ValidateKey(prefix[:i]); err != nil {
				yield(manifests.ObjectInfo{}, fmt.Errorf("list prefix %q: %w", prefix, err))
				return
			}
		}
		owner := false
		objects := s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{
			Prefix:     s.name(prefix),
			Recursive:  true,
			FetchOwner: &owner,
		})
		for oi := range objects {
			if oi.Err != nil {
				yield(manifests.ObjectInfo{}, s.translate(ctx, "list", prefix, oi.Err))
				return
			}
			key := oi.Key
			if s.prefix != "" {
				key = strings.TrimPrefix(key, s.prefix+"/")
			}
			if !yield(objectInfo(key, oi), nil) {
				return
			}
		}
		// The iterator ends quietly when ctx is done; do not pass a
		// truncated listing off as complete.
		if err := ctx.Err(); err != nil {
			yield(manifests.ObjectInfo{}, fmt.Errorf("s3store: list %s: %w", prefix, err))
		}
	}
}

// Delete removes key. S3 deletes succeed for missing keys, so Delete stats
// first to report manifests.ErrNotExist. That check races with concurrent
// deletes: two Deletes of the same key may both return nil.
func (s *Store) Delete(ctx context.Context, key string) error {
	if _, err := s.Stat(ctx, key); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.name(key), minio.RemoveObjectOptions{}); err != nil {
		return s.translate(ctx, "delete", key, err)
	}
	return nil
}

// PresignGet returns a URL that downloads key without credentials until ttl
// passes. S3 accepts a ttl from one second to seven days. It does not check
// that key exists.
func (s *Store) PresignGet(ctx context.Context, key string, ttl time.Duration) (string, error) {
	if err := manifests.ValidateKey(key); err != nil {
		return "", err
	}
	u, err := s.client.PresignedGetObject(ctx, s.bucket, s.name(key), ttl, nil)
	if err != nil {
		return "", s.translate(ctx, "presign", key, err)
	}
	return u.String(), nil
}

// Ping checks that the server answers and the bucket exists.
func (s *Store) Ping(ctx context.Context) error {
	ok, err := s.pinger.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.translate(ctx, "ping", "", err)
	}
	if !ok {
		return fmt.Errorf("s3store: bucket %q does not exist", s.bucket)
	}
	return nil
}

// EnsureBucket creates the bucket if it does not exist, for first-time setup
// and tests.
func (s *Store) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.translate(ctx, "ensure bucket", "", err)
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region})
	if err != nil && errorCode(err) != minio.BucketAlreadyOwnedByYou {
		return s.translate(ctx, "ensure bucket", "", err)
	}
	return nil
}

// name is the S3 object name for key (or for a List prefix).
func (s *Store) name(key string) string {
	if s.prefix == "" {
		return key
	}
	return s.prefix + "/" + key
}

// translate turns a minio-go error into one callers can handle with
// errors.Is: manifests.ErrNotExist for a missing key, a message naming the
// bucket for a missing bucket, and the context's error when ctx is done.
func (s *Store) translate(ctx context.Context, op, key string, err error) error {
	if key != "" {
		op += " " + key
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case resp.Code == minio.NoSuchBucket:
			return fmt.Errorf("s3store: %s: bucket %q does not exist", op, s.bucket)
		case resp.Code == minio.NoSuchKey || resp.StatusCode == 404:
			return fmt.Errorf("%s: %w", key, manifests.ErrNotExist)
		case resp.Code == minio.InvalidRange:
			return fmt.Errorf("s3store: %s: %w", op, manifests.ErrInvalidRange)
		}
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("s3store: %s: %w: %w", op, cerr, err)
	}
	return fmt.Errorf("s3store: %s: %w", op, err)
}

func errorCode(err error) string {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return resp.Code
	}
	return ""
}

func objectInfo(key string, oi minio.ObjectInfo) manifests.ObjectInfo {
	return manifests.ObjectInfo{Key: key, Size: oi.Size, ModTime: oi.LastModified}
}
