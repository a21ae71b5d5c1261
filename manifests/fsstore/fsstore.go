// Package fsstore is a manifests.BlobStore on a local directory. Objects live
// at root/<key>; writes go through a temporary file in root/.tmp and are
// renamed into place, so readers see either the old or the new object.
package fsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/patchfleet/ota/manifests"
)

// tmpDir is the directory under root that holds in-progress writes. It is on
// the same filesystem as the objects, so the final rename is atomic. Keys
// whose first segment is tmpDir are rejected.
const tmpDir = ".tmp"

// Store is a manifests.BlobStore backed by a directory. It is safe for
// concurrent use, also by several processes sharing the directory.
type Store struct {
	root string
}

var _ manifests.BlobStore = (*Store)(nil)

// New returns a Store rooted at root, creating the directory (0755) if it
// does not exist. It fails if root cannot be created or written to.
func New(root string) (*Store, error) {
	if root == "" {
		return nil, errors.New("fsstore: empty root directory")
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("fsstore: root directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(root, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("fsstore: create root directory %q: %w", root, err)
	}
	s := &Store{root: root}
	if err := s.probe(); err != nil {
		return nil, fmt.Errorf("fsstore: root directory %q is not writable: %w", root, err)
	}
	s.removeStaleTemp(time.Now().Add(-staleTempAge))
	return s, nil
}

// staleTempAge is how old a temp file must be before New removes it. A
// process killed mid-Put leaves its temp file behind; a live upload of
// several GB may take a while, so only day-old files count as abandoned.
const staleTempAge = 24 * time.Hour

// removeStaleTemp deletes temp files last written before cutoff. It is best
// effort: a file it cannot remove is left for the next start.
func (s *Store) removeStaleTemp(cutoff time.Time) {
	entries, err := os.ReadDir(filepath.Join(s.root, tmpDir))
	if err != nil {
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err == nil && info.Mode().IsRegular() && info.ModTime().Before(cutoff) {
			os.Remove(filepath.Join(s.root, tmpDir, e.Name()))
		}
	}
}

// Root returns the directory the store keeps its objects in.
func (s *Store) Root() string { return s.root }

// Put streams r into key. The data goes to a temporary file that is synced
// and then renamed over key, so a failed or cancelled Put leaves any previous
// object untouched and nothing behind in the temporary directory.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (manifests.ObjectInfo, error) {
	if err := s.validateKey(key); err != nil {
		return manifests.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return manifests.ObjectInfo{}, fmt.Errorf("fsstore: put %s: %w", key, err)
	}
	info, err := s.put(ctx, key, r)
	if errors.Is(err, syscall.ENAMETOOLONG) {
		return manifests.ObjectInfo{}, nameTooLong(key)
	}
	if err != nil {
		return manifests.ObjectInfo{}, fmt.Errorf("fsstore: put %s: %w", key, err)
	}
	return info, nil
}

func (s *Store) put(ctx context.Context, key string, r io.Reader) (_ manifests.ObjectInfo, err error) {
	f, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "put-*")
	if err != nil {
		return manifests.ObjectInfo{}, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()

	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
	if err != nil {
		return manifests.ObjectInfo{}, err
	}
	// CreateTemp makes the file 0600; objects are meant to be readable by
	// whatever else serves the directory.
	if err := f.Chmod(0o644); err != nil {
		return manifests.ObjectInfo{}, err
	}
	if err := f.Sync(); err != nil {
		return manifests.ObjectInfo{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		return manifests.ObjectInfo{}, err
	}
	if err := f.Close(); err != nil {
		return manifests.ObjectInfo{}, err
	}
	// Last chance to honour a cancellation: after the rename the object is
	// visible and the Put has happened.
	if err := ctx.Err(); err != nil {
		return manifests.ObjectInfo{}, err
	}

	dst := s.path(key)
	dir := filepath.Dir(dst)
	// A concurrent Delete prunes empty directories, so the directory made
	// for this object can vanish before the rename; make it again.
	for attempt := 1; ; attempt++ {
		if err := mkdirAll(dir); err != nil {
			return manifests.ObjectInfo{}, err
		}
		err = os.Rename(tmp, dst)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return manifests.ObjectInfo{}, err
	}
	if err := syncDir(dir); err != nil {
		return manifests.ObjectInfo{}, err
	}
	return manifests.ObjectInfo{
		Key:     key,
		Size:    size,
		ModTime: fi.ModTime(),
		SHA256:  hex.EncodeToString(h.Sum(nil)),
	}, nil
}

// Get opens the rng part of key. The returned reader reads from the file
// that was in place when Get was called, even if key is overwritten or
// deleted while it is being read.
func (s *Store) Get(ctx context.Context, key string, rng manifests.Range) (io.ReadCloser, manifests.ObjectInfo, error) {
	if err := s.validateKey(key); err != nil {
		return nil, manifests.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, manifests.ObjectInfo{}, fmt.Errorf("fsstore: get %s: %w", key, err)
	}
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, manifests.ObjectInfo{}, s.pathError("get", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, manifests.ObjectInfo{}, s.pathError("get", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, manifests.ObjectInfo{}, fmt.Errorf("%s: %w", key, manifests.ErrNotExist)
	}
	info := objectInfo(key, fi)
	if err := manifests.ValidateRange(rng, info.Size); err != nil {
		f.Close()
		return nil, manifests.ObjectInfo{}, fmt.Errorf("fsstore: get %s: %w", key, err)
	}
	n := rng.Length
	if n == 0 {
		n = info.Size - rng.Offset
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, rng.Offset, n), f}, info, nil
}

// Stat describes key.
func (s *Store) Stat(ctx context.Context, key string) (manifests.ObjectInfo, error) {
	if err := s.validateKey(key); err != nil {
		return manifests.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return manifests.ObjectInfo{}, fmt.Errorf("fsstore: stat %s: %w", key, err)
	}
	fi, err := os.Stat(s.path(key))
	if err != nil {
		return manifests.ObjectInfo{}, s.pathError("stat", key, err)
	}
	if !fi.Mode().IsRegular() {
		return manifests.ObjectInfo{}, fmt.Errorf("%s: %w", key, manifests.ErrNotExist)
	}
	return objectInfo(key, fi), nil
}

// List yields the objects whose keys start with prefix in lexical key
// order. A prefix whose part up to the last "/" is not a valid key yields
// a single manifests.ErrInvalidKey error. Iteration stops after the first
// error.
func (s *Store) List(ctx context.Context, prefix string) iter.Seq2[manifests.ObjectInfo, error] {
	return func(yield func(manifests.ObjectInfo, error) bool) {
		dir, name, err := splitPrefix(prefix)
		if err != nil {
			yield(manifests.ObjectInfo{}, err)
			return
		}
		s.walk(ctx, dir, name, yield)
	}
}

// splitPrefix splits a List prefix into its directory part ("" or ending in
// "/") and the start of the names to match inside that directory.
func splitPrefix(prefix string) (dir, name string, err error) {
	i := strings.LastIndex(prefix, "/")
	if i < 0 {
		return "", prefix, nil
	}
	if err := manifests.ValidateKey(prefix[:i]); err != nil {
		return "", "", fmt.Errorf("list prefix %q: %w", prefix, err)
	}
	return prefix[:i+1], prefix[i+1:], nil
}

// walk yields, in key order, the objects below the key directory dir ("" or
// ending in "/") whose next segment starts with name. It reports whether the
// caller should go on.
//
// Sorting a directory by entry name would not give key order: "a/b" must
// come after "a-b" and before "a0", but the entry "a" sorts before both. So
// siblings are sorted as their keys continue: a directory as name+"/".
func (s *Store) walk(ctx context.Context, dir, name string, yield func(manifests.ObjectInfo, error) bool) bool {
	if err := ctx.Err(); err != nil {
		yield(manifests.ObjectInfo{}, fmt.Errorf("fsstore: list: %w", err))
		return false
	}
	entries, err := os.ReadDir(filepath.Join(s.root, filepath.FromSlash(dir)))
	if err != nil {
		if isNotExist(err) {
			// No such prefix, or removed by a concurrent Delete.
			return true
		}
		yield(manifests.ObjectInfo{}, fmt.Errorf("fsstore: list %s: %w", dir, err))
		return false
	}
	entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool {
		return !strings.HasPrefix(e.Name(), name) || (dir == "" && e.Name() == tmpDir)
	})
	slices.SortFunc(entries, func(a, b fs.DirEntry) int {
		return strings.Compare(sortName(a), sortName(b))
	})
	for _, e := range entries {
		key := dir + e.Name()
		if e.IsDir() {
			if !s.walk(ctx, key+"/", "", yield) {
				return false
			}
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if isNotExist(err) {
			continue // deleted since ReadDir
		}
		if err != nil {
			yield(manifests.ObjectInfo{}, fmt.Errorf("fsstore: list %s: %w", key, err))
			return false
		}
		if !yield(objectInfo(key, fi), nil) {
			return false
		}
	}
	return true
}

func sortName(e fs.DirEntry) string {
	if e.IsDir() {
		return e.Name() + "/"
	}
	return e.Name()
}

// Delete removes key and then any directories the removal left empty.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.validateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fsstore: delete %s: %w", key, err)
	}
	p := s.path(key)
	// os.Remove would also remove an empty directory, which is not an object.
	fi, err := os.Lstat(p)
	if err != nil {
		return s.pathError("delete", key, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w", key, manifests.ErrNotExist)
	}
	if err := os.Remove(p); err != nil {
		return s.pathError("delete", key, err)
	}
	// Best effort: os.Remove fails on a directory that is not empty, which
	// is exactly where pruning has to stop.
	for dir := filepath.Dir(p); dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// PresignGet returns manifests.ErrPresignUnsupported: files are served by
// streaming them.
func (s *Store) PresignGet(ctx context.Context, key string, ttl time.Duration) (string, error) {
	if err := s.validateKey(key); err != nil {
		return "", err
	}
	return "", fmt.Errorf("fsstore: presign %s: %w", key, manifests.ErrPresignUnsupported)
}

// Ping checks that root is still a directory the store can write to.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fsstore: ping: %w", err)
	}
	fi, err := os.Stat(s.root)
	if err != nil {
		return fmt.Errorf("fsstore: ping: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("fsstore: ping: %q is not a directory", s.root)
	}
	if err := s.probe(); err != nil {
		return fmt.Errorf("fsstore: ping: %q is not writable: %w", s.root, err)
	}
	return nil
}

// probe creates and removes a file in the temporary directory.
func (s *Store) probe() error {
	f, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "probe-*")
	if err != nil {
		return err
	}
	err = f.Close()
	if rerr := os.Remove(f.Name()); err == nil {
		err = rerr
	}
	return err
}

func (s *Store) validateKey(key string) error {
	if err := manifests.ValidateKey(key); err != nil {
		return err
	}
	if key == tmpDir || strings.HasPrefix(key, tmpDir+"/") {
		return fmt.Errorf("%w: %q is reserved by the filesystem store", manifests.ErrInvalidKey, tmpDir)
	}
	return nil
}

func (s *Store) path(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

// pathError translates a filesystem error for key: a missing file, or a
// file where the key needs a directory, is manifests.ErrNotExist; a name
// the filesystem cannot hold is manifests.ErrInvalidKey.
func (s *Store) pathError(op, key string, err error) error {
	if isNotExist(err) {
		return fmt.Errorf("%s: %w", key, manifests.ErrNotExist)
	}
	if errors.Is(err, syscall.ENAMETOOLONG) {
		return nameTooLong(key)
	}
	return fmt.Errorf("fsstore: %s %s: %w", op, key, err)
}

// nameTooLong reports a key that manifests.ValidateKey accepts but the
// filesystem does not: one whose NAME_MAX is below manifests.MaxSegmentLen
// (eCryptfs allows 143 bytes) or whose root is deep enough to reach
// PATH_MAX. It is the key's fault, not a server error.
func nameTooLong(key string) error {
	return fmt.Errorf("%w: a segment of the %d-byte key is too long for this filesystem", manifests.ErrInvalidKey, len(key))
}

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func objectInfo(key string, fi fs.FileInfo) manifests.ObjectInfo {
	return manifests.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}
}

// mkdirAll is os.MkdirAll that also syncs the parent of each directory it
// creates, so that a new directory survives a crash along with the object
// renamed into it.
func mkdirAll(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: %w", dir, syscall.ENOTDIR)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent == dir {
		return err
	}
	if err := mkdirAll(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // created concurrently
		}
		return err
	}
	return syncDir(parent)
}

// syncDir makes the entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
