package identity

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
)

// MaxLoginNameBytes is the longest user name a login is looked up by
// (after trimming spaces): no account has a longer one (ValidateUser).
// A longer name, or a password longer than MaxPasswordLength bytes, is
// refused before any lookup, hashing or bookkeeping, with the answer a
// wrong password gets.
const MaxLoginNameBytes = 64

// LoginError is a refused login. It wraps ErrUnauthorized, or a
// *RateLimitError while the attempt's account (or device cookie) is
// locked, and carries the audit entries the refusal makes, for the
// caller to append: the failure of an account, its lockout, or the
// count of failures at names that are no account.
type LoginError struct {
	Err   error
	Audit []audit.AuditEntry
}

func (e *LoginError) Error() string { return e.Err.Error() }
func (e *LoginError) Unwrap() error { return e.Err }

// errWrongLogin is the one answer to a wrong name, a wrong password and
// input that cannot be either.
var errWrongLogin = fmt.Errorf("%w: wrong user name or password", errs.ErrUnauthorized)

// Login checks a password and returns the user, or a *LoginError without
// saying whether the name or the password was wrong. device is the value
// of the browser's device cookie ("" for none): one that Devices signed
// for this account judges the attempt by its own failures only, so that
// the account's lockout, which anyone can set off by guessing, does not
// keep out the browser its owner logged in with before. Any other
// attempt is judged by the account's failures: too many answer a
// RateLimitError until they age out, even for the right password.
func (us Users) Login(ctx context.Context, name, password, device string) (*User, error) {
	now := us.now()
	name = strings.TrimSpace(name)
	if len(name) > MaxLoginNameBytes || !validUserName(name) || len(password) > MaxPasswordLength {
		return nil, us.unknownFailure(now)
	}
	var deviceID string
	if us.Devices != nil && device != "" {
		deviceID = us.Devices.check(device, name, now)
	}
	if wait := us.Limiter.wait(name, deviceID, now); wait > 0 {
		return nil, &LoginError{Err: &errs.RateLimitError{RetryAfter: wait}}
	}
	u, hash, err := us.Store.UserByName(ctx, name)
	if err != nil && !errs.IsNotFound(err) {
		return nil, err
	}
	if u == nil || hash == "" {
		CheckPassword(dummyHash(), password)
		us.Limiter.failUnknown(name, now)
		return nil, us.unknownFailure(now)
	}
	if !CheckPassword(hash, password) {
		n, until := us.Limiter.fail(name, deviceID, now)
		le := &LoginError{Err: errWrongLogin, Audit: []audit.AuditEntry{LoginFailedEntry(name, n, deviceID != "")}}
		if !until.IsZero() {
			le.Audit = append(le.Audit, UserLockedEntry(name, n, deviceID != "", until))
		}
		return nil, le
	}
	if u.Disabled {
		return nil, fmt.Errorf("%w: this account is disabled; ask an admin", errs.ErrUnauthorized)
	}
	us.Limiter.succeed(name, deviceID)
	return u, nil
}

// unknownFailure is the refusal of a login at a name that is no account
// (or input that cannot be one), with an audit entry at most once a
// minute that counts them (LoginLimiter.countUnknown).
func (us Users) unknownFailure(now time.Time) error {
	le := &LoginError{Err: errWrongLogin}
	if n := us.Limiter.countUnknown(now); n > 0 {
		le.Audit = []audit.AuditEntry{UnknownLoginFailedEntry(n)}
	}
	return le
}

// IssueDevice returns a new device cookie value for u after a
// successful login, or "" without Devices.
func (us Users) IssueDevice(u *User) string {
	if us.Devices == nil {
		return ""
	}
	return us.Devices.Issue(u.Name, us.now())
}

// DefaultDeviceCookieAge is how long a device cookie is accepted after
// it was issued; every login renews it.
const DefaultDeviceCookieAge = 180 * 24 * time.Hour

// DeviceCookies signs and checks device cookies, OWASP's "device
// cookie" defence against lockout abuse: after a successful login the
// browser gets a cookie naming the account, signed with Key (HMAC-SHA256;
// the key lives in the database, so that every replica accepts what
// another signed). Its later attempts at that account are limited by the
// cookie's own failures only. The server learns nothing of the client
// but what the cookie says: no address is needed.
type DeviceCookies struct {
	Key []byte
	// MaxAge is how long a cookie is accepted (default
	// DefaultDeviceCookieAge).
	MaxAge time.Duration
}

const deviceCookieVersion = "d1"

// Age is how long cookies are accepted after issue.
func (d *DeviceCookies) Age() time.Duration {
	if d.MaxAge > 0 {
		return d.MaxAge
	}
	return DefaultDeviceCookieAge
}

// Issue returns a device cookie value for the account name, issued at
// now: "d1.NAME.NONCE.ISSUED.MAC" with the name in base64url, a random
// nonce that names the cookie in the failure count, the Unix time of
// issue and the MAC over them.
func (d *DeviceCookies) Issue(name string, now time.Time) string {
	var nonce [16]byte
	rand.Read(nonce[:])
	body := deviceCookieVersion + "." + base64.RawURLEncoding.EncodeToString([]byte(name)) + "." +
		hex.EncodeToString(nonce[:]) + "." + strconv.FormatInt(now.Unix(), 10)
	return body + "." + d.mac(body)
}

func (d *DeviceCookies) mac(body string) string {
	m := hmac.New(sha256.New, d.Key)
	m.Write([]byte("otad device cookie\x00" + body))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// maxDeviceCookie bounds what check reads: a real cookie is about 130
// bytes.
const maxDeviceCookie = 256

// check returns the nonce of value if it is a cookie this key signed
// for the account name and not older than Age, else "".
func (d *DeviceCookies) check(value, name string, now time.Time) string {
	if len(value) > maxDeviceCookie || len(d.Key) == 0 {
		return ""
	}
	i := strings.LastIndexByte(value, '.')
	if i < 0 || !hmac.Equal([]byte(value[i+1:]), []byte(d.mac(value[:i]))) {
		return ""
	}
	parts := strings.Split(value[:i], ".")
	if len(parts) != 4 || parts[0] != deviceCookieVersion {
		return ""
	}
	got, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil || string(got) != name {
		return ""
	}
	issued, err := strconv.ParseInt(parts[3], 10, 64)
	if err != nil {
		return ""
	}
	if age := now.Sub(time.Unix(issued, 0)); age < -time.Minute || age > d.Age() {
		return ""
	}
	return parts[2]
}

// DefaultLoginTrackerBytes is LoginLimiter.MaxBytes's default.
const DefaultLoginTrackerBytes = 8 << 20

// LoginLimiter counts failed logins in a sliding window, in memory (per
// replica: N replicas allow N times the failures, still far too few to
// guess a password), in three tables, each bounded in bytes:
//
//   - accounts: the failures of names that are accounts, by name, judged
//     by the account lockout (a client without a device cookie);
//   - devices: the failures of a device cookie, by its nonce;
//   - unknown: the failures of names that are no account, so that such a
//     name locks as an account would and a lockout does not tell which
//     names exist.
//
// Only the last table can be filled by someone who knows no account and
// holds no cookie; it has its own budget, so a flood of made-up names
// evicts only made-up names, and every account is still counted. When a
// table is full its least recently failed entry goes.
type LoginLimiter struct {
	// Failures is how many failures within Window lock an account (or a
	// device cookie) until the oldest ages out.
	Failures int
	Window   time.Duration
	// MaxBytes bounds the memory of the counts (default
	// DefaultLoginTrackerBytes): half for accounts, a quarter each for
	// device cookies and for names that are no account. Bytes are counted
	// as the keys' length plus a fixed estimate per entry (failEntryBytes).
	MaxBytes int

	mu                         sync.Mutex
	accounts, devices, unknown *failTable
	// unknownSeen counts failures at names that are no account since
	// the last audit entry of them, at unknownAudited.
	unknownSeen    int
	unknownAudited time.Time
}

// NewLoginLimiter allows failures per window per account and per device
// cookie.
func NewLoginLimiter(failures int, window time.Duration) *LoginLimiter {
	return &LoginLimiter{Failures: failures, Window: window}
}

// unknownAuditEvery is how often at most an audit entry counts the
// failed logins at names that are no account: a spray of made-up names
// must not write a row each.
const unknownAuditEvery = time.Minute

// tables makes the tables at first use; l.mu is held.
func (l *LoginLimiter) tables() {
	if l.accounts != nil {
		return
	}
	budget := l.MaxBytes
	if budget <= 0 {
		budget = DefaultLoginTrackerBytes
	}
	l.accounts = newFailTable(budget / 2)
	l.devices = newFailTable(budget / 4)
	l.unknown = newFailTable(budget / 4)
}

// Bytes is the memory the counts take by the limiter's own accounting.
func (l *LoginLimiter) Bytes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tables()
	return l.accounts.bytes + l.devices.bytes + l.unknown.bytes
}

// table is the count that judges an attempt at name: the device
// cookie's, the account's, or that of a name that is no account.
func (l *LoginLimiter) table(name, deviceID string) (*failTable, string) {
	if deviceID != "" {
		return l.devices, deviceID
	}
	if _, ok := l.unknown.byKey[name]; ok {
		return l.unknown, name
	}
	return l.accounts, name
}

// wait is how long the attempt must wait, 0 if it may go on.
func (l *LoginLimiter) wait(name, deviceID string, now time.Time) time.Duration {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tables()
	t, key := l.table(name, deviceID)
	ts := t.recent(key, now, l.Window)
	if len(ts) < l.Failures {
		return 0
	}
	return ts[len(ts)-l.Failures].Add(l.Window).Sub(now)
}

// fail counts a wrong password at the account name (by the device
// cookie deviceID, if any) and returns the failures within the window
// and, when this failure locked it, until when.
func (l *LoginLimiter) fail(name, deviceID string, now time.Time) (n int, lockedUntil time.Time) {
	if l == nil {
		return 0, time.Time{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tables()
	t, key := l.devices, deviceID
	if deviceID == "" {
		// The name is an account now, whatever it was before.
		l.unknown.drop(name)
		t, key = l.accounts, name
	}
	ts := t.add(key, now, l.Window, l.Failures)
	if len(ts) == l.Failures {
		lockedUntil = ts[0].Add(l.Window)
	}
	return len(ts), lockedUntil
}

// failUnknown counts a failure at name, which is no account.
func (l *LoginLimiter) failUnknown(name string, now time.Time) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tables()
	l.unknown.add(name, now, l.Window, l.Failures)
}

// countUnknown counts a failure at a name that is no account (or input
// that cannot be one) and returns how many to audit now: all since the
// last entry, at most once every unknownAuditEvery, else 0.
func (l *LoginLimiter) countUnknown(now time.Time) int {
	if l == nil {
		return 1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unknownSeen++
	if !l.unknownAudited.IsZero() && now.Sub(l.unknownAudited) < unknownAuditEvery {
		return 0
	}
	n := l.unknownSeen
	l.unknownSeen, l.unknownAudited = 0, now
	return n
}

// succeed forgets the failures that judged a successful login.
func (l *LoginLimiter) succeed(name, deviceID string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tables()
	t, key := l.table(name, deviceID)
	t.drop(key)
}

// failEntryBytes estimates what one entry of a failTable takes besides
// its key and its times: the map slot, the list element, the record.
const failEntryBytes = 160

// timeBytes is the size of a time.Time.
const timeBytes = 24

// failTable is failure times by key, bounded in bytes, its entries in
// the order of their last failure.
type failTable struct {
	max, bytes int
	byKey      map[string]*list.Element
	order      list.List // of *failRecord, least recently failed first
}

type failRecord struct {
	key   string
	times []time.Time
}

func newFailTable(max int) *failTable {
	return &failTable{max: max, byKey: map[string]*list.Element{}}
}

func (t *failTable) cost(r *failRecord) int {
	return failEntryBytes + len(r.key) + cap(r.times)*timeBytes
}

// expire drops the entries whose last failure is out of the window.
func (t *failTable) expire(now time.Time, window time.Duration) {
	for e := t.order.Front(); e != nil; e = t.order.Front() {
		r := e.Value.(*failRecord)
		if r.times[len(r.times)-1].After(now.Add(-window)) {
			return
		}
		t.remove(e)
	}
}

func (t *failTable) remove(e *list.Element) {
	r := e.Value.(*failRecord)
	t.order.Remove(e)
	delete(t.byKey, r.key)
	t.bytes -= t.cost(r)
}

func (t *failTable) drop(key string) {
	if e, ok := t.byKey[key]; ok {
		t.remove(e)
	}
}

// recent returns key's failures within the window.
func (t *failTable) recent(key string, now time.Time, window time.Duration) []time.Time {
	t.expire(now, window)
	e, ok := t.byKey[key]
	if !ok {
		return nil
	}
	r := e.Value.(*failRecord)
	i := 0
	for i < len(r.times) && !r.times[i].After(now.Add(-window)) {
		i++
	}
	return r.times[i:]
}

// add records a failure of key at now, keeping its last keep failures
// within the window, and returns them. A new entry evicts the least
// recently failed ones while the table would pass its budget.
func (t *failTable) add(key string, now time.Time, window time.Duration, keep int) []time.Time {
	keep = max(keep, 1)
	ts := t.recent(key, now, window)
	if e, ok := t.byKey[key]; ok {
		r := e.Value.(*failRecord)
		n := copy(r.times, ts)
		r.times = r.times[:n]
		if len(r.times) == keep {
			r.times = append(r.times[:0], r.times[1:]...)
		}
		r.times = append(r.times, now)
		t.order.MoveToBack(e)
		return r.times
	}
	r := &failRecord{key: key, times: make([]time.Time, 1, keep)}
	r.times[0] = now
	for t.bytes+t.cost(r) > t.max && t.order.Len() > 0 {
		t.remove(t.order.Front())
	}
	if t.bytes+t.cost(r) > t.max {
		return r.times // larger than the whole budget: not kept
	}
	t.byKey[key] = t.order.PushBack(r)
	t.bytes += t.cost(r)
	return r.times
}
