package apitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/s3store"
)

// MinIOStore returns an S3 store on a fresh bucket of the MinIO that
// scripts/test.sh starts, or skips the test without one.
func MinIOStore(tb testing.TB) manifests.BlobStore {
	tb.Helper()
	endpoint := os.Getenv("OTA_TEST_S3_ENDPOINT")
	if endpoint == "" {
		tb.Skip("OTA_TEST_S3_ENDPOINT not set; run ./scripts/test.sh to run the MinIO tests")
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		tb.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	store, err := s3store.New(s3store.Config{Endpoint: u.Host, Secure: u.Scheme == "https",
		AccessKey: os.Getenv("OTA_TEST_S3_ACCESS_KEY"), SecretKey: os.Getenv("OTA_TEST_S3_SECRET_KEY"),
		Bucket: "ota-apitest-" + hex.EncodeToString(b[:]), Prefix: "repo"})
	if err != nil {
		tb.Fatal(err)
	}
	if err := store.EnsureBucket(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return store
}
