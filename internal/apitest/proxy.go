package apitest

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
)

// Proxy stands between TUF clients and the server like a compromised
// mirror or a man in the middle: it passes requests through, and Mutate
// may replace any answer body.
type Proxy struct {
	URL string

	mu     sync.Mutex
	mutate func(path string, body []byte) []byte
}

// NewProxy starts a proxy in front of target until the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		m := p.mutate
		p.mu.Unlock()
		if m == nil || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = m(resp.Request.URL.Path, body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		return nil
	}
	srv := httptest.NewServer(rp)
	tb.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// Mutate sets (or, with nil, clears) the body rewrite.
func (p *Proxy) Mutate(f func(path string, body []byte) []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mutate = f
}
