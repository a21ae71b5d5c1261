package api

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/errs"
)

// immutableCache lets browsers and CDNs keep versioned metadata and
// hash-named artifacts forever: their content never changes.
const immutableCache = "public, max-age=31536000, immutable"

// tufMetadata serves /tuf/{name} (GET and HEAD): timestamp.json and
// versioned root, snapshot and targets files, from the repository's
// in-memory cache. Anything unknown is 404 (never 403: TUF clients take 403
// on N+1.root.json as an error rather than "no newer root").
func (s *Server) tufMetadata(c echo.Context) error {
	name := c.Param("name")
	f, err := s.repo.MetadataFile(c.Request().Context(), name)
	if errors.Is(err, manifests.ErrNotExist) || errors.Is(err, manifests.ErrBadName) {
		return fmt.Errorf("%w: no metadata file %s", errs.ErrNotFound, name)
	}
	if err != nil {
		return err
	}
	h := c.Response().Header()
	h.Set("ETag", f.ETag)
	if f.Immutable {
		h.Set("Cache-Control", immutableCache)
	} else {
		h.Set("Cache-Control", "public, max-age="+strconv.Itoa(timestampMaxAge(f.Expires, s.now())))
	}
	h.Set("Content-Type", "application/json")
	w := &contentWriter{Response: c.Response()}
	http.ServeContent(w, c.Request(), "", time.Time{}, bytes.NewReader(f.Data))
	return w.err()
}

// timestampMaxAge keeps timestamp.json in caches for at most a minute and
// at most a tenth of its remaining validity, so a cache never serves a
// timestamp close to expiry.
func timestampMaxAge(expires, now time.Time) int {
	left := expires.Sub(now) / 10
	return int(max(0, min(left, time.Minute)).Seconds())
}

// targetFile serves /targets/{path} (GET and HEAD): an artifact under its
// hash-prefixed name, when the published targets metadata names it with
// that hash (manifests.Repository.PublishedTargetFile); any other blob is
// 404, so an upload that was never released, or a yanked or replaced
// release, cannot be fetched by its hash. With redirects on and a store that presigns (S3), it
// answers 307 to a short-lived URL so the bytes do not pass through otad;
// otherwise http.ServeContent streams it, with byte ranges for resumed
// downloads and the conditional requests of RFC 9110.
//
// A build of several GB over a cellular link outlasts the server's write
// timeout, which is meant for API calls: the stream lifts it and instead
// closes the connection once the client has taken nothing for the stall
// timeout.
func (s *Server) targetFile(c echo.Context) error {
	rel := c.Param("*")
	key := "targets/" + rel
	notFound := fmt.Errorf("%w: no target file %s", errs.ErrNotFound, rel)
	if err := manifests.ValidateKey(rel); err != nil || !s.repo.PublishedTargetFile(rel) {
		return notFound
	}
	ctx := c.Request().Context()
	if s.targetsRedirect {
		u, err := s.blobs.PresignGet(ctx, key, s.presignTTL)
		if err == nil {
			if _, err := s.blobs.Stat(ctx, key); isMissing(err) {
				return notFound
			}
			c.Response().Header().Set("Cache-Control", "no-store")
			return c.Redirect(http.StatusTemporaryRedirect, u)
		}
		if !errors.Is(err, manifests.ErrPresignUnsupported) {
			return err
		}
	}
	info, err := s.blobs.Stat(ctx, key)
	if isMissing(err) {
		return notFound
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
	h.Set("Content-Type", "application/octet-stream")

	content := manifests.NewObjectReader(ctx, s.blobs, info)
	defer content.Close()
	w := &contentWriter{Response: c.Response(), rc: http.NewResponseController(c.Response().Writer), stall: s.downloadStall}
	http.ServeContent(w, c.Request(), "", time.Time{}, content)
	if err := w.err(); err != nil {
		return err
	}
	s.checkComplete(c, w, key, content.Err(), w.flush())
	return nil // the status is sent; a copy error only ends the response
}

// isMissing reports whether a Stat error means the target does not exist:
// a key the store cannot hold (a segment too long for its filesystem)
// names no file either, and is not the server's fault.
func isMissing(err error) bool {
	return errors.Is(err, manifests.ErrNotExist) || errors.Is(err, manifests.ErrInvalidKey)
}

// checkComplete logs a download that ended before its Content-Length: the
// request log line shows the 200 or 206 that was sent, not that the body
// was cut (the client went away or stalled, or the store failed). flushErr
// is the error of the final flush, which sends the bytes that sat in the
// response buffer.
func (s *Server) checkComplete(c echo.Context, w *contentWriter, key string, readErr, flushErr error) {
	req := c.Request()
	status := c.Response().Status
	if req.Method != http.MethodGet || (status != http.StatusOK && status != http.StatusPartialContent) {
		return
	}
	length, err := strconv.ParseInt(c.Response().Header().Get("Content-Length"), 10, 64)
	if err != nil {
		return
	}
	werr := w.writeErr
	if werr == nil {
		werr = flushErr
	}
	if w.written == length && werr == nil {
		return
	}
	// A failed write is the client's doing (gone, or stalled past the
	// timeout); bytes missing without one mean reading the store failed.
	level := slog.LevelWarn
	if werr == nil && req.Context().Err() == nil {
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.String("request_id", requestID(c)),
		slog.String("route", c.Path()),
		slog.String("key", key),
		slog.Int("status", status),
		slog.Int64("bytes_sent", w.written),
		slog.Int64("length", length),
	}
	// The write error's text names the client's address: only its cause
	// is logged. The store's read error is the server's own.
	switch {
	case werr != nil:
		cause := ConnCause(werr)
		if cause == CauseWriteTimeout && w.deadlineSet {
			cause = CauseStallTimeout
		}
		attrs = append(attrs, slog.String("cause", cause))
	case req.Context().Err() != nil:
		attrs = append(attrs, slog.String("cause", CauseCanceled))
	}
	if readErr != nil {
		attrs = append(attrs, slog.String("read_error", readErr.Error()))
	}
	s.log.LogAttrs(req.Context(), level, "download ended early", attrs...)
}

// contentWriter is the http.ResponseWriter given to http.ServeContent.
//
// ServeContent answers its own errors (416, 412, 500) in plain text; the
// writer holds such a status back and err returns it, so the one error
// handler answers in JSON like everywhere else. 304 and successes pass.
//
// With a stall timeout, each write first moves the connection's write
// deadline to now+stall: the server's WriteTimeout no longer bounds the
// whole response, only a client that stops reading does.
type contentWriter struct {
	*echo.Response
	rc    *http.ResponseController // nil: keep the server's write deadline
	stall time.Duration

	held        int   // error status ServeContent wrote, not sent
	written     int64 // body bytes accepted by the response
	writeErr    error
	deadlineSet bool // the stall deadline replaced the server's
}

func (w *contentWriter) WriteHeader(code int) {
	if code >= http.StatusBadRequest {
		// The headers set for the file must not describe (or let caches
		// keep) the error answer; Content-Range stays for a 416.
		h := w.Header()
		for _, k := range []string{"Content-Type", "Content-Length", "X-Content-Type-Options", "Cache-Control", "ETag", "Last-Modified", "Accept-Ranges"} {
			h.Del(k)
		}
		w.held = code
		return
	}
	w.Response.WriteHeader(code)
}

func (w *contentWriter) Write(p []byte) (int, error) {
	if w.held != 0 {
		return len(p), nil // ServeContent's plain-text error message
	}
	if w.rc != nil {
		switch err := w.rc.SetWriteDeadline(time.Now().Add(w.stall)); {
		case err == nil:
			w.deadlineSet = true
		case !errors.Is(err, http.ErrNotSupported):
			w.writeErr = err
			return 0, err
		}
	}
	n, err := w.Response.Write(p)
	w.written += int64(n)
	if err != nil {
		w.writeErr = err
	}
	return n, err
}

// flush sends what the response buffer still holds while the stall
// deadline applies, so that a client that did not take the last bytes is
// told apart from a complete download. (net/http clears the deadline after
// the handler.)
func (w *contentWriter) flush() error {
	if !w.deadlineSet {
		return nil
	}
	return w.rc.Flush()
}

// err turns a held error status into the error the handler returns.
func (w *contentWriter) err() error {
	switch w.held {
	case 0:
		return nil
	case http.StatusRequestedRangeNotSatisfiable:
		// For a range past the end ServeContent set "Content-Range:
		// bytes */size", which the answer keeps, as RFC 9110 wants.
		if size, ok := strings.CutPrefix(w.Header().Get("Content-Range"), "bytes */"); ok {
			return echo.NewHTTPError(w.held, "range not satisfiable: the file has "+size+" bytes")
		}
		return echo.NewHTTPError(w.held, "malformed or unsatisfiable range")
	case http.StatusPreconditionFailed:
		return echo.NewHTTPError(w.held, "precondition failed: If-Match or If-Unmodified-Since does not hold")
	case http.StatusInternalServerError:
		return errors.New("serving content: http.ServeContent answered 500 (a read or seek of the content failed)")
	}
	return echo.NewHTTPError(w.held)
}
