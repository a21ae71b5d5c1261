package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
)

// immutableCache lets browsers and CDNs keep versioned metadata and
// hash-named artifacts forever: their content never changes.
const immutableCache = "public, max-age=31536000, immutable"

// tufMetadata serves /tuf/{name}: timestamp.json and versioned root,
// snapshot and targets files, from the repository's in-memory cache.
// Anything unknown is 404 (never 403: TUF clients take 403 on
// N+1.root.json as an error rather than "no newer root").
func (s *Server) tufMetadata(c echo.Context) error {
	name := c.Param("name")
	f, err := s.repo.MetadataFile(c.Request().Context(), name)
	if errors.Is(err, manifests.ErrNotExist) || errors.Is(err, manifests.ErrBadName) {
		return fmt.Errorf("%w: no metadata file %s", server.ErrNotFound, name)
	}
	if err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("ETag", f.ETag)
	if f.Immutable {
		h.Set("Cache-Control", immutableCache)
	} else {
		h.Set("Cache-Control", "public, max-age="+strconv.Itoa(timestampMaxAge(f.Expires, time.Now())))
	}
	if etagMatch(c.Request().Header.Get("If-None-Match"), f.ETag) {
		return c.NoContent(http.StatusNotModified)
	}
	return c.Blob(http.StatusOK, "application/json", f.Data)
}

// timestampMaxAge keeps timestamp.json in caches for at most a minute and
// at most a tenth of its remaining validity, so a cache never serves a
// timestamp close to expiry.
func timestampMaxAge(expires, now time.Time) int {
	left := expires.Sub(now) / 10
	return int(max(0, min(left, time.Minute)).Seconds())
}

func etagMatch(header, etag string) bool {
	for candidate := range strings.SplitSeq(header, ",") {
		candidate = strings.TrimSpace(candidate)
		if candidate == etag || candidate == "*" || strings.TrimPrefix(candidate, "W/") == etag {
			return true
		}
	}
	return false
}

// targetFile serves /targets/{path}: an artifact under its hash-prefixed
// name. With redirects on and a store that presigns (S3), it answers 307 to
// a short-lived URL so the bytes do not pass through otad; otherwise it
// streams, with single byte ranges for resumed downloads.
func (s *Server) targetFile(c echo.Context) error {
	rel := c.Param("*")
	key := "targets/" + rel
	if err := manifests.ValidateKey(rel); err != nil {
		return fmt.Errorf("%w: no target file %s", server.ErrNotFound, rel)
	}
	ctx := c.Request().Context()
	if s.targetsRedirect {
		u, err := s.blobs.PresignGet(ctx, key, s.presignTTL)
		if err == nil {
			if _, err := s.blobs.Stat(ctx, key); errors.Is(err, manifests.ErrNotExist) {
				return fmt.Errorf("%w: no target file %s", server.ErrNotFound, rel)
			}
			c.Response().Header().Set("Cache-Control", "no-store")
			return c.Redirect(http.StatusTemporaryRedirect, u)
		}
		if !errors.Is(err, manifests.ErrPresignUnsupported) {
			return err
		}
	}
	info, err := s.blobs.Stat(ctx, key)
	if errors.Is(err, manifests.ErrNotExist) {
		return fmt.Errorf("%w: no target file %s", server.ErrNotFound, rel)
	}
	if err != nil {
		return err
	}
	h := c.Response().Header()
	etag := `"` + info.Key + `"`
	if base := rel[strings.LastIndex(rel, "/")+1:]; len(base) > 64 && base[64] == '.' {
		etag = `"` + base[:64] + `"` // the sha256 in the consistent-snapshot name
	}
	h.Set("ETag", etag)
	h.Set("Cache-Control", immutableCache)
	h.Set("Accept-Ranges", "bytes")
	if etagMatch(c.Request().Header.Get("If-None-Match"), etag) {
		return c.NoContent(http.StatusNotModified)
	}
	rng, partial, err := parseRange(c.Request().Header.Get("Range"), info.Size)
	if err != nil {
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(info.Size, 10))
		return echo.NewHTTPError(http.StatusRequestedRangeNotSatisfiable, err.Error())
	}
	rc, _, err := s.blobs.Get(ctx, key, rng)
	if err != nil {
		return err
	}
	defer rc.Close()
	length := info.Size - rng.Offset
	if rng.Length > 0 {
		length = rng.Length
	}
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.Offset, rng.Offset+length-1, info.Size))
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	h.Set("Content-Type", "application/octet-stream")
	c.Response().WriteHeader(status)
	if c.Request().Method == http.MethodHead {
		return nil
	}
	_, err = io.Copy(c.Response(), rc)
	return err // the status is sent; a copy error only ends the response
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range.
// Multiple ranges are answered with the whole file, as RFC 9110 allows.
func parseRange(h string, size int64) (manifests.Range, bool, error) {
	if h == "" || strings.Contains(h, ",") {
		return manifests.Range{}, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return manifests.Range{}, false, nil
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return manifests.Range{}, false, errors.New("malformed range")
	}
	var start, end int64
	var err error
	switch {
	case first == "":
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return manifests.Range{}, false, errors.New("malformed range")
		}
		start, end = max(0, size-n), size-1
	default:
		if start, err = strconv.ParseInt(first, 10, 64); err != nil || start < 0 {
			return manifests.Range{}, false, errors.New("malformed range")
		}
		end = size - 1
		if last != "" {
			if end, err = strconv.ParseInt(last, 10, 64); err != nil || end < start {
				return manifests.Range{}, false, errors.New("malformed range")
			}
			end = min(end, size-1)
		}
	}
	if start >= size {
		return manifests.Range{}, false, fmt.Errorf("range starts at %d, the file has %d bytes", start, size)
	}
	return manifests.Range{Offset: start, Length: end - start + 1}, true, nil
}
