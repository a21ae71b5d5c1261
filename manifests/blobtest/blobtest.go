// Package blobtest is a conformance suite for manifests.BlobStore
// implementations. A store's tests call Run with a function that opens a
// fresh, empty store:
//
//	func TestStore(t *testing.T) {
//		blobtest.Run(t, func(t testing.TB) manifests.BlobStore {
//			s, err := fsstore.New(t.TempDir())
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
)

// Run runs the conformance suite as subtests of t. open is called once per
// subtest and must return an empty store that no other subtest uses; it
// registers its own cleanup with t.Cleanup.
func Run(t *testing.T, open func(t testing.TB) manifests.BlobStore) {
	tests := []struct {
		name string
		fn   func(*testing.T, manifests.BlobStore)
	}{
		{"RoundTrip", testRoundTrip},
		{"Empty", testEmpty},
		{"Overwrite", testOverwrite},
		{"GetRange", testGetRange},
		{"Missing", testMissing},
		{"Delete", testDelete},
		{"InvalidKey", testInvalidKey},
		{"SegmentLength", testSegmentLength},
		{"ObjectReader", testObjectReader},
		{"List", testList},
		{"ListStop", testListStop},
		{"FailedPut", testFailedPut},
		{"CancelledPut", testCancelledPut},
		{"ConcurrentOverwrite", testConcurrentOverwrite},
		{"Large", testLarge},
		{"Ping", testPing},
		{"Presign", testPresign},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

func testRoundTrip(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	data := payload(1, 100_000)
	info := MustPut(t, s, "dir/sub/object.bin", data)
	if info.Key != "dir/sub/object.bin" {
		t.Errorf("Put: got key %q, want %q", info.Key, "dir/sub/object.bin")
	}
	if info.Size != int64(len(data)) {
		t.Errorf("Put: got size %d, want %d", info.Size, len(data))
	}
	if want := sha256Hex(data); info.SHA256 != want {
		t.Errorf("Put: got sha256 %s, want %s", info.SHA256, want)
	}

	got, ginfo := MustGet(t, s, "dir/sub/object.bin", manifests.Range{})
	if !bytes.Equal(got, data) {
		t.Errorf("Get: got %d bytes (sha256 %s), want %d bytes (sha256 %s)", len(got), sha256Hex(got), len(data), sha256Hex(data))
	}
	if ginfo.Key != "dir/sub/object.bin" || ginfo.Size != int64(len(data)) {
		t.Errorf("Get: got info key %q size %d, want %q size %d", ginfo.Key, ginfo.Size, "dir/sub/object.bin", len(data))
	}

	sinfo, err := s.Stat(ctx, "dir/sub/object.bin")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if sinfo.Key != "dir/sub/object.bin" || sinfo.Size != int64(len(data)) {
		t.Errorf("Stat: got key %q size %d, want %q size %d", sinfo.Key, sinfo.Size, "dir/sub/object.bin", len(data))
	}
	if sinfo.ModTime.IsZero() {
		t.Errorf("Stat: got zero ModTime, want the time of the Put")
	}
}

func testEmpty(t *testing.T, s manifests.BlobStore) {
	info := MustPut(t, s, "empty", nil)
	if info.Size != 0 {
		t.Errorf("Put: got size %d, want 0", info.Size)
	}
	if want := sha256Hex(nil); info.SHA256 != want {
		t.Errorf("Put: got sha256 %s, want %s", info.SHA256, want)
	}
	for _, rng := range []manifests.Range{{}, {Offset: 0, Length: 0}} {
		got, ginfo := MustGet(t, s, "empty", rng)
		if len(got) != 0 || ginfo.Size != 0 {
			t.Errorf("Get(%+v): got %d bytes, info size %d, want 0 and 0", rng, len(got), ginfo.Size)
		}
	}
	_, _, err := s.Get(t.Context(), "empty", manifests.Range{Offset: 1})
	if !errors.Is(err, manifests.ErrInvalidRange) {
		t.Errorf("Get(offset 1): got error %v, want ErrInvalidRange", err)
	}
	sinfo, err := s.Stat(t.Context(), "empty")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if sinfo.Size != 0 {
		t.Errorf("Stat: got size %d, want 0", sinfo.Size)
	}
}

func testOverwrite(t *testing.T, s manifests.BlobStore) {
	MustPut(t, s, "k", []byte("the first version, which is longer"))
	MustPut(t, s, "k", []byte("second"))
	got, info := MustGet(t, s, "k", manifests.Range{})
	if string(got) != "second" || info.Size != 6 {
		t.Errorf("Get after overwrite: got %q (size %d), want %q (size 6)", got, info.Size, "second")
	}
}

func testGetRange(t *testing.T, s manifests.BlobStore) {
	data := payload(2, 1000)
	MustPut(t, s, "ranged", data)
	tests := []struct {
		name string
		rng  manifests.Range
		want []byte // nil with wantErr
	}{
		{"zero range", manifests.Range{}, data},
		{"whole", manifests.Range{Offset: 0, Length: 1000}, data},
		{"middle", manifests.Range{Offset: 100, Length: 250}, data[100:350]},
		{"first byte", manifests.Range{Offset: 0, Length: 1}, data[:1]},
		{"last byte", manifests.Range{Offset: 999, Length: 1}, data[999:]},
		{"to end", manifests.Range{Offset: 900}, data[900:]},
		{"at end", manifests.Range{Offset: 1000}, []byte{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, info := MustGet(t, s, "ranged", tc.rng)
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %d bytes, want %d bytes %s", len(got), len(tc.want), diffAt(got, tc.want))
			}
			if info.Size != 1000 {
				t.Errorf("got info size %d, want the whole object's 1000", info.Size)
			}
		})
	}

	invalid := []manifests.Range{
		{Offset: 1001},
		{Offset: 500, Length: 501},
		{Offset: 0, Length: 1001},
		{Offset: -1},
		{Offset: 0, Length: -1},
	}
	for _, rng := range invalid {
		t.Run(fmt.Sprintf("invalid %d+%d", rng.Offset, rng.Length), func(t *testing.T) {
			rc, _, err := s.Get(t.Context(), "ranged", rng)
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, manifests.ErrInvalidRange) {
				t.Errorf("got error %v, want ErrInvalidRange", err)
			}
		})
	}
}

func testMissing(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	// A sibling makes sure the store is not just empty.
	MustPut(t, s, "dir/present", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir/present/below", "other/dir/missing"} {
		t.Run(key, func(t *testing.T) {
			rc, _, err := s.Get(ctx, key, manifests.Range{})
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Get: got error %v, want ErrNotExist", err)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Stat: got error %v, want ErrNotExist", err)
			}
			if err := s.Delete(ctx, key); !errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Delete: got error %v, want ErrNotExist", err)
			}
		})
	}
	// "dir" holds an object but is not one.
	if _, err := s.Stat(ctx, "dir"); !errors.Is(err, manifests.ErrNotExist) {
		t.Errorf("Stat(dir): got error %v, want ErrNotExist", err)
	}
}

func testDelete(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	MustPut(t, s, "a/b/c", []byte("c"))
	MustPut(t, s, "a/d", []byte("d"))
	if err := s.Delete(ctx, "a/b/c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, "a/b/c"); !errors.Is(err, manifests.ErrNotExist) {
		t.Errorf("Stat after Delete: got error %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx, "a/b/c"); !errors.Is(err, manifests.ErrNotExist) {
		t.Errorf("second Delete: got error %v, want ErrNotExist", err)
	}
	if got := listKeys(t, s, ""); !slices.Equal(got, []string{"a/d"}) {
		t.Errorf("List after Delete: got %q, want [a/d]", got)
	}
	// The key is usable again, also as a directory.
	MustPut(t, s, "a/b", []byte("b"))
	if got := listKeys(t, s, ""); !slices.Equal(got, []string{"a/b", "a/d"}) {
		t.Errorf("List after re-Put: got %q, want [a/b a/d]", got)
	}
}

func testInvalidKey(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	keys := []string{"", "/abs", "a/../b", "..", "a/..", "a//b", "a\\b", "./a", "a/./b", "a/", "a\x00b"}
	for _, key := range keys {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			if _, err := s.Put(ctx, key, bytes.NewReader([]byte("x"))); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Put: got error %v, want ErrInvalidKey", err)
			}
			rc, _, err := s.Get(ctx, key, manifests.Range{})
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Get: got error %v, want ErrInvalidKey", err)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Stat: got error %v, want ErrInvalidKey", err)
			}
			if err := s.Delete(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Delete: got error %v, want ErrInvalidKey", err)
			}
			if _, err := s.PresignGet(ctx, key, time.Minute); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("PresignGet: got error %v, want ErrInvalidKey", err)
			}
		})
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Errorf("List after invalid Puts: got %q, want nothing", got)
	}

	// A List prefix may end anywhere, but the part up to its last "/" must
	// be a valid key.
	for _, prefix := range []string{"/", "/abs", "a//", "a/../", "../x", "a\\b/"} {
		t.Run(fmt.Sprintf("List %q", prefix), func(t *testing.T) {
			var err error
			for _, err = range s.List(ctx, prefix) {
				if err != nil {
					break
				}
			}
			if !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("got error %v, want ErrInvalidKey", err)
			}
		})
	}
}

// testSegmentLength checks that both stores take the same keys: segments
// up to manifests.MaxSegmentLen (the filesystem's NAME_MAX) work, and a
// longer one is ErrInvalidKey for every operation, also on S3, which would
// hold it; never an internal error from the filesystem.
func testSegmentLength(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	longest := strings.Repeat("n", manifests.MaxSegmentLen)
	for _, key := range []string{longest, "dir/" + longest, longest + "/" + longest + "/x"} {
		t.Run(fmt.Sprintf("%d bytes", len(key)), func(t *testing.T) {
			data := payload(20, 300)
			MustPut(t, s, key, data)
			if got, _ := MustGet(t, s, key, manifests.Range{}); !bytes.Equal(got, data) {
				t.Errorf("Get: got %d bytes, want %d %s", len(got), len(data), diffAt(got, data))
			}
			if err := s.Delete(ctx, key); err != nil {
				t.Errorf("Delete: %v", err)
			}
		})
	}
	tooLong := longest + "n"
	for _, key := range []string{tooLong, "dir/" + tooLong, tooLong + "/x", "targets/" + strings.Repeat("ab", 32) + "." + strings.Repeat("n", 300)} {
		t.Run(fmt.Sprintf("too long %d bytes", len(key)), func(t *testing.T) {
			if _, err := s.Put(ctx, key, bytes.NewReader([]byte("x"))); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Put: got error %v, want ErrInvalidKey", err)
			}
			rc, _, err := s.Get(ctx, key, manifests.Range{})
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Get: got error %v, want ErrInvalidKey", err)
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Stat: got error %v, want ErrInvalidKey", err)
			}
			if err := s.Delete(ctx, key); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("Delete: got error %v, want ErrInvalidKey", err)
			}
			if _, err := s.PresignGet(ctx, key, time.Minute); !errors.Is(err, manifests.ErrInvalidKey) {
				t.Errorf("PresignGet: got error %v, want ErrInvalidKey", err)
			}
		})
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Errorf("List after the long keys: got %d keys, want none", len(got))
	}
}

// testObjectReader checks manifests.ObjectReader on the store: the seeks
// http.ServeContent makes, and the answers it gives with it.
func testObjectReader(t *testing.T, s manifests.BlobStore) {
	data := payload(21, 100_000)
	info := MustPut(t, s, "seek/object", data)
	r := manifests.NewObjectReader(t.Context(), s, info)
	defer r.Close()
	steps := []struct {
		offset int64
		whence int
		read   int // bytes to read after the seek
		want   []byte
	}{
		{0, io.SeekEnd, 0, nil},
		{0, io.SeekStart, 10, data[:10]},
		{0, io.SeekCurrent, 10, data[10:20]},
		{50_000, io.SeekStart, 1000, data[50_000:51_000]},
		{-5, io.SeekEnd, 5, data[len(data)-5:]},
		{10, io.SeekStart, 5, data[10:15]}, // backwards
		{0, io.SeekEnd, 0, nil},
	}
	for i, st := range steps {
		pos, err := r.Seek(st.offset, st.whence)
		if err != nil {
			t.Fatalf("step %d: Seek(%d, %d): %v", i, st.offset, st.whence, err)
		}
		got := make([]byte, st.read)
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("step %d: reading %d bytes at %d: %v", i, st.read, pos, err)
		}
		if !bytes.Equal(got, st.want) {
			t.Errorf("step %d: got %d bytes at %d %s", i, len(got), pos, diffAt(got, st.want))
		}
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("Read at the end: got %d, %v, want 0, io.EOF", n, err)
	}
	if _, err := r.Seek(-1, io.SeekStart); err == nil {
		t.Errorf("Seek(-1): got no error")
	}

	tests := []struct {
		name       string
		rangeHdr   string
		wantStatus int
		want       []byte
	}{
		{"whole", "", http.StatusOK, data},
		{"one range", "bytes=100-199", http.StatusPartialContent, data[100:200]},
		{"open range", "bytes=99000-", http.StatusPartialContent, data[99_000:]},
		{"suffix", "bytes=-10", http.StatusPartialContent, data[len(data)-10:]},
		{"past the end", "bytes=100000-", http.StatusRequestedRangeNotSatisfiable, nil},
	}
	for _, tc := range tests {
		t.Run("ServeContent "+tc.name, func(t *testing.T) {
			r := manifests.NewObjectReader(t.Context(), s, info)
			defer r.Close()
			req := httptest.NewRequest(http.MethodGet, "/seek/object", nil)
			if tc.rangeHdr != "" {
				req.Header.Set("Range", tc.rangeHdr)
			}
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "application/octet-stream")
			http.ServeContent(rec, req, "", time.Time{}, r)
			if rec.Code != tc.wantStatus {
				t.Fatalf("got status %d, want %d", rec.Code, tc.wantStatus)
			}
			if tc.want != nil && !bytes.Equal(rec.Body.Bytes(), tc.want) {
				t.Errorf("got %d bytes, want %d %s", rec.Body.Len(), len(tc.want), diffAt(rec.Body.Bytes(), tc.want))
			}
		})
	}
	t.Run("ServeContent multiple ranges", func(t *testing.T) {
		r := manifests.NewObjectReader(t.Context(), s, info)
		defer r.Close()
		req := httptest.NewRequest(http.MethodGet, "/seek/object", nil)
		req.Header.Set("Range", "bytes=0-9,90000-90009")
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(rec, req, "", time.Time{}, r)
		_, params, err := mime.ParseMediaType(rec.Header().Get("Content-Type"))
		if rec.Code != http.StatusPartialContent || err != nil {
			t.Fatalf("got status %d Content-Type %q, want 206 multipart/byteranges", rec.Code, rec.Header().Get("Content-Type"))
		}
		mr := multipart.NewReader(rec.Body, params["boundary"])
		for _, want := range [][]byte{data[:10], data[90_000:90_010]} {
			part, err := mr.NextPart()
			if err != nil {
				t.Fatalf("next part: %v", err)
			}
			got, err := io.ReadAll(part)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("part %s: got %d bytes (%v), want %d %s", part.Header.Get("Content-Range"), len(got), err, len(want), diffAt(got, want))
			}
		}
	})

	// Another object under the key (of another size) is refused rather
	// than mixed into the answer.
	MustPut(t, s, "seek/object", data[:500])
	r2 := manifests.NewObjectReader(t.Context(), s, info)
	defer r2.Close()
	if _, err := io.ReadAll(r2); err == nil {
		t.Errorf("reading after the object shrank: got no error")
	}
}

func testList(t *testing.T, s manifests.BlobStore) {
	// Put in an order unrelated to the key order. "a-b" < "a/b" < "a0" in
	// key order, while a filesystem walk visits directory "a" first.
	keys := []string{"b", "a/c/d", "a0", "a/b", "ab/x", "a-b", "a/c-d", "a/c0/e"}
	for i, k := range keys {
		MustPut(t, s, k, payload(uint64(i), i+1))
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a-b", "a/b", "a/c-d", "a/c/d", "a/c0/e", "a0", "ab/x", "b"}},
		{"a", []string{"a-b", "a/b", "a/c-d", "a/c/d", "a/c0/e", "a0", "ab/x"}},
		{"a/", []string{"a/b", "a/c-d", "a/c/d", "a/c0/e"}},
		{"a/c", []string{"a/c-d", "a/c/d", "a/c0/e"}},
		{"a/c/", []string{"a/c/d"}},
		{"a/b", []string{"a/b"}},
		{"a-", []string{"a-b"}},
		{"ab", []string{"ab/x"}},
		{"b", []string{"b"}},
		{"b/", nil},
		{"c", nil},
		{"zz/top/", nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.prefix), func(t *testing.T) {
			if got := listKeys(t, s, tc.prefix); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}

	for info, err := range s.List(t.Context(), "") {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		i := slices.Index(keys, info.Key)
		if info.Size != int64(i+1) {
			t.Errorf("List: got size %d for %q, want %d", info.Size, info.Key, i+1)
		}
		if info.ModTime.IsZero() {
			t.Errorf("List: got zero ModTime for %q", info.Key)
		}
	}
}

func testListStop(t *testing.T, s manifests.BlobStore) {
	for _, k := range []string{"x/1", "x/2", "x/3", "y"} {
		MustPut(t, s, k, []byte(k))
	}
	var got []string
	for info, err := range s.List(t.Context(), "") {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		got = append(got, info.Key)
		if len(got) == 2 {
			break
		}
	}
	if !slices.Equal(got, []string{"x/1", "x/2"}) {
		t.Errorf("got %q, want [x/1 x/2]", got)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var err error
	for _, err = range s.List(ctx, "") {
		if err != nil {
			break
		}
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("List with cancelled context: got error %v, want context.Canceled", err)
	}
}

func testFailedPut(t *testing.T, s manifests.BlobStore) {
	ctx := t.Context()
	old := []byte("old content")
	MustPut(t, s, "existing", old)
	tests := []struct {
		name  string
		after int64 // bytes read before the error
		err   error
	}{
		{"at once", 0, errRead},
		{"after 1 MiB", 1 << 20, errRead},
		{"after 20 MiB", 20 << 20, errRead},
		// A truncated upload body; io.ReadFull-style code mistakes it for
		// the end of the data.
		{"unexpected EOF", 1 << 20, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, key := range []string{"existing", "new/object"} {
				r := io.MultiReader(io.LimitReader(NewReader(3), tc.after), errReader{tc.err})
				if _, err := s.Put(ctx, key, r); !errors.Is(err, tc.err) {
					t.Errorf("Put(%s): got error %v, want the reader's error %v", key, err, tc.err)
				}
			}
			got, _ := MustGet(t, s, "existing", manifests.Range{})
			if !bytes.Equal(got, old) {
				t.Errorf("existing object: got %d bytes, want the old %q", len(got), old)
			}
			if _, err := s.Stat(ctx, "new/object"); !errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Stat(new/object): got error %v, want ErrNotExist", err)
			}
			if got := listKeys(t, s, ""); !slices.Equal(got, []string{"existing"}) {
				t.Errorf("List: got %q, want [existing]", got)
			}
		})
	}
}

func testCancelledPut(t *testing.T, s manifests.BlobStore) {
	old := []byte("old content")
	MustPut(t, s, "existing", old)
	tests := []struct {
		name  string
		after int64 // bytes read before the context is cancelled, -1 for before Put
	}{
		{"before", -1},
		{"while reading", 1 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, key := range []string{"existing", "new/object"} {
				ctx, cancel := context.WithCancel(t.Context())
				var r io.Reader
				if tc.after < 0 {
					cancel()
					r = bytes.NewReader([]byte("new content"))
				} else {
					// The reader cancels after tc.after bytes and then
					// goes on to a clean EOF, as a client would whose
					// request context ends.
					r = io.MultiReader(io.LimitReader(NewReader(4), tc.after), cancelReader(cancel), io.LimitReader(NewReader(5), 1<<20))
				}
				_, err := s.Put(ctx, key, r)
				cancel()
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Put(%s): got error %v, want context.Canceled", key, err)
				}
			}
			got, _ := MustGet(t, s, "existing", manifests.Range{})
			if !bytes.Equal(got, old) {
				t.Errorf("existing object: got %d bytes, want the old %q", len(got), old)
			}
			if _, err := s.Stat(t.Context(), "new/object"); !errors.Is(err, manifests.ErrNotExist) {
				t.Errorf("Stat(new/object): got error %v, want ErrNotExist", err)
			}
		})
	}
}

func testConcurrentOverwrite(t *testing.T, s manifests.BlobStore) {
	const size = 1 << 20
	a, b := payload(10, size), payload(11, size)
	MustPut(t, s, "flip", a)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	reads := 0
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				rc, info, err := s.Get(ctx, "flip", manifests.Range{})
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("Get: %v", err)
					}
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("read: %v", err)
					}
					return
				}
				if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
					t.Errorf("read %d bytes that are neither payload A nor B: vs A %s, vs B %s", len(got), diffAt(got, a), diffAt(got, b))
					return
				}
				if info.Size != size {
					t.Errorf("Get: got info size %d, want %d", info.Size, size)
				}
				mu.Lock()
				reads++
				mu.Unlock()
			}
		})
	}
	for i := range 20 {
		next := a
		if i%2 == 0 {
			next = b
		}
		if _, err := s.Put(ctx, "flip", bytes.NewReader(next)); err != nil {
			t.Errorf("Put %d: %v", i, err)
			break
		}
	}
	cancel()
	wg.Wait()
	if reads == 0 {
		t.Errorf("got no complete reads during the overwrites, want some")
	}
}

func testLarge(t *testing.T, s manifests.BlobStore) {
	if testing.Short() {
		t.Skip("skipping the 40 MiB object in short mode")
	}
	const size = 40 << 20
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(NewReader(7), size)); err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))

	info, err := s.Put(t.Context(), "large/object", io.LimitReader(NewReader(7), size))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if info.Size != size || info.SHA256 != want {
		t.Errorf("Put: got size %d sha256 %s, want %d %s", info.Size, info.SHA256, size, want)
	}

	rc, ginfo, err := s.Get(t.Context(), "large/object", manifests.Range{})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	h.Reset()
	n, err := io.Copy(h, rc)
	rc.Close()
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != size || got != want {
		t.Errorf("Get: got %d bytes sha256 %s, want %d %s", n, got, size, want)
	}
	if ginfo.Size != size {
		t.Errorf("Get: got info size %d, want %d", ginfo.Size, size)
	}

	// A range across the 16 MiB mark, where a multipart upload starts its
	// second part.
	off := int64(16<<20 - 100)
	wantRange := make([]byte, 200)
	r := NewReader(7)
	if _, err := io.CopyN(io.Discard, r, off); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, wantRange); err != nil {
		t.Fatal(err)
	}
	got, _ := MustGet(t, s, "large/object", manifests.Range{Offset: off, Length: 200})
	if !bytes.Equal(got, wantRange) {
		t.Errorf("Get(%d+200): got %d bytes, want 200 %s", off, len(got), diffAt(got, wantRange))
	}
}

func testPing(t *testing.T, s manifests.BlobStore) {
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func testPresign(t *testing.T, s manifests.BlobStore) {
	data := payload(12, 5000)
	MustPut(t, s, "signed/object", data)
	u, err := s.PresignGet(t.Context(), "signed/object", time.Minute)
	if errors.Is(err, manifests.ErrPresignUnsupported) {
		t.Logf("PresignGet: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("PresignGet: %v", err)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatalf("PresignGet returned %q: %v", u, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET presigned URL: %v", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading presigned URL: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET presigned URL: got status %s, want 200 OK; body %q", resp.Status, got)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("GET presigned URL: got %d bytes, want %d %s", len(got), len(data), diffAt(got, data))
	}
}

// MustPut stores data under key and fails the test on error.
func MustPut(tb testing.TB, s manifests.BlobStore, key string, data []byte) manifests.ObjectInfo {
	tb.Helper()
	info, err := s.Put(tb.Context(), key, bytes.NewReader(data))
	if err != nil {
		tb.Fatalf("Put(%s): %v", key, err)
	}
	return info
}

// MustGet reads rng of key and fails the test on error.
func MustGet(tb testing.TB, s manifests.BlobStore, key string, rng manifests.Range) ([]byte, manifests.ObjectInfo) {
	tb.Helper()
	rc, info, err := s.Get(tb.Context(), key, rng)
	if err != nil {
		tb.Fatalf("Get(%s, %+v): %v", key, rng, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		tb.Fatalf("Get(%s, %+v): reading: %v", key, rng, err)
	}
	return data, info
}

func listKeys(tb testing.TB, s manifests.BlobStore, prefix string) []string {
	tb.Helper()
	var keys []string
	for info, err := range s.List(tb.Context(), prefix) {
		if err != nil {
			tb.Fatalf("List(%q): %v", prefix, err)
		}
		keys = append(keys, info.Key)
	}
	return keys
}

// NewReader returns an endless deterministic stream of pseudo-random bytes:
// the same seed gives the same bytes, without holding them in memory.
func NewReader(seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return rand.NewChaCha8(s)
}

func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(NewReader(seed), b); err != nil {
		panic(err)
	}
	return b
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// diffAt describes where got first differs from want.
func diffAt(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("(first difference at byte %d)", i)
		}
	}
	if len(got) != len(want) {
		return fmt.Sprintf("(equal for the first %d bytes)", min(len(got), len(want)))
	}
	return "(equal)"
}

var errRead = errors.New("blobtest: simulated read failure")

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// cancelReader calls cancel on its first read and reports end of data, so
// that in an io.MultiReader the next reader takes over.
type cancelReader context.CancelFunc

func (c cancelReader) Read([]byte) (int, error) {
	c()
	return 0, io.EOF
}
