package apitest_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
)

// pagePassword is the password of the users pageSession makes.
const pagePassword = "a long enough passphrase"

// pageSession is a browser's session with a test server's pages: plain
// HTTP with a cookie jar (the forms are plain forms; the browser test
// clicks others).
type pageSession struct {
	t      testing.TB
	url    string
	client *http.Client
}

// logInPages creates the user name with role on env and logs them in to
// the pages.
func logInPages(t testing.TB, env *apitest.Env, name, role string) *pageSession {
	t.Helper()
	if _, err := env.App.Users.Create(t.Context(), name, role, pagePassword, false); err != nil {
		t.Fatal(err)
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &pageSession{t: t, url: env.URL, client: &http.Client{Jar: jar}}
	if resp, _ := s.post("/login", url.Values{"name": {name}, "password": {pagePassword}}); resp.StatusCode != http.StatusOK {
		t.Fatalf("login as %s: %d", name, resp.StatusCode)
	}
	return s
}

// get fetches a page (after redirects) and its body.
func (s *pageSession) get(path string) (*http.Response, string) {
	s.t.Helper()
	resp, err := s.client.Get(s.url + path)
	return s.read(resp, err)
}

// post posts a form (following the redirect) and returns the answer and
// its body.
func (s *pageSession) post(path string, form url.Values) (*http.Response, string) {
	s.t.Helper()
	resp, err := s.client.PostForm(s.url+path, form)
	return s.read(resp, err)
}

func (s *pageSession) read(resp *http.Response, err error) (*http.Response, string) {
	s.t.Helper()
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, string(b)
}
