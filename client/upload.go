package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"sync"

	"github.com/patchfleet/ota/server/api/wire"
)

// Upload is an artifact (a build) for UploadArtifact.
type Upload struct {
	// Path is the target path the build is released under
	// ("fw/px7-7.5.0.zip").
	Path string
	// Body gives exactly Length bytes; it is streamed, never held in
	// memory.
	Body   io.Reader
	Length int64
	// SHA256 is the lowercase hex sha256 of the Length bytes, computed
	// beforehand: the server stores the bytes only if they match it.
	SHA256 string
	// Progress, if not nil, is called with the number of bytes sent so
	// far as they are sent. The transport reads the body on a goroutine
	// of its own, so Progress may be called from there, but never after
	// UploadArtifact returns.
	Progress func(sent int64)
}

// ChangedError is an upload whose bytes did not hash to the declared
// sha256 as they were sent: the file changed under the upload. Whatever
// the server answered, the artifact is not the build that was hashed.
type ChangedError struct {
	Path           string
	Declared, Sent string // hex sha256
}

func (e *ChangedError) Error() string {
	return fmt.Sprintf("%s changed while it was uploaded (sha256 %s before, %s sent)", e.Path, e.Declared, e.Sent)
}

// UploadArtifact stores a build on the server, to release with
// CreateRelease. It sends "Expect: 100-continue" with the length, so
// that a server which already has these bytes answers before any is sent
// (wire.Artifact.Existed). It hashes the bytes as they go and returns a
// *ChangedError when they are not the declared ones; a server that
// refuses them (it checks the sha256 too) answers an *Error with code
// "invalid".
func (c *Client) UploadArtifact(ctx context.Context, u Upload) (*wire.Artifact, error) {
	sr := &sentReader{r: u.Body, sum: sha256.New(), progress: u.Progress}
	var body io.Reader = http.NoBody
	if u.Length > 0 {
		body = sr
	}
	path := wire.AdminPrefix + "/artifacts/" + EscapePath(u.Path)
	req, err := c.NewRequest(ctx, http.MethodPut, path, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = u.Length
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	req.Header.Set(wire.HeaderContentSHA256, u.SHA256)
	var art wire.Artifact
	_, err = c.Send(req, &art)
	sent, sum := sr.finish()
	if sent == u.Length && u.Length > 0 && sum != u.SHA256 {
		return nil, &ChangedError{Path: u.Path, Declared: u.SHA256, Sent: sum}
	}
	if err != nil {
		return nil, err
	}
	if !art.Existed && sent != u.Length {
		return nil, fmt.Errorf("the server answered after %d of %d bytes without saying it had the artifact; upload again", sent, u.Length)
	}
	return &art, nil
}

// sentReader counts and hashes what the transport reads of an upload.
// The transport may still read after the answer came, so every field
// sits behind mu and finish ends the reporting.
type sentReader struct {
	r        io.Reader
	progress func(int64)

	mu       sync.Mutex
	sum      hash.Hash
	n        int64
	finished bool
}

func (s *sentReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if n > 0 {
		s.mu.Lock()
		if !s.finished {
			s.sum.Write(b[:n])
			s.n += int64(n)
			if s.progress != nil {
				s.progress(s.n)
			}
		}
		s.mu.Unlock()
	}
	return n, err
}

// finish stops reporting and returns how many bytes were sent and
// their hex sha256.
func (s *sentReader) finish() (int64, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finished = true
	return s.n, hex.EncodeToString(s.sum.Sum(nil))
}
