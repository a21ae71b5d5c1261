package manifests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ObjectReader reads one object of a BlobStore as an io.ReadSeekCloser, for
// http.ServeContent, which seeks to answer byte ranges. Seeking only moves
// the offset; the next Read opens a Get from there to the end of the
// object, so a HEAD, a 304 or a 416 reads nothing from the store, and a
// range costs one Get.
//
// Its methods may be called from different goroutines (ServeContent reads
// multi-range answers in its own goroutine while the handler may close
// the reader); each waits for the one in progress.
type ObjectReader struct {
	ctx   context.Context
	store BlobStore
	info  ObjectInfo

	mu     sync.Mutex
	off    int64
	rc     io.ReadCloser // open from off onwards; nil until the next Read
	closed bool
	err    error // the last read error other than io.EOF
}

var _ io.ReadSeekCloser = (*ObjectReader)(nil)

// NewObjectReader returns a reader of the object info describes (as Stat
// returned it: Key and Size are used). Nothing is read until the first
// Read.
func NewObjectReader(ctx context.Context, s BlobStore, info ObjectInfo) *ObjectReader {
	return &ObjectReader{ctx: ctx, store: s, info: info}
}

// errReaderClosed is returned by an ObjectReader used after Close.
var errReaderClosed = errors.New("object reader is closed")

// Read reads from the current offset. If the object has changed size since
// it was described, Read fails rather than mix two versions.
func (r *ObjectReader) Read(p []byte) (n int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer func() {
		if err != nil && err != io.EOF {
			r.err = err
		}
	}()
	if r.closed {
		return 0, errReaderClosed
	}
	if r.off >= r.info.Size {
		return 0, io.EOF
	}
	if r.rc == nil {
		rc, info, err := r.store.Get(r.ctx, r.info.Key, Range{Offset: r.off})
		if err != nil {
			return 0, err
		}
		if info.Size != r.info.Size {
			rc.Close()
			return 0, fmt.Errorf("read %s: the object changed from %d to %d bytes", r.info.Key, r.info.Size, info.Size)
		}
		r.rc = rc
	}
	n, err = r.rc.Read(p)
	r.off += int64(n)
	if err == io.EOF && r.off < r.info.Size {
		err = fmt.Errorf("read %s: %w at byte %d of %d", r.info.Key, io.ErrUnexpectedEOF, r.off, r.info.Size)
	}
	return n, err
}

// Err returns the last error a Read returned other than io.EOF, for
// callers such as http.ServeContent's that drop it.
func (r *ObjectReader) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Seek sets the offset for the next Read. Offsets past the end are
// allowed; reading there gives io.EOF.
func (r *ObjectReader) Seek(offset int64, whence int) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errReaderClosed
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.info.Size
	default:
		return 0, fmt.Errorf("seek %s: invalid whence %d", r.info.Key, whence)
	}
	if offset < 0 {
		return 0, fmt.Errorf("seek %s: negative offset %d", r.info.Key, offset)
	}
	if offset != r.off && r.rc != nil {
		r.rc.Close()
		r.rc = nil
	}
	r.off = offset
	return offset, nil
}

// Close releases the open Get, if any.
func (r *ObjectReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.rc == nil {
		return nil
	}
	err := r.rc.Close()
	r.rc = nil
	return err
}
