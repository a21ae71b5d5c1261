package handsetsim

import (
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/internal/termtext"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

// Handset is one simulated handset: who it is, what it runs, and where
// it is in this run. The caller fills the first fields before the run
// (NewHandset for a new device); the fleet changes what it runs as it
// installs. A fleet's handset is owned by one worker at a time, so its
// fields need no lock; read them once the run is over.
//
// It is small (about 300 bytes plus its strings) so that a process holds
// a million of them.
type Handset struct {
	// Seed is the device key's seed; the server derives the device id
	// from the key, so a handset with the same seed is the same device.
	Seed [ed25519.SeedSize]byte
	// What it says about itself at enrollment and check-ins.
	Model, Build, Channel, Region string
	// UTCOffsetMinutes, when set, is sent with every check-in (for
	// maintenance windows in local hours).
	UTCOffsetMinutes *int
	// Installed are the patches it runs, sorted.
	Installed []string
	// Messaging is the cloud-messaging state (handsets.Messaging*);
	// NumberEncryption whether numbers are encrypted.
	Messaging        string
	NumberEncryption bool
	// DeviceID and Token are its enrollment's; Token is "" before.
	DeviceID, Token string

	phase, resume uint8 // resume: the phase to go back to after re-enrolling
	retries       uint8 // failures in a row of the current step
	reenrolls     uint8
	result        Result
	enrolled      bool // in this run
	offered       bool // in this run
	settled       bool
	installs      int // install attempts in this run: Outcome's attempt

	failCode    string
	failedPatch string // not offered again in this run, unless RetryFailed
	offer       *offer
	verified    *patchEffect           // what the verified patch changes once installed
	incremental *manifests.Incremental // the verified offer's, nil for a full image
	offers      int                    // offers taken in this run (first offers and retries)
	offerBytes  int64                  // their payloads' bytes
	outcome     Outcome                // of the install in progress
	pending     pendingReport
	poll        time.Duration // last poll interval, scaled
}

// NewHandset is a new device, unpatched as the incident left it: cloud
// messaging switched on at first boot, numbers sent in clear.
func NewHandset(model, build, channel, region string) Handset {
	h := Handset{Model: model, Build: build, Channel: channel, Region: region, Messaging: handsets.MessagingAutoEnabled}
	crand.Read(h.Seed[:])
	return h
}

// newRun starts a run with what the handset is and runs, and nothing of
// a run before: a handset with a token checks in first, one without
// enrolls.
func (h *Handset) newRun() {
	*h = Handset{Seed: h.Seed, Model: h.Model, Build: h.Build, Channel: h.Channel, Region: h.Region,
		UTCOffsetMinutes: h.UTCOffsetMinutes, Installed: h.Installed, Messaging: h.Messaging,
		NumberEncryption: h.NumberEncryption, DeviceID: h.DeviceID, Token: h.Token,
		phase: phaseEnroll, resume: phaseCheckIn}
	if h.Token != "" {
		h.phase = phaseCheckIn
	}
}

// Result is how a handset's run went so far.
type Result uint8

const (
	ResultNone      Result = iota // no install finished (yet)
	ResultInstalled               // its last install succeeded
	ResultFailed                  // its last install failed
	ResultGaveUp                  // the server refused its enrollment or check-ins for good
	ResultSilent                  // the install bricked it: it went silent (Outcome.Silent)
)

// Result is how the handset's run went so far.
func (h *Handset) Result() Result { return h.result }

// FailCode is the error code of its failed install, or of why it gave
// up ("checkin: http_403").
func (h *Handset) FailCode() string { return h.failCode }

// Incremental is the incremental payload of the install in progress (or
// the last one), as its signed metadata states it; nil for a full image.
// A Config.Install may fail it with agent.CodeIncrementalApply, as a
// maker's installer whose incremental package does not apply.
func (h *Handset) Incremental() *manifests.Incremental { return h.incremental }

// Offers is how many offers the handset took in this run (a first offer
// and each retry) and their payloads' bytes: what the server's rollout
// report counts.
func (h *Handset) Offers() (n int, bytes int64) { return h.offers, h.offerBytes }

// Settled reports whether the handset has nothing left to do in this
// run: it has a result, or it ran the patch before the run and was
// offered nothing.
func (h *Handset) Settled() bool { return h.settled }

// Compliant reports whether it runs a patch with cloud messaging no
// longer switched on by itself and numbers encrypted: what the mission
// is after.
func (h *Handset) Compliant() bool {
	return len(h.Installed) > 0 && h.Messaging != handsets.MessagingAutoEnabled && h.NumberEncryption
}

// Outcome is how an install goes: Code "" installs, any other fails with
// that code and Message; the result is reported Takes after the handset
// reported installing. Silent bricks the handset instead: after
// reporting installing it sends nothing ever again, as a phone that
// boot-loops before its agent runs.
type Outcome struct {
	Code, Message string
	Takes         time.Duration
	Silent        bool
}

// patchEffect is what a verified patch changes, from its signed custom
// metadata (never from the server's copy in the offer).
type patchEffect struct {
	installsBuild    string
	messagingDefault string
	numberEncryption string
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

var stateNames = [...]string{stDownloading: handsets.StateDownloading, stDownloaded: handsets.StateDownloaded,
	stVerified: handsets.StateVerified, stInstalling: handsets.StateInstalling, stInstalled: handsets.StateInstalled,
	stFailed: handsets.StateFailed}

// What a handset does next.
const (
	phaseEnroll uint8 = iota
	phaseCheckIn
	phaseFetch   // go-tuf update of the offered target
	phaseReport  // send h.pending
	phaseInstall // the install's result is in
)

// Retry bounds. Check-ins, the heartbeat, retry until the run ends.
const (
	maxAttempts      = 10 // enrollment, one report
	maxFetchAttempts = 3  // a go-tuf update failing on the network
	maxReenrolls     = 3  // 401s in a row
)

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

func (h *Handset) setPending(state uint8, code, message string) {
	at := time.Now().UTC()
	if !at.After(h.pending.at) {
		at = h.pending.at.Add(time.Microsecond) // reports of one handset are strictly ordered in time
	}
	h.pending = pendingReport{state: state, code: code, message: message, at: at}
	crand.Read(h.pending.id[:])
}

// ReportID writes a report id as 32 letters, a-p for each hex digit: the
// server refuses ids with 7 digits in a row (they could be an IMEI or a
// phone number), which a hex id has about one time in three and a UUID
// one in five.
func ReportID(id [16]byte) string {
	const letters = "abcdefghijklmnop"
	b := make([]byte, 0, 2*len(id))
	for _, c := range id {
		b = append(b, letters[c>>4], letters[c&15])
	}
	return string(b)
}

// step runs a handset's next action and says when to run the one after;
// false means the handset is done for this run.
func (f *Fleet) step(ctx context.Context, i int, h *Handset) (time.Time, bool) {
	switch h.phase {
	case phaseEnroll:
		return f.enroll(ctx, h)
	case phaseCheckIn:
		return f.checkIn(ctx, h)
	case phaseFetch:
		return f.fetch(ctx, i, h)
	case phaseReport:
		return f.report(ctx, i, h)
	case phaseInstall:
		return f.installed(i, h)
	}
	return time.Time{}, false
}

func (f *Fleet) enroll(ctx context.Context, h *Handset) (time.Time, bool) {
	// client.Enroll signs with the device key and a timestamp in
	// microseconds, as the server keeps them.
	a, created, err := f.cfg.Client.Enroll(ctx, ed25519.NewKeyFromSeed(h.Seed[:]), wire.EnrollBody{
		Model: h.Model, Build: h.Build, Channel: h.Channel, Region: h.Region,
		EnrollmentSecret: f.cfg.EnrollmentSecret,
	})
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		f.addError("enroll", err)
		if client.Temporary(err) && h.retries < maxAttempts {
			h.retries++
			return f.retryAt(err, h.retries), true
		}
		f.giveUp(h, "enroll", err)
		return time.Time{}, false
	}
	if created {
		f.stats.enrolledNew.Add(1)
	} else {
		f.stats.reenrolled.Add(1)
	}
	if !h.enrolled {
		h.enrolled = true
		f.stats.enrolled.Add(1)
	}
	h.DeviceID, h.Token, h.retries = a.DeviceID, a.Token, 0
	if f.cfg.EnrollOnly {
		f.settle(h)
		return time.Time{}, false
	}
	h.phase = h.resume
	return time.Now(), true
}

// reenroll answers a 401: the token is gone (the device was erased, or
// the server's database replaced), so enroll again and resume.
func (f *Fleet) reenroll(h *Handset, resume uint8, err error) (time.Time, bool) {
	h.reenrolls++
	if h.reenrolls > maxReenrolls {
		f.giveUp(h, "re-enroll", err)
		return time.Time{}, false
	}
	h.phase, h.resume, h.Token, h.retries = phaseEnroll, resume, "", 0
	return time.Now(), true
}

func (f *Fleet) checkInBody(h *Handset) wire.CheckInBody {
	enc := h.NumberEncryption
	return wire.CheckInBody{Build: h.Build, Model: h.Model, Channel: h.Channel,
		InstalledPatches: h.Installed, CloudMessaging: h.Messaging, NumberEncryption: &enc,
		UTCOffsetMinutes: h.UTCOffsetMinutes}
}

// as is the client that calls as handset h, with its token, over the
// fleet's one transport.
func (f *Fleet) as(h *Handset) *client.Client { return f.cfg.Client.WithToken(h.Token) }

func (f *Fleet) checkIn(ctx context.Context, h *Handset) (time.Time, bool) {
	t0 := time.Now()
	a, err := f.as(h).CheckIn(ctx, f.checkInBody(h))
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		f.addError("checkin", err)
		switch {
		case unauthorized(err):
			return f.reenroll(h, phaseCheckIn, err)
		case client.Temporary(err):
			h.retries = min(h.retries+1, 100)
			return f.retryAt(err, h.retries), true
		}
		f.giveUp(h, "checkin", err)
		return time.Time{}, false
	}
	now := time.Now()
	f.stats.latency.record(now.Sub(t0))
	f.stats.checkins.Add(1)
	h.retries, h.reenrolls = 0, 0
	h.poll = f.pollInterval(float64(a.PollAfterSeconds))
	if o := f.actionable(h, a.Offer); o != nil {
		if !h.offered {
			h.offered = true
			f.stats.offered.Add(1)
		}
		h.offer = o
		h.offers++
		h.offerBytes += o.Length
		h.setPending(stDownloading, "", "")
		h.phase = phaseReport
		return now, true
	}
	if a.Offer == nil && a.NoOffer != "" {
		// The server's words, made safe to print and kept short.
		reason := termtext.Escape(a.NoOffer)
		if len(reason) > 64 {
			reason = strings.ToValidUTF8(reason[:64], "") + "..."
		}
		if f.stats.addNoOffer(reason) {
			// Once per reason, so that a person watching sees why nothing
			// happens (publishing is not deploying); the counts say the rest.
			f.say("no_offer: " + reason + " (said once per reason; further ones are counted)")
		}
	}
	// Nothing (more) to do: a handset that has a result, or already ran
	// patches from before the run, is settled; one that was never offered
	// anything waits for an offer.
	if h.result != ResultNone || len(h.Installed) > 0 {
		f.settle(h)
	}
	return now.Add(h.poll), true
}

// pollInterval scales the server's poll_after_seconds, kept between
// agent.MinPoll and agent.MaxPoll first, so that a server answering 0 is
// not polled in a tight loop, and adds the fleet's jitter.
func (f *Fleet) pollInterval(seconds float64) time.Duration {
	d := min(max(time.Duration(seconds*float64(time.Second)), agent.MinPoll), agent.MaxPoll)
	if f.cfg.PollJitter > 0 {
		d += rand.N(f.cfg.PollJitter + 1)
	}
	return max(f.scale(d), time.Millisecond)
}

// actionable returns the offer a handset should act on, or nil.
func (f *Fleet) actionable(h *Handset, a *wire.OfferAnswer) *offer {
	if a == nil {
		return nil
	}
	if handsets.ValidatePatchID("patch_id", a.PatchID) != nil || a.Target == "" || a.Length < 0 {
		f.stats.addErrorKind("checkin:bad_offer")
		return nil
	}
	if slices.Contains(h.Installed, a.PatchID) || (a.PatchID == h.failedPatch && !f.cfg.RetryFailed) {
		return nil
	}
	o := offer{Target: a.Target, SHA256: strings.ToLower(a.SHA256), PatchID: a.PatchID, RolloutID: a.RolloutID,
		MetadataURL: f.resolve(a.MetadataURL, wire.MetadataPrefix), TargetsURL: f.resolve(a.TargetsURL, wire.TargetsPrefix),
		Length: a.Length}
	return f.intern(o)
}

func (f *Fleet) fetch(ctx context.Context, i int, h *Handset) (time.Time, bool) {
	custom, err := f.tuf.verify(ctx, h.offer, h.Model, h.Build)
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		code := agent.Code(err)
		if f.stats.addErrorKind("tuf:"+code) && !agent.Transient(err) {
			f.say(fmt.Sprintf("an offer did not verify on %s %s: %s (further ones are counted)", h.Model, h.Build, agent.Describe(err)))
		}
		if agent.Transient(err) && h.retries < maxFetchAttempts {
			h.retries++
			return time.Now().Add(f.backoff(int(h.retries))), true
		}
		h.retries = 0
		// Described as the agent reports it: no network addresses.
		msg := agent.Describe(err)
		if !strings.HasPrefix(msg, code+": ") {
			msg = code + ": " + msg
		}
		f.fail(i, h, code, msg)
		return time.Now(), true
	}
	h.retries = 0
	h.verified = &patchEffect{installsBuild: custom.InstallsBuild, messagingDefault: custom.CloudMessagingDefault,
		numberEncryption: custom.NumberEncryption}
	h.incremental = custom.Incremental
	h.setPending(stDownloaded, "", "")
	h.phase = phaseReport
	return time.Now(), true
}

func (f *Fleet) report(ctx context.Context, i int, h *Handset) (time.Time, bool) {
	r := &h.pending
	at := r.at
	dup, err := f.as(h).Report(ctx, wire.ReportBody{
		ReportID: ReportID(r.id), PatchID: h.offer.PatchID, RolloutID: h.offer.RolloutID, Target: h.offer.Target,
		State: stateNames[r.state], ErrorCode: r.code, Message: r.message, At: &at,
	})
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{}, false
		}
		f.addError("report", err)
		switch {
		case unauthorized(err):
			return f.reenroll(h, phaseReport, err)
		case client.Temporary(err) && h.retries < maxAttempts:
			// Same report id: if the server stored it and only the
			// answer was lost, it says duplicate and counts it once.
			h.retries++
			f.stats.retries.Add(1)
			return f.retryAt(err, h.retries), true
		}
		// Refused, or never acknowledged: the install goes on without it,
		// as on a handset whose reporting is best effort.
		f.stats.dropped.Add(1)
	} else {
		f.stats.reports.Add(1)
		if dup {
			f.stats.duplicates.Add(1)
		}
	}
	h.retries = 0
	return f.advance(i, h)
}

// advance moves a handset to the step after an acknowledged report.
func (f *Fleet) advance(i int, h *Handset) (time.Time, bool) {
	now := time.Now()
	switch h.pending.state {
	case stDownloading:
		h.pending = pendingReport{at: h.pending.at}
		h.phase = phaseFetch
	case stDownloaded:
		h.setPending(stVerified, "", "")
	case stVerified:
		h.setPending(stInstalling, "", "")
	case stInstalling:
		h.installs++
		h.outcome = Outcome{}
		if f.cfg.Install != nil {
			h.outcome = f.cfg.Install(i, h, h.installs)
		}
		h.phase = phaseInstall
		return now.Add(max(h.outcome.Takes, 0)), true
	case stInstalled:
		// Check in at once, as after the reboot: the server learns the
		// new state.
		h.offer, h.verified, h.pending = nil, nil, pendingReport{at: h.pending.at}
		h.phase = phaseCheckIn
	case stFailed:
		h.offer, h.verified, h.pending = nil, nil, pendingReport{at: h.pending.at}
		h.phase = phaseCheckIn
		if !f.cfg.RetryFailed {
			f.settle(h)
		}
		return now.Add(h.poll), true
	}
	return now, true
}

// installed ends the install in progress as its Outcome says.
func (f *Fleet) installed(i int, h *Handset) (time.Time, bool) {
	if h.outcome.Silent {
		h.result = ResultSilent
		f.stats.silent.Add(1)
		if f.cfg.OnResult != nil {
			f.cfg.OnResult(i, h.installs, "silent")
		}
		f.settle(h)
		return time.Time{}, false // never heard from again
	}
	if o := h.outcome; o.Code != "" {
		f.fail(i, h, o.Code, o.Message)
		return time.Now(), true
	}
	f.install(i, h)
	h.setPending(stInstalled, "", "")
	h.phase = phaseReport
	return time.Now(), true
}

// install applies the verified patch: what the handset runs and says at
// its next check-in, right after the reboot. The rules are the agent's:
// cloud messaging switched on by itself goes off until the user opts in
// when the patch makes it opt-in; numbers are encrypted when the patch
// turns encryption on.
func (f *Fleet) install(i int, h *Handset) {
	if !slices.Contains(h.Installed, h.offer.PatchID) {
		h.Installed = append(h.Installed, h.offer.PatchID)
		slices.Sort(h.Installed)
	}
	if p := h.verified; p != nil {
		if p.installsBuild != "" {
			h.Build = p.installsBuild
		}
		if p.messagingDefault == "opt-in" && h.Messaging == handsets.MessagingAutoEnabled {
			h.Messaging = handsets.MessagingOptedOut
		}
		if p.numberEncryption == "on" {
			h.NumberEncryption = true
		}
	}
	if h.result != ResultInstalled {
		f.stats.installed.Add(1)
		if h.result == ResultFailed {
			f.stats.failed.Add(-1)
		}
	}
	h.result, h.failCode = ResultInstalled, ""
	if f.cfg.OnResult != nil {
		f.cfg.OnResult(i, h.installs, "")
	}
}

// fail reports an install failure; the handset stays unpatched and, unless
// the fleet retries failed installs, is not offered that patch again in
// this run.
func (f *Fleet) fail(i int, h *Handset, code, message string) {
	if h.result != ResultFailed {
		f.stats.failed.Add(1)
		if h.result == ResultInstalled {
			f.stats.installed.Add(-1)
		}
	}
	h.result, h.failCode, h.failedPatch = ResultFailed, code, h.offer.PatchID
	h.setPending(stFailed, code, agent.ReportMessage(message))
	h.phase = phaseReport
	if f.cfg.OnResult != nil {
		f.cfg.OnResult(i, h.installs, code)
	}
}

func (f *Fleet) giveUp(h *Handset, op string, err error) {
	if h.result != ResultGaveUp {
		f.stats.gaveUp.Add(1)
		switch h.result {
		case ResultInstalled:
			f.stats.installed.Add(-1)
		case ResultFailed:
			f.stats.failed.Add(-1)
		}
	}
	h.result, h.failCode = ResultGaveUp, op+": "+ErrorKind(err)
	f.lastGiveUp.Store(op + ": " + oneLine(err.Error()))
	f.settle(h)
}

// retryAt is when to retry after err: when the server said (Retry-After),
// else after the fleet's backoff.
func (f *Fleet) retryAt(err error, attempt uint8) time.Time {
	if ra, ok := client.RetryAfter(err); ok {
		return time.Now().Add(ra)
	}
	return time.Now().Add(f.backoff(int(attempt)))
}
