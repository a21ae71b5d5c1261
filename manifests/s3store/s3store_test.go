package s3store_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/blobtest"
	"github.com/patchfleet/ota/manifests/s3store"
)

func TestConformance(t *testing.T) {
	cfg := testConfig(t)
	blobtest.Run(t, func(t testing.TB) manifests.BlobStore {
		c := cfg
		c.Bucket = newBucket(t, cfg)
		return mustNew(t, c)
	})
}

// TestConformancePrefix runs the suite again with a store prefix, which
// List has to strip and the key mapping has to honour.
func TestConformancePrefix(t *testing.T) {
	if testing.Short() {
		t.Skip("the prefix run repeats the suite; skipped in short mode")
	}
	cfg := testConfig(t)
	bucket := newBucket(t, cfg)
	blobtest.Run(t, func(t testing.TB) manifests.BlobStore {
		c := cfg
		c.Bucket = bucket
		c.Prefix = "p/" + strings.ToLower(rand.Text())
		return mustNew(t, c)
	})
}

func TestPrefix(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bucket = newBucket(t, cfg)
	bare := mustNew(t, cfg)
	cfg.Prefix = "/repo/v1/"
	prefixed := mustNew(t, cfg)

	blobtest.MustPut(t, prefixed, "targets/a.bin", []byte("a"))
	got, _ := blobtest.MustGet(t, bare, "repo/v1/targets/a.bin", manifests.Range{})
	if string(got) != "a" {
		t.Errorf("bare store at repo/v1/targets/a.bin: got %q, want %q", got, "a")
	}
	blobtest.MustPut(t, bare, "repo/v1x", []byte("sibling"))
	blobtest.MustPut(t, bare, "outside", []byte("outside"))

	var keys []string
	for info, err := range prefixed.List(t.Context(), "") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, info.Key)
	}
	if len(keys) != 1 || keys[0] != "targets/a.bin" {
		t.Errorf("prefixed List: got %q, want [targets/a.bin]", keys)
	}
	if _, err := prefixed.Stat(t.Context(), "outside"); !errors.Is(err, manifests.ErrNotExist) {
		t.Errorf("prefixed Stat(outside): got error %v, want ErrNotExist", err)
	}
}

func TestPingMissingBucket(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bucket = "ota-missing-" + strings.ToLower(rand.Text())[:12]
	s := mustNew(t, cfg)
	err := s.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), `bucket "`+cfg.Bucket+`" does not exist`) {
		t.Errorf("Ping: got error %v, want one saying bucket %q does not exist", err, cfg.Bucket)
	}
	_, err = s.Put(t.Context(), "k", strings.NewReader("x"))
	if err == nil || !strings.Contains(err.Error(), cfg.Bucket) {
		t.Errorf("Put: got error %v, want one naming bucket %q", err, cfg.Bucket)
	}
}

// TestFailedPutAborts checks that a Put that fails after uploading parts
// leaves no incomplete multipart upload behind.
func TestFailedPutAborts(t *testing.T) {
	cfg := testConfig(t)
	cfg.Bucket = newBucket(t, cfg)
	cfg.PartSize = 5 << 20
	s := mustNew(t, cfg)

	boom := errors.New("boom")
	r := io.MultiReader(io.LimitReader(blobtest.NewReader(1), 12<<20), failingReader{boom})
	if _, err := s.Put(t.Context(), "failed", r); !errors.Is(err, boom) {
		t.Errorf("Put with failing reader: got error %v, want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r = io.MultiReader(io.LimitReader(blobtest.NewReader(2), 12<<20), cancelReader(cancel), io.LimitReader(blobtest.NewReader(3), 1<<20))
	if _, err := s.Put(ctx, "cancelled", r); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled context: got error %v, want context.Canceled", err)
	}

	for up := range testClient(t, cfg).ListIncompleteUploads(t.Context(), cfg.Bucket, "", true) {
		if up.Err != nil {
			t.Fatalf("ListIncompleteUploads: %v", up.Err)
		}
		t.Errorf("incomplete upload left behind: %s (%s)", up.Key, up.UploadID)
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

// cancelReader cancels on its first read and reports the end of its data.
type cancelReader context.CancelFunc

func (c cancelReader) Read([]byte) (int, error) {
	c()
	return 0, io.EOF
}

func TestPingDeadEndpoint(t *testing.T) {
	// A port that was just free and is closed again refuses connections.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()

	// A listener that accepts connections and never answers, like a
	// server behind a black-holing firewall; only the deadline ends Ping.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		for {
			c, err := silent.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		silent.Close()
		<-done
	})

	for _, addr := range []string{refused, silent.Addr().String()} {
		s := mustNew(t, s3store.Config{Endpoint: addr, AccessKey: "x", SecretKey: "y", Bucket: "dead"})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		start := time.Now()
		err := s.Ping(ctx)
		cancel()
		if err == nil {
			t.Errorf("Ping(%s): got nil error, want one", addr)
		}
		// Slack for a loaded machine; without the deadline minio-go's
		// retries would go on far longer.
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Ping(%s): returned after %v, want about the 1s deadline", addr, d)
		}
	}
}

func TestNewErrors(t *testing.T) {
	valid := s3store.Config{Endpoint: "127.0.0.1:9000", Bucket: "ota"}
	tests := []struct {
		name string
		edit func(*s3store.Config)
		want string
	}{
		{"no endpoint", func(c *s3store.Config) { c.Endpoint = "" }, "endpoint"},
		{"endpoint with scheme", func(c *s3store.Config) { c.Endpoint = "http://127.0.0.1:9000" }, "host:port"},
		{"bad bucket", func(c *s3store.Config) { c.Bucket = "Bad_Bucket" }, "bucket name"},
		{"bad prefix", func(c *s3store.Config) { c.Prefix = "a/../b" }, "prefix"},
		{"small part size", func(c *s3store.Config) { c.PartSize = 1 << 20 }, "part size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.edit(&cfg)
			_, err := s3store.New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := s3store.New(valid); err != nil {
		t.Errorf("New(%+v): %v", valid, err)
	}
}

func TestParseURL(t *testing.T) {
	valid := []struct {
		raw, bucket, prefix string
	}{
		{"s3://ota", "ota", ""},
		{"s3://ota/", "ota", ""},
		{"s3://ota-releases/prod", "ota-releases", "prod"},
		{"s3://ota.releases/prod/v1/", "ota.releases", "prod/v1"},
		{"s3://123/a", "123", "a"},
	}
	for _, tc := range valid {
		t.Run(tc.raw, func(t *testing.T) {
			bucket, prefix, err := s3store.ParseURL(tc.raw)
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if bucket != tc.bucket || prefix != tc.prefix {
				t.Errorf("got bucket %q prefix %q, want %q %q", bucket, prefix, tc.bucket, tc.prefix)
			}
		})
	}

	invalid := []struct {
		raw, want string
	}{
		{"", "scheme must be s3"},
		{"ota/prefix", "scheme must be s3"},
		{"https://ota/prefix", "scheme must be s3"},
		{"s3:ota", "s3://bucket"},
		{"s3://", "empty bucket name"},
		{"s3:///prefix", "empty bucket name"},
		{"s3://ab", "3 to 63 characters"},
		{"s3://" + strings.Repeat("a", 64), "3 to 63 characters"},
		{"s3://Ota", "lowercase"},
		{"s3://ota_releases", "lowercase"},
		{"s3://-ota", "begin and end"},
		{"s3://ota-", "begin and end"},
		{"s3://ota..releases", "dot"},
		{"s3://192.168.1.1", "IP address"},
		{"s3://xn--ota", "must not start"},
		{"s3://ota-s3alias", "must not end"},
		{"s3://ota:9000/p", "ports"},
		{"s3://key@ota/p", "user info"},
		{"s3://ota/p?versionId=1", "query"},
		{"s3://ota/p?", "query"},
		{"s3://ota/p#frag", "fragments"},
		{"s3://ota/a/../b", "prefix"},
		{"s3://ota/..", "prefix"},
		{"s3://ota//a", "prefix"},
		{"s3://ota/a//b", "prefix"},
		{"s3://ota/a\\b", "prefix"},
		{"s3://ota/%zz", "invalid URL"},
	}
	for _, tc := range invalid {
		t.Run(tc.raw, func(t *testing.T) {
			bucket, prefix, err := s3store.ParseURL(tc.raw)
			if err == nil {
				t.Fatalf("got bucket %q prefix %q, want an error", bucket, prefix)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "s3://bucket") {
				t.Errorf("got error %q, want one mentioning %q and the expected form", err, tc.want)
			}
		})
	}
}

// testConfig returns the MinIO test server's settings from the environment,
// skipping the test when they are not set.
func testConfig(tb testing.TB) s3store.Config {
	tb.Helper()
	endpoint := os.Getenv("OTA_TEST_S3_ENDPOINT")
	if endpoint == "" {
		tb.Skip("OTA_TEST_S3_ENDPOINT not set; run ./scripts/test.sh to run the MinIO tests")
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		tb.Fatalf("OTA_TEST_S3_ENDPOINT=%q: want a URL like http://127.0.0.1:29000", endpoint)
	}
	return s3store.Config{
		Endpoint:  u.Host,
		Secure:    u.Scheme == "https",
		AccessKey: os.Getenv("OTA_TEST_S3_ACCESS_KEY"),
		SecretKey: os.Getenv("OTA_TEST_S3_SECRET_KEY"),
	}
}

func mustNew(tb testing.TB, cfg s3store.Config) *s3store.Store {
	tb.Helper()
	s, err := s3store.New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return s
}

// newBucket creates a bucket with a random name and removes it, with
// everything in it, when the test ends.
func newBucket(tb testing.TB, cfg s3store.Config) string {
	tb.Helper()
	cfg.Bucket = "ota-test-" + strings.ToLower(rand.Text())
	if err := mustNew(tb, cfg).EnsureBucket(tb.Context()); err != nil {
		tb.Fatalf("EnsureBucket(%s): %v", cfg.Bucket, err)
	}
	client := testClient(tb, cfg)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// ForceDelete is a MinIO extension that also removes the objects.
		if err := client.RemoveBucketWithOptions(ctx, cfg.Bucket, minio.RemoveBucketOptions{ForceDelete: true}); err != nil {
			tb.Errorf("cleanup: remove bucket %s: %v", cfg.Bucket, err)
		}
	})
	return cfg.Bucket
}

// testClient returns a minio client for what the store API does not cover:
// removing buckets and listing incomplete uploads.
func testClient(tb testing.TB, cfg s3store.Config) *minio.Client {
	tb.Helper()
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.Secure,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return client
}
