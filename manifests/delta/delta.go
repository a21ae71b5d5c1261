// Package delta makes and applies binary deltas between two builds'
// images, for makers without delta tooling of their own: otactl delta
// make writes one, the agent and the simulator apply it to the running
// build's image and check the result against the full image's signed
// hash before installing (manifests.FormatZstdPatch).
//
// A delta is zstd (github.com/klauspost/compress, already in the module
// graph through minio-go) with a stretch of the old image as a raw
// dictionary: what `zstd --patch-from` does. One dictionary of a whole
// image would do for small images only: the encoder indexes a
// dictionary into a fixed table, and past about 16 MiB it forgets most
// of it (a 64 MiB image gave a 27 MB delta for a 100-byte change). So
// the new image goes in chunks of ChunkSize, each compressed against the
// stretch of the old image around the same relative place (Before ahead
// of it, After past it): the delta of that 64 MiB image is 8 KB, and
// applying one holds a chunk and its stretch in memory, not the images.
// What moved further than that stretch is compressed without a match.
//
// The format: Magic, then per chunk three uvarints (the stretch's offset
// in the old image, its length, the zstd frame's length) and the frame.
package delta

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Magic starts every delta.
const Magic = "OTA-ZSTD-PATCH-1\n"

// Chunking: see the package comment.
const (
	ChunkSize = 4 << 20
	Before    = 4 << 20
	After     = 8 << 20
)

// ErrCorrupt is a delta that does not decode, or does not fit the old
// image it is applied to.
var ErrCorrupt = errors.New("delta does not apply")

// Make writes to w the delta that turns old (oldSize bytes) into next
// (nextSize bytes). progress, when set, hears the bytes of next done.
func Make(ctx context.Context, old io.ReaderAt, oldSize int64, next io.Reader, nextSize int64, w io.Writer, progress func(int64)) error {
	bw := bufio.NewWriter(w)
	if _, err := bw.WriteString(Magic); err != nil {
		return err
	}
	chunk := make([]byte, ChunkSize)
	var dict, frame []byte
	for done := int64(0); done < nextSize; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(next, chunk[:min(ChunkSize, nextSize-done)])
		if err != nil {
			return fmt.Errorf("read the new image at %d: %w", done, err)
		}
		off, length := stretch(done, oldSize, nextSize)
		dict = grow(dict, int(length))
		if _, err := old.ReadAt(dict, off); err != nil && !(errors.Is(err, io.EOF) && length == 0) {
			return fmt.Errorf("read the old image at %d: %w", off, err)
		}
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(1, dict), zstd.WithEncoderLevel(zstd.SpeedBestCompression),
			zstd.WithWindowSize(32<<20), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		frame = enc.EncodeAll(chunk[:n], frame[:0])
		enc.Close()
		var hdr []byte
		hdr = binary.AppendUvarint(hdr, uint64(off))
		hdr = binary.AppendUvarint(hdr, uint64(length))
		hdr = binary.AppendUvarint(hdr, uint64(len(frame)))
		if _, err := bw.Write(hdr); err != nil {
			return err
		}
		if _, err := bw.Write(frame); err != nil {
			return err
		}
		done += int64(n)
		if progress != nil {
			progress(done)
		}
	}
	return bw.Flush()
}

// stretch is the part of the old image a chunk of the new one at done is
// compressed against.
func stretch(done, oldSize, nextSize int64) (off, length int64) {
	center := done
	if nextSize > 0 {
		center = int64(float64(done) * float64(oldSize) / float64(nextSize))
	}
	off = max(center-Before, 0)
	end := min(center+After, oldSize)
	return off, max(end-off, 0)
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// Apply writes to w the image that delta patch turns old (oldSize bytes)
// into, and returns its length. A patch that does not decode or reaches
// past old is ErrCorrupt. The caller checks the result's hash.
func Apply(old io.ReaderAt, oldSize int64, patch io.Reader, w io.Writer) (int64, error) {
	br := bufio.NewReader(patch)
	magic := make([]byte, len(Magic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, []byte(Magic)) {
		return 0, fmt.Errorf("%w: not a delta made by otactl delta make", ErrCorrupt)
	}
	var dict, frame, out []byte
	var total int64
	for {
		off, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		length, err2 := binary.ReadUvarint(br)
		size, err3 := binary.ReadUvarint(br)
		if err := errors.Join(err, err2, err3); err != nil {
			return total, fmt.Errorf("%w: chunk header at %d bytes out: %w", ErrCorrupt, total, err)
		}
		if length > Before+After || off > uint64(oldSize) || length > uint64(oldSize)-off || size > 2*ChunkSize {
			return total, fmt.Errorf("%w: chunk at %d bytes out names %d bytes at %d of an old image of %d", ErrCorrupt, total, length, off, oldSize)
		}
		dict = grow(dict, int(length))
		if _, err := old.ReadAt(dict, int64(off)); err != nil && !(errors.Is(err, io.EOF) && length == 0) {
			return total, fmt.Errorf("read the old image at %d: %w", off, err)
		}
		frame = grow(frame, int(size))
		if _, err := io.ReadFull(br, frame); err != nil {
			return total, fmt.Errorf("%w: chunk at %d bytes out is cut short", ErrCorrupt, total)
		}
		dec, err := zstd.NewReader(nil, zstd.WithDecoderDictRaw(1, dict), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(2*ChunkSize), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return total, err
		}
		out, err = dec.DecodeAll(frame, out[:0])
		dec.Close()
		if err != nil || len(out) > ChunkSize {
			return total, fmt.Errorf("%w: chunk at %d bytes out: %v", ErrCorrupt, total, err)
		}
		n, err := w.Write(out)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}
