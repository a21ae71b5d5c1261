package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func randomImage(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// nextBuild is old with what a new build changes: bytes flipped, a
// module inserted early (everything after it moves) and a stretch zeroed.
func nextBuild(old []byte) []byte {
	next := append([]byte(nil), old[:1<<20]...)
	next = append(next, randomImage(9, 4096)...)
	next = append(next, old[1<<20+100:]...)
	clear(next[6<<20 : 6<<20+1000])
	for i := 0; i < 20; i++ {
		next[(i*7919*131)%len(next)] ^= 0xff
	}
	return next
}

func makeDelta(t *testing.T, old, next []byte) []byte {
	t.Helper()
	var patch bytes.Buffer
	var seen int64
	err := Make(t.Context(), bytes.NewReader(old), int64(len(old)), bytes.NewReader(next), int64(len(next)), &patch,
		func(n int64) { seen = n })
	if err != nil {
		t.Fatal(err)
	}
	if seen != int64(len(next)) {
		t.Fatalf("progress ended at %d of %d bytes", seen, len(next))
	}
	return patch.Bytes()
}

func TestRoundTripAcrossChunks(t *testing.T) {
	old := randomImage(1, 2*ChunkSize+12345)
	next := nextBuild(old)
	patch := makeDelta(t, old, next)
	// Random bytes do not compress: only matches in the old image make
	// the delta small.
	if len(patch) > 64<<10 {
		t.Errorf("delta of a %d-byte image with small changes is %d bytes, want under 64 KiB", len(next), len(patch))
	}
	var out bytes.Buffer
	n, err := Apply(bytes.NewReader(old), int64(len(old)), bytes.NewReader(patch), &out)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(next)) || !bytes.Equal(out.Bytes(), next) {
		t.Fatalf("applied delta gives %d bytes that differ from the %d-byte new image", n, len(next))
	}
}

func TestEmptyAndFromEmpty(t *testing.T) {
	img := randomImage(2, 5000)
	for _, c := range []struct {
		name      string
		old, next []byte
	}{{"to empty", img, nil}, {"from empty", nil, img}} {
		t.Run(c.name, func(t *testing.T) {
			patch := makeDelta(t, c.old, c.next)
			var out bytes.Buffer
			if _, err := Apply(bytes.NewReader(c.old), int64(len(c.old)), bytes.NewReader(patch), &out); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), c.next) {
				t.Fatalf("got %d bytes, want %d", out.Len(), len(c.next))
			}
		})
	}
}

func TestCorruptDeltas(t *testing.T) {
	old := randomImage(3, 100_000)
	next := nextBuild(append(old, randomImage(4, 7<<20)...))[:200_000]
	patch := makeDelta(t, old, next)
	for _, c := range []struct {
		name  string
		patch []byte
		old   []byte
	}{
		{"not a delta", []byte("PK\x03\x04 a zip file"), old},
		{"cut short", patch[:len(patch)/2], old},
		{"stretch past the old image", patch, old[:50_000]},
		{"flipped frame", flip(patch, len(patch)-10), old},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Apply(bytes.NewReader(c.old), int64(len(c.old)), bytes.NewReader(c.patch), &out)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Apply = %v, want ErrCorrupt", err)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x55
	return c
}
