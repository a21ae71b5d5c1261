package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Download fetches url into dst resumably and verifies it: dst appears
// only once its length and sha256 match (want, hex), so a file at dst is
// always a verified one. The bytes arrive in dst+".part"; the server's
// validator (ETag, else Last-Modified) is kept beside it in
// dst+".validator". A later call after an interruption (a lost network,
// a kill, a reboot) asks only for the rest, with Range and If-Range: a
// server whose file changed meanwhile answers the whole file (200) and
// the download starts over, so old and new bytes never mix.
type Download struct {
	URL    string
	Dst    string
	Length int64
	SHA256 string
	// Client sends the requests; nil is http.DefaultClient.
	Client *http.Client
	// UserAgent, if set, names the agent to the server.
	UserAgent string
	// IdleTimeout ends a request that receives no byte for this long
	// (ErrStalled), the wait for the answer's headers included; the bytes
	// received stay for the next call to resume from. 0: no limit, for a
	// Client whose own Timeout bounds the request. A whole download has
	// no time limit that fits every file on every link; a silent link
	// does.
	IdleTimeout time.Duration
}

// ErrStalled is a download that received nothing for its IdleTimeout:
// the network, not the file. Retrying resumes it.
var ErrStalled = errors.New("download stalled: no bytes received within the idle timeout")

// DownloadResult says what a download did, for logs and tests.
type DownloadResult struct {
	// ResumedAt is the offset the download resumed from (0: from the
	// start, or already complete).
	ResumedAt int64
	// Received is how many bytes came over the network in this call.
	Received int64
	// Restarted is true when the server's file changed and the partial
	// one was thrown away.
	Restarted bool
}

// ErrContent is a download whose bytes do not match the signed length
// and sha256: the file is bad, not the network. The partial file is
// removed.
var ErrContent = errors.New("downloaded bytes do not match the signed length and sha256")

// HTTPStatusError is an answer other than 200 or 206 to a download.
type HTTPStatusError struct {
	Status int
}

func (e *HTTPStatusError) Error() string { return "download: HTTP " + strconv.Itoa(e.Status) }

// Run downloads what is missing and verifies it.
func (d *Download) Run(ctx context.Context) (DownloadResult, error) {
	var res DownloadResult
	if ok, _ := fileMatches(d.Dst, d.Length, d.SHA256); ok {
		return res, nil
	}
	part, valFile := d.Dst+".part", d.Dst+".validator"
	for attempt := 0; ; attempt++ {
		err := d.fetch(ctx, part, valFile, &res)
		if err != nil {
			return res, err
		}
		ok, err := fileMatches(part, d.Length, d.SHA256)
		if err != nil {
			return res, err
		}
		if ok {
			if err := os.Rename(part, d.Dst); err != nil {
				return res, err
			}
			os.Remove(valFile)
			return res, syncDir(dirOf(d.Dst))
		}
		os.Remove(part)
		os.Remove(valFile)
		// Bytes that do not match after a resume may be two versions of
		// a file a server without validators changed: once from scratch.
		if res.ResumedAt == 0 || attempt > 0 {
			return res, ErrContent
		}
		res.Restarted = true
		res.ResumedAt = 0
	}
}

// fetch appends the missing bytes to part.
func (d *Download) fetch(ctx context.Context, part, valFile string, res *DownloadResult) error {
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	validator := ""
	if b, err := os.ReadFile(valFile); err == nil {
		validator = strings.TrimSpace(string(b))
	}
	if off > d.Length || (off > 0 && validator == "") {
		// Longer than signed, or nothing to tell whether the server's file
		// is the same: start over.
		off = 0
	}
	if off == d.Length {
		return nil
	}
	client := d.Client
	if client == nil {
		client = http.DefaultClient
	}
	ctx, idle := d.watch(ctx)
	defer idle.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, nil)
	if err != nil {
		return err
	}
	if d.UserAgent != "" {
		req.Header.Set("User-Agent", d.UserAgent)
	}
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
		req.Header.Set("If-Range", validator)
	}
	resp, err := client.Do(req)
	if err != nil {
		return idle.cause(err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && off > 0 &&
		strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes "+strconv.FormatInt(off, 10)+"-"):
		res.ResumedAt = off
	case resp.StatusCode == http.StatusOK:
		if off > 0 {
			res.Restarted = true // the file changed: If-Range sent it whole
		}
		off = 0
		if err := f.Truncate(0); err != nil {
			return err
		}
		v := resp.Header.Get("ETag")
		if v == "" || strings.HasPrefix(v, "W/") {
			v = resp.Header.Get("Last-Modified") // If-Range takes a strong ETag or a date
		}
		// The validator goes to disk before the first byte, so that any
		// partial file on disk has the validator of its bytes.
		if err := writeFileAtomic(valFile, []byte(v), 0o600); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		f.Truncate(0)
		os.Remove(valFile)
		return &HTTPStatusError{resp.StatusCode}
	default:
		return &HTTPStatusError{resp.StatusCode}
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	// One byte more than signed tells a too-long file from a right one.
	n, copyErr := io.Copy(f, io.LimitReader(idle.reader(resp.Body), d.Length-off+1))
	res.Received += n
	if err := f.Sync(); err != nil {
		return err
	}
	if copyErr != nil {
		return idle.cause(copyErr)
	}
	if off+n < d.Length {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// idleWatch cancels a request's context when no byte arrived for the
// idle timeout; nil watches nothing.
type idleWatch struct {
	timer  *time.Timer
	after  time.Duration
	cancel context.CancelCauseFunc
	ctx    context.Context
}

// watch returns ctx, canceled with ErrStalled once IdleTimeout passes
// without a byte (reset by each read of the watch's reader).
func (d *Download) watch(ctx context.Context) (context.Context, *idleWatch) {
	if d.IdleTimeout <= 0 {
		return ctx, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	w := &idleWatch{after: d.IdleTimeout, cancel: cancel, ctx: ctx}
	w.timer = time.AfterFunc(d.IdleTimeout, func() { cancel(ErrStalled) })
	return ctx, w
}

func (w *idleWatch) stop() {
	if w != nil {
		w.timer.Stop()
		w.cancel(nil)
	}
}

// cause is err, or ErrStalled when the watch ended the request.
func (w *idleWatch) cause(err error) error {
	if w != nil && errors.Is(context.Cause(w.ctx), ErrStalled) {
		return fmt.Errorf("%w (%v)", ErrStalled, w.after)
	}
	return err
}

// reader resets the watch on every read that got bytes.
func (w *idleWatch) reader(r io.Reader) io.Reader {
	if w == nil {
		return r
	}
	return readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		if n > 0 {
			w.timer.Reset(w.after)
		}
		return n, err
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// fileMatches reports whether name holds exactly length bytes with the
// sha256 want (hex).
func fileMatches(name string, length int64, want string) (bool, error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() != length {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	w, err := hex.DecodeString(want)
	if err != nil {
		return false, fmt.Errorf("sha256 %q: %w", want, err)
	}
	return bytes.Equal(h.Sum(nil), w), nil
}

func dirOf(name string) string {
	if i := strings.LastIndexByte(name, os.PathSeparator); i >= 0 {
		return name[:i]
	}
	return "."
}
