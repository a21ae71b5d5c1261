package s3store

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/patchfleet/ota/manifests"
)

// ParseURL splits an s3://bucket/optional/prefix URL into its bucket and
// prefix. The prefix comes back without leading or trailing slashes and may
// be empty.
func ParseURL(raw string) (bucket, prefix string, err error) {
	const want = "want s3://bucket or s3://bucket/prefix"
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("s3store: invalid URL %q: %w; %s", raw, err, want)
	}
	switch {
	case u.Scheme != "s3":
		return "", "", fmt.Errorf("s3store: URL %q: scheme must be s3; %s", raw, want)
	case u.Opaque != "":
		return "", "", fmt.Errorf("s3store: URL %q: missing \"//\" after the scheme; %s", raw, want)
	case u.User != nil || u.Port() != "":
		return "", "", fmt.Errorf("s3store: URL %q: user info and ports are not allowed; %s", raw, want)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return "", "", fmt.Errorf("s3store: URL %q: query strings and fragments are not allowed; %s", raw, want)
	}
	if err := validateBucket(u.Host); err != nil {
		return "", "", fmt.Errorf("s3store: URL %q: %w; %s", raw, err, want)
	}
	prefix, err = cleanPrefix(u.Path)
	if err != nil {
		return "", "", fmt.Errorf("s3store: URL %q: %w; %s", raw, err, want)
	}
	return u.Host, prefix, nil
}

// cleanPrefix trims the slashes around a key prefix and checks that what is
// left is empty or a valid key.
func cleanPrefix(p string) (string, error) {
	p = strings.TrimPrefix(p, "/")
	p = strings.TrimSuffix(p, "/")
	if p == "" {
		return "", nil
	}
	if err := manifests.ValidateKey(p); err != nil {
		return "", fmt.Errorf("invalid prefix: %w", err)
	}
	return p, nil
}

// validateBucket applies the S3 naming rules for general purpose buckets:
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
func validateBucket(b string) error {
	if b == "" {
		return errors.New("empty bucket name")
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket name %q must be 3 to 63 characters long", b)
	}
	for _, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' {
			return fmt.Errorf("bucket name %q may only contain lowercase letters, digits, dots and hyphens", b)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) {
		return fmt.Errorf("bucket name %q must begin and end with a letter or digit", b)
	}
	if strings.Contains(b, "..") || strings.Contains(b, ".-") || strings.Contains(b, "-.") {
		return fmt.Errorf("bucket name %q must not have a dot next to a dot or hyphen", b)
	}
	if net.ParseIP(b) != nil {
		return fmt.Errorf("bucket name %q must not be an IP address", b)
	}
	for _, p := range []string{"xn--", "sthree-", "amzn-s3-demo-"} {
		if strings.HasPrefix(b, p) {
			return fmt.Errorf("bucket name %q must not start with %q", b, p)
		}
	}
	for _, s := range []string{"-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"} {
		if strings.HasSuffix(b, s) {
			return fmt.Errorf("bucket name %q must not end with %q", b, s)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}
