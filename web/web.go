// Package web is the dashboard: server-rendered pages over the same
// domain services the admin API uses, with templates and assets
// embedded into the otad binary. Pages work without JavaScript; one
// small script (static/live.js) refreshes their live parts. server/api
// mounts the routes Routes lists.
package web

import (
	"cmp"
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/httperr"
	"github.com/patchfleet/ota/server/identity"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// DefaultLiveEvery is how often an open page refreshes its content.
const DefaultLiveEvery = 5 * time.Second

// CookieName is the session cookie.
const CookieName = "otad_session"

// ContentSecurityPolicy is sent with every response: no script but the
// embedded one, no inline script or style, nothing from elsewhere.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Options configure a Handler.
type Options struct {
	Backend  Backend
	Users    identity.Users
	Sessions identity.Sessions
	Tokens   identity.Tokens
	// Audit keeps the audit log: the pages list and verify it, and append
	// logins, logouts and user and token changes to it.
	Audit audit.AuditStore
	// AuditAnchor holds the audit log's checkpoints, which the audit
	// page checks the chain against (nil: none, and the page says the
	// log is not anchored).
	AuditAnchor audit.AuditAnchor
	// Banner, when set, is a warning strip on every page.
	Banner string
	// SecureCookie marks the session cookie Secure even on a plain HTTP
	// request (TLS ends at a proxy); a request over TLS always is.
	SecureCookie bool
	Logger       *slog.Logger
	// LiveEvery is how often an open page refreshes its content
	// (default DefaultLiveEvery).
	LiveEvery time.Duration
	// Now is the clock of audit entries and of the times pages show
	// (default time.Now); the wiring passes the one the API has.
	Now func() time.Time
	// Templates replaces the embedded templates (tests).
	Templates fs.FS
}

// Route is one page route: server/api mounts each, and the endpoint ×
// role test walks them. Pattern is a net/http ServeMux pattern path
// ("/rollouts/{id}"; "/static/{file...}" for a prefix). Public routes
// need no session; the others need Perm.
type Route struct {
	Method, Pattern string
	Perm            identity.Permission
	Public          bool
}

// Handler serves the dashboard.
type Handler struct {
	opts      Options
	liveEvery time.Duration
	log       *slog.Logger
	pages     map[string]*template.Template
	routes    []Route
	handler   http.Handler
}

type routeFunc func(w http.ResponseWriter, r *http.Request, p *page) error

// New builds the dashboard, parsing every template: a template error
// fails here, not on the first request.
func New(opts Options) (*Handler, error) {
	if opts.Backend == nil || opts.Users.Store == nil || opts.Sessions.Store == nil || opts.Tokens.Store == nil || opts.Audit == nil {
		return nil, errors.New("web: Backend, Users, Sessions, Tokens and Audit are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Templates == nil {
		sub, err := fs.Sub(templateFS, "templates")
		if err != nil {
			return nil, fmt.Errorf("web: %w", err)
		}
		opts.Templates = sub
	}
	h := &Handler{opts: opts, log: opts.Logger, liveEvery: cmp.Or(opts.LiveEvery, DefaultLiveEvery)}
	var err error
	if h.pages, err = parsePages(opts.Templates); err != nil {
		return nil, err
	}
	h.build()
	return h, nil
}

// build registers the routes on a ServeMux, each behind the session and
// permission check, and wraps it all in the headers and the
// cross-origin check.
func (h *Handler) build() {
	mux := http.NewServeMux()
	add := func(method, pattern string, perm identity.Permission, public bool, fn routeFunc) {
		h.routes = append(h.routes, Route{Method: method, Pattern: pattern, Perm: perm, Public: public})
		muxPattern := pattern
		if pattern == "/" {
			muxPattern = "/{$}"
		}
		mux.Handle(method+" "+muxPattern, h.guard(perm, public, fn))
	}
	add("GET", "/login", "", true, h.loginPage)
	add("POST", "/login", "", true, h.login)
	add("POST", "/logout", identity.PermRead, false, h.logout)
	add("GET", "/", identity.PermRead, false, h.overview)
	add("GET", "/rollouts", identity.PermRead, false, h.rolloutsPage)
	add("GET", "/rollouts/{id}", identity.PermRead, false, h.rolloutPage)
	add("GET", "/rollouts/new", identity.PermRolloutChange, false, h.newRolloutPage)
	add("POST", "/rollouts", identity.PermRolloutChange, false, h.createRollout)
	add("POST", "/rollouts/{id}/{action}", identity.PermRolloutChange, false, h.rolloutAction)
	add("POST", "/rollouts/{id}/models/{model}/{action}", identity.PermRolloutChange, false, h.modelAction)
	add("POST", "/rollouts/{id}/approvals/{aid}/{verdict}", identity.PermRolloutApprove, false, h.decideApproval)
	add("GET", "/releases", identity.PermRead, false, h.releasesPage)
	add("GET", "/devices", identity.PermRead, false, h.devicesPage)
	add("GET", "/devices/{id}", identity.PermRead, false, h.devicePage)
	add("GET", "/audit", identity.PermRead, false, h.auditPage)
	add("GET", "/users", identity.PermUserAdmin, false, h.usersPage)
	add("POST", "/users", identity.PermUserAdmin, false, h.createUser)
	add("POST", "/users/{name}/{change}", identity.PermUserAdmin, false, h.changeUser)
	add("GET", "/tokens", identity.PermOwnTokens, false, h.tokensPage)
	add("POST", "/tokens", identity.PermOwnTokens, false, h.createToken)
	add("POST", "/tokens/{id}/revoke", identity.PermOwnTokens, false, h.revokeToken)
	h.routes = append(h.routes, Route{Method: "GET", Pattern: "/static/{file...}", Public: true})
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticHandler(static)))

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.renderError(w, r, nil, http.StatusForbidden, "This request came from another site and was refused.")
	}))
	h.handler = securityHeaders(cop.Handler(mux))
}

// liveURL is the URL of r's page content alone (its query kept), for
// page.Live.
func liveURL(r *http.Request) string {
	q := r.URL.Query()
	q.Set("part", "live")
	return r.URL.Path + "?" + q.Encode()
}

// Routes lists the dashboard's routes.
func (h *Handler) Routes() []Route { return append([]Route(nil), h.routes...) }

// ServeHTTP makes Handler an http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.handler.ServeHTTP(w, r) }

// securityHeaders sets the headers every response carries; pages are
// never cached (they show live state and, once, token secrets).
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", ContentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			hd.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

func staticHandler(fsys fs.FS) http.Handler {
	files := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no directory listings
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	})
}

// session is the logged-in request's session.
type session struct {
	secret string
	s      *identity.Session
	user   *identity.User
}

// lookupSession returns the request's live session, or nil.
func (h *Handler) lookupSession(r *http.Request) (*session, error) {
	c, err := r.Cookie(CookieName)
	if err != nil || c.Value == "" {
		return nil, nil
	}
	s, u, err := h.opts.Sessions.Lookup(r.Context(), c.Value)
	if errors.Is(err, errs.ErrUnauthorized) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &session{secret: c.Value, s: s, user: u}, nil
}

// guard checks the session, the permission and (on POST) the CSRF token
// before fn runs, with the session's principal in the request context.
func (h *Handler) guard(perm identity.Permission, public bool, fn routeFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sess, err := h.lookupSession(r)
		if err != nil {
			h.log.ErrorContext(r.Context(), "session lookup", slog.Any("error", err))
			h.renderError(w, r, nil, http.StatusInternalServerError, "Internal error.")
			return
		}
		p := &page{Banner: h.opts.Banner, Path: r.URL.Path}
		if sess != nil {
			p.User, p.CSRF = sess.user, sess.s.CSRFToken
			hash := identity.HashToken(sess.secret)
			prin := &identity.Principal{User: sess.user, SessionID: hash[:16], SessionHash: hash}
			r = r.WithContext(identity.WithPrincipal(r.Context(), prin))
		}
		if !public {
			if sess == nil {
				if r.Method == http.MethodGet || r.Method == http.MethodHead {
					http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
					return
				}
				h.renderError(w, r, p, http.StatusForbidden, "You are not logged in, or your session has expired. Log in again.")
				return
			}
			if !sess.user.Can(perm) {
				h.renderError(w, r, p, http.StatusForbidden,
					fmt.Sprintf("Your role (%s) does not allow this: it needs the %q permission.", sess.user.Role, perm))
				return
			}
		}
		if r.Method == http.MethodPost && sess != nil && r.URL.Path != "/login" {
			if !validCSRF(r, sess.s.CSRFToken) {
				h.renderError(w, r, p, http.StatusForbidden, "This form is stale or was not sent from this dashboard (CSRF token missing or wrong). Reload the page and try again.")
				return
			}
		}
		if err := fn(w, r, p); err != nil {
			h.fail(w, r, p, err)
		}
	})
}

// validCSRF checks the form's csrf field against the session's token in
// constant time.
func validCSRF(r *http.Request, want string) bool {
	got := r.PostFormValue("csrf")
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// statusOf is the status a page answers err with: the API's
// (httperr.Classify), so that a page and the API refuse the same error
// the same way.
func statusOf(err error) int {
	st, _ := httperr.Classify(err)
	return st
}

// fail answers a handler's error: the domain's message for people for a
// known refusal, "internal error" (and a log line) for the rest.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, p *page, err error) {
	st := statusOf(err)
	msg := err.Error()
	if st == http.StatusInternalServerError {
		h.log.ErrorContext(r.Context(), "page", slog.String("path", r.URL.Path), slog.Any("error", err))
		msg = "Internal error."
		if errors.Is(err, errs.ErrNotAudited) {
			msg = "The change was made, but its audit entry was not written. Do not repeat it; tell an administrator."
		}
	}
	h.renderError(w, r, p, st, msg)
}

// localPath returns next if it is a path on this site, else "/": the
// login redirect must not send anyone elsewhere. It decides on every
// percent-decoding of next, repeated until nothing changes, not on the
// text alone: "/%5C/evil.example" is "/\/evil.example" to whoever
// decodes it once more, and browsers read "/\" as "//", another host.
// Each decoding must start with one "/" (not "//") and hold no
// backslash and no control character; what passes is given back
// cleaned and escaped anew, never decoded.
func localPath(next string) string {
	s := next
	for i := 0; ; i++ {
		if !sameSitePath(s) {
			return "/"
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return "/"
		}
		if d == s {
			break
		}
		if i == maxNextDecodings {
			return "/"
		}
		s = d
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || u.User != nil {
		return "/"
	}
	clean := path.Clean(u.Path)
	if !sameSitePath(clean) {
		return "/"
	}
	return (&url.URL{Path: clean, RawQuery: u.RawQuery}).String()
}

// maxNextDecodings bounds how many layers of percent-encoding localPath
// peels; a next with more is refused.
const maxNextDecodings = 8

// sameSitePath reports whether s, read as a URL reference, is a path on
// this site: one leading "/", no backslash (browsers take it for "/"),
// no control character (browsers drop tabs and newlines).
func sameSitePath(s string) bool {
	return strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") &&
		!strings.ContainsFunc(s, func(r rune) bool { return r == '\\' || r < 0x20 || r == 0x7f })
}

// record appends e, an action of actor that is done, by
// identity.RecordAction's rule: the handler answers with its error, so a
// change whose audit entry failed is not shown as a success.
func (h *Handler) record(ctx context.Context, actor string, e audit.AuditEntry) error {
	return identity.RecordAction(ctx, h.opts.Audit, e, actor, "", h.now())
}

// now is the time on the dashboard's clock, in UTC.
func (h *Handler) now() time.Time { return clock.Now(h.opts.Now).UTC() }
