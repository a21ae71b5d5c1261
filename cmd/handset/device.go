package main

import (
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/termtext"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// Messaging states of the cloud-messaging service, as check-ins report them.
const (
	msgAutoEnabled uint8 = iota // switched itself on at first boot: the incident
	msgOptedOut                 // off until the user turns it on: the patched default
	msgOptedIn                  // the user turned it on
)

var messagingNames = [...]string{msgAutoEnabled: "auto_enabled", msgOptedOut: "opted_out", msgOptedIn: "opted_in"}

func parseMessaging(s string) (uint8, bool) {
	for i, n := range messagingNames {
		if n == s {
			return uint8(i), true
		}
	}
	return 0, false
}

// Report states, in install order.
const (
	stDownloading uint8 = iota
	stDownloaded
	stVerified
	stInstalling
	stInstalled
	stFailed
)

var stateNames = [...]string{stDownloading: "downloading", stDownloaded: "downloaded", stVerified: "verified",
	stInstalling: "installing", stInstalled: "installed", stFailed: "failed"}

// What a handset does next.
const (
	phaseEnroll uint8 = iota
	phaseCheckIn
	phaseFetch  // TUF update of the offered target
	phaseReport // send d.pending
)

// Outcome of a handset in this run.
const (
	resNone      uint8 = iota
	resInstalled       // installed a patch
	resFailed          // an install failed
	resGaveUp          // could not enroll or check in: the server refused
)

// Retry bounds. Check-ins, the heartbeat, retry until the run ends.
const (
	maxAttempts      = 10 // enrollment, one report
	maxFetchAttempts = 3  // a TUF update failing on the network
	maxReenrolls     = 3  // 401s in a row
)

// device is one simulated handset. It is small (about 250 bytes plus its
// strings) so that a process holds 10,000 of them easily, and it is owned
// by one worker at a time: the scheduler hands its index to one worker,
// which pushes it back when done, so its fields need no lock.
type device struct {
	seed  [ed25519.SeedSize]byte // device key; the server derives the id from it
	id    string
	token string

	installed []string // sorted patch ids
	// build is the build the handset runs once it installed a release
	// that states one (installs_build); "" is the run's --build.
	build     string
	messaging uint8
	numberEnc bool

	phase, resume uint8 // resume: the phase to go back to after re-enrolling
	attempts      uint8
	reenrolls     uint8
	result        uint8
	enrolled      bool // in this run
	settled       bool
	afterMsg      uint8 // messaging state the verified patch sets
	afterEnc      bool
	afterBuild    string // build the verified patch installs, if it says

	failCode    string
	failedPatch string // not retried in this run
	offer       *offer
	pending     pendingReport
	poll        time.Duration // last poll interval, scaled
}

// pendingReport is the report a handset is sending; its id and time stay
// the same across retries, so the server stores it once.
type pendingReport struct {
	id      [16]byte
	state   uint8
	code    string
	message string
	at      time.Time
}

// offer is an offered update, its URLs resolved and checked. Offers are
// interned: 10,000 handsets offered one patch share one.
type offer struct {
	Target, SHA256, PatchID, RolloutID string
	MetadataURL, TargetsURL            string
	Length                             int64
}

func newDevice() device {
	var d device
	crand.Read(d.seed[:])
	d.resume = phaseCheckIn
	return d
}

func (d *device) setPending(state uint8, code, message string) {
	at := time.Now().UTC()
	if !at.After(d.pending.at) {
		at = d.pending.at.Add(time.Microsecond) // reports of one handset are strictly ordered in time
	}
	d.pending = pendingReport{state: state, code: code, message: message, at: at}
	crand.Read(d.pending.id[:])
}

// reportID writes a report id as 32 letters, a-p for each hex digit: the
// server refuses ids with 7 digits in a row (they could be an IMEI or a
// phone number), which a hex id has about one time in three and a UUID
// one in five.
func reportID(id [16]byte) string {
	const letters = "abcdefghijklmnop"
	b := make([]byte, 0, 2*len(id))
	for _, c := range id {
		b = append(b, letters[c>>4], letters[c&15])
	}
	return string(b)
}

func (d *device) compliant() bool {
	return len(d.installed) > 0 && d.messaging != msgAutoEnabled && d.numberEnc
}

// step runs a handset's next action and says when to run the one after;
// false means the handset is done for this run.
func (s *sim) step(ctx context.Context, d *device) (time.Time, bool) {
	switch d.phase {
	case phaseEnroll:
		return s.enroll(ctx, d)
	case phaseCheckIn:
		return s.checkIn(ctx, d)
	case phaseFetch:
		return s.fetch(ctx, d)
	case phaseReport:
		return s.report(ctx, d)
	}
	return time.Time{}, false
}

func (s *sim) enroll(ctx context.Context, d *device) (time.Time, bool) {
	// client.Enroll signs with the device key and a timestamp in
	// microseconds, as the server keeps them.
	a, created, err := s.api.Enroll(ctx, ed25519.NewKeyFromSeed(d.seed[:]), wire.EnrollBody{
		Model: s.cfg.Model, Build: s.cfg.Build, Channel: s.cfg.Channel, Region: s.cfg.Region,
		EnrollmentSecret: s.cfg.EnrollmentSecret,
	})
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		s.stats.addError("enroll", err)
		if transient(err) && d.attempts < maxAttempts {
			d.attempts++
			return s.retryAt(err, d.attempts), true
		}
		s.giveUp(d, "enroll", err)
		return time.Time{}, false
	}
	if created {
		s.stats.enrolledNew.Add(1)
	} else {
		s.stats.reenrolled.Add(1)
	}
	if !d.enrolled {
		d.enrolled = true
		s.stats.enrolled.Add(1)
	}
	d.id, d.token, d.attempts = a.DeviceID, a.Token, 0
	if s.enrollOnly {
		s.settle(d)
		return time.Time{}, false
	}
	d.phase = d.resume
	return time.Now(), true
}

// reenroll answers a 401: the token is gone (the device was erased, or
// the server's database replaced), so enroll again and resume.
func (s *sim) reenroll(d *device, resume uint8, err error) (time.Time, bool) {
	d.reenrolls++
	if d.reenrolls > maxReenrolls {
		s.giveUp(d, "re-enroll", err)
		return time.Time{}, false
	}
	d.phase, d.resume, d.token, d.attempts = phaseEnroll, resume, "", 0
	return time.Now(), true
}

func (s *sim) checkInBody(d *device) wire.CheckInBody {
	enc := d.numberEnc
	return wire.CheckInBody{Build: s.build(d), Model: s.cfg.Model, Channel: s.cfg.Channel,
		InstalledPatches: d.installed, CloudMessaging: messagingNames[d.messaging], NumberEncryption: &enc,
		UTCOffsetMinutes: s.cfg.UTCOffsetMinutes}
}

// as is the client that calls as handset d, with its token, over the
// process's one transport.
func (s *sim) as(d *device) *client.Client { return s.api.WithToken(d.token) }

// build is the build handset d runs.
func (s *sim) build(d *device) string {
	if d.build != "" {
		return d.build
	}
	return s.cfg.Build
}

func (s *sim) checkIn(ctx context.Context, d *device) (time.Time, bool) {
	t0 := time.Now()
	a, err := s.as(d).CheckIn(ctx, s.checkInBody(d))
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		s.stats.addError("checkin", err)
		switch {
		case unauthorized(err):
			return s.reenroll(d, phaseCheckIn, err)
		case transient(err):
			d.attempts = min(d.attempts+1, 100)
			return s.retryAt(err, d.attempts), true
		}
		s.giveUp(d, "checkin", err)
		return time.Time{}, false
	}
	now := time.Now()
	s.stats.latency.record(now.Sub(t0))
	s.stats.checkins.Add(1)
	d.attempts, d.reenrolls = 0, 0
	d.poll = s.pollInterval(float64(a.PollAfterSeconds))
	if o := s.actionable(d, a.Offer); o != nil {
		d.offer = o
		d.setPending(stDownloading, "", "")
		d.phase = phaseReport
		return now, true
	}
	if a.Offer == nil && a.NoOffer != "" {
		// The server's words, made safe to print and kept short.
		reason := termtext.Escape(a.NoOffer)
		if len(reason) > 64 {
			reason = strings.ToValidUTF8(reason[:64], "") + "..."
		}
		if s.stats.addNoOffer(reason) {
			// Once per reason, so that a person watching sees why nothing
			// happens (publishing is not deploying); the summary counts them.
			fmt.Fprintf(s.stderr, "handset: no_offer: %s (printed once per reason; the summary counts them)\n", reason)
		}
	}
	// Nothing (more) to do: a handset that has a result, or already ran
	// patches from an earlier run, is settled; one that was never offered
	// anything waits for an offer.
	if d.result != resNone || len(d.installed) > 0 {
		s.settle(d)
	}
	return now.Add(d.poll), true
}

// pollInterval scales the server's poll_after_seconds, kept between one
// second and a day first, so that a server answering 0 is not polled in a
// tight loop.
func (s *sim) pollInterval(seconds float64) time.Duration {
	seconds = min(max(seconds, 1), 24*3600)
	return max(time.Duration(seconds*s.cfg.PollScale*float64(time.Second)), time.Millisecond)
}

// actionable returns the offer a handset should act on, or nil.
func (s *sim) actionable(d *device, a *wire.OfferAnswer) *offer {
	if a == nil {
		return nil
	}
	if handsets.ValidatePatchID("patch_id", a.PatchID) != nil || a.Target == "" || a.Length < 0 {
		s.stats.addErrorKind("checkin:bad_offer")
		return nil
	}
	if slices.Contains(d.installed, a.PatchID) || a.PatchID == d.failedPatch {
		return nil
	}
	o := offer{Target: a.Target, SHA256: strings.ToLower(a.SHA256), PatchID: a.PatchID, RolloutID: a.RolloutID,
		MetadataURL: s.resolve(a.MetadataURL, "/tuf/"), TargetsURL: s.resolve(a.TargetsURL, "/targets/"), Length: a.Length}
	return s.intern(o)
}

func (s *sim) fetch(ctx context.Context, d *device) (time.Time, bool) {
	custom, err := s.tuf.verify(ctx, d.offer, s.cfg.Model, s.build(d))
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		code := agent.Code(err)
		s.stats.addErrorKind("tuf:" + code)
		if agent.Transient(err) && d.attempts < maxFetchAttempts {
			d.attempts++
			return time.Now().Add(backoff(d.attempts)), true
		}
		d.attempts = 0
		// Described as the agent reports it: no network addresses.
		msg := agent.Describe(err)
		if !strings.HasPrefix(msg, code+": ") {
			msg = code + ": " + msg
		}
		s.fail(d, code, msg)
		return time.Now(), true
	}
	d.attempts = 0
	// What the patch changes comes from the signed metadata, not from the
	// server's copy in the offer.
	d.afterMsg, d.afterEnc = d.messaging, d.numberEnc
	if custom.CloudMessagingDefault != "opt-out" && d.messaging == msgAutoEnabled {
		d.afterMsg = msgOptedOut
	}
	if custom.NumberEncryption != "off" {
		d.afterEnc = true
	}
	d.afterBuild = custom.InstallsBuild
	d.setPending(stDownloaded, "", "")
	d.phase = phaseReport
	return time.Now(), true
}

func (s *sim) report(ctx context.Context, d *device) (time.Time, bool) {
	r := &d.pending
	at := r.at
	dup, err := s.as(d).Report(ctx, wire.ReportBody{
		ReportID: reportID(r.id), PatchID: d.offer.PatchID, RolloutID: d.offer.RolloutID, Target: d.offer.Target,
		State: stateNames[r.state], ErrorCode: r.code, Message: r.message, At: &at,
	})
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		s.stats.addError("report", err)
		switch {
		case unauthorized(err):
			return s.reenroll(d, phaseReport, err)
		case transient(err) && d.attempts < maxAttempts:
			// Same report id: if the server stored it and only the
			// answer was lost, it says duplicate and counts it once.
			d.attempts++
			s.stats.retries.Add(1)
			return s.retryAt(err, d.attempts), true
		}
		// Refused, or never acknowledged: the install goes on without it,
		// as on a handset whose reporting is best effort.
		s.stats.dropped.Add(1)
	} else {
		s.stats.reports.Add(1)
		if dup {
			s.stats.duplicates.Add(1)
		}
	}
	d.attempts = 0
	return s.advance(d)
}

// advance moves a handset to the step after an acknowledged report.
func (s *sim) advance(d *device) (time.Time, bool) {
	now := time.Now()
	switch d.pending.state {
	case stDownloading:
		d.pending = pendingReport{at: d.pending.at}
		d.phase = phaseFetch
	case stDownloaded:
		d.setPending(stVerified, "", "")
	case stVerified:
		d.setPending(stInstalling, "", "")
	case stInstalling:
		if s.cfg.FailRate > 0 && rand.Float64() < s.cfg.FailRate {
			s.fail(d, s.codes[rand.IntN(len(s.codes))], "simulated install failure")
			break
		}
		s.install(d)
		d.setPending(stInstalled, "", "")
	case stInstalled:
		// Check in at once, as after the reboot: the server learns the
		// new state.
		d.offer, d.pending = nil, pendingReport{at: d.pending.at}
		d.phase = phaseCheckIn
	case stFailed:
		d.offer, d.pending = nil, pendingReport{at: d.pending.at}
		d.phase = phaseCheckIn
		s.settle(d)
		return now.Add(d.poll), true
	}
	return now, true
}

func (s *sim) install(d *device) {
	if !slices.Contains(d.installed, d.offer.PatchID) {
		d.installed = append(d.installed, d.offer.PatchID)
		slices.Sort(d.installed)
	}
	d.messaging, d.numberEnc = d.afterMsg, d.afterEnc
	if d.afterBuild != "" {
		d.build = d.afterBuild
	}
	if d.result != resInstalled {
		s.stats.installed.Add(1)
		if d.result == resFailed {
			s.stats.failed.Add(-1)
		}
	}
	d.result, d.failCode = resInstalled, ""
}

// fail reports an install failure; the handset stays unpatched and does
// not retry that patch in this run.
func (s *sim) fail(d *device, code, message string) {
	if d.result != resFailed {
		s.stats.failed.Add(1)
		if d.result == resInstalled {
			s.stats.installed.Add(-1)
		}
	}
	d.result, d.failCode, d.failedPatch = resFailed, code, d.offer.PatchID
	d.setPending(stFailed, code, reportMessage(message))
	d.phase = phaseReport
}

func (s *sim) giveUp(d *device, op string, err error) {
	if d.result != resGaveUp {
		s.stats.gaveUp.Add(1)
		switch d.result {
		case resInstalled:
			s.stats.installed.Add(-1)
		case resFailed:
			s.stats.failed.Add(-1)
		}
	}
	d.result, d.failCode = resGaveUp, op+": "+errorKind(err)
	s.lastGiveUp.Store(op + ": " + oneLine(err.Error()))
	s.settle(d)
}

// reportMessage fits a message into what the server accepts: one line of
// at most 256 bytes.
func reportMessage(s string) string {
	s = oneLine(s)
	if len(s) <= 256 {
		return s
	}
	s = s[:253]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// retryAt is when to retry after err: when the server said (Retry-After),
// else after an exponential backoff.
func (s *sim) retryAt(err error, attempt uint8) time.Time {
	if ra, ok := retryAfter(err); ok {
		return time.Now().Add(ra)
	}
	return time.Now().Add(backoff(attempt))
}

// backoff is 250ms doubling to 30s, with jitter so a fleet does not retry
// in lockstep.
func backoff(attempt uint8) time.Duration {
	d := min(250*time.Millisecond<<min(attempt, 8), 30*time.Second)
	return d/2 + rand.N(d/2+1)
}
