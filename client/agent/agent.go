// Package agent is the update agent of a handset or device: the logic a
// handset team embeds rather than rewrites. Given a state folder, a
// trusted TUF root, the device's identity and an Installer, it enrolls
// once, checks in, verifies every offer with go-tuf against the trusted
// root, downloads the update resumably, has the Installer install it,
// and reports each step through a durable outbox.
//
// To embed it, build a client.Client for the server, fill a Config and
// call Run in a goroutine of its own; cancel its context to stop it. All
// its state is in Config.Dir, one folder the device keeps across reboots:
//
//	device.key        the device's ed25519 key, made on the first start
//	state.json        enrollment (device id, token), installed patches and
//	                  build, the update in progress
//	tuf/root.json     the trusted root: Config.Root on the first start,
//	                  then whatever go-tuf verified after it
//	download/         verified updates, and the partial one (.part)
//	outbox/           reports not yet acknowledged, one file each
//
// A process may be killed at any point: a download resumes where it
// stopped, a report made is sent until the server acknowledges it, and
// the server counts a resent report once.
//
// For gomobile: the Installer and Device use plain strings and ints, and
// Run blocks; a Java or Swift caller wraps Run behind a start/stop pair of
// its own, as gomobile cannot pass a context.
package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// Device is who the agent enrolls and checks in as. Nothing in it names a
// person or a SIM: the server refuses IMEIs, IMSIs and phone numbers.
type Device struct {
	Model, Build, Channel string
	// Region, optional, is an ISO 3166-1 alpha-2 code such as "DE".
	Region string
	// CloudMessaging is the messaging state before any patch:
	// "auto_enabled" (the default), "opted_out" or "opted_in". A patch
	// whose signed metadata makes messaging opt-in turns auto_enabled into
	// opted_out.
	CloudMessaging string
	// NumberEncryption is whether phone numbers are encrypted before any
	// patch.
	NumberEncryption bool
	// UTCOffsetMinutes, optional, lets rollouts keep to a maintenance
	// window in local hours.
	UTCOffsetMinutes *int
}

// Update is a verified update for the Installer.
type Update struct {
	// Path is the verified file; the agent keeps it until the install
	// ended, then removes it.
	Path      string
	Target    string
	Length    int64
	SHA256    string
	PatchID   string
	RolloutID string
	// Custom is the target's custom metadata as the release engineers
	// signed it.
	Custom manifests.TargetCustom
	// Incremental is set when the offer was an incremental payload. For
	// manifests.FormatPackage, Path is the maker's incremental package,
	// which the Installer applies (an InstallError with
	// CodeIncrementalApply when it does not apply: the server offers the
	// full image next). For manifests.FormatZstdPatch the agent applied
	// the delta already: Path, Target, Length and SHA256 are the full
	// image's, checked against its signed hash.
	Incremental *manifests.Incremental
	// Urgent says the rollout's deadline had passed when the update was
	// offered: the installer should install now, without waiting for a
	// maintenance window of its own (the server offered it outside the
	// rollout's window too). It comes from the offer, which the server
	// wrote, not from the signed metadata: it can hasten an install,
	// never change what is installed.
	Urgent bool
}

// Installer installs verified updates. Install must be idempotent: when
// the agent is killed while Install runs, it calls Install again with
// the same update after the restart.
type Installer interface {
	// Install installs u and returns nil, or an error; wrap it in an
	// *InstallError to report a code such as CodeSpace, else it is
	// reported as CodeInstall.
	Install(ctx context.Context, u *Update) error
}

// InstallerFunc is an Installer that is a function.
type InstallerFunc func(ctx context.Context, u *Update) error

// Install calls f.
func (f InstallerFunc) Install(ctx context.Context, u *Update) error { return f(ctx, u) }

// InstallError is an install failure with the code the server's reports
// carry: upper snake case, such as E_DISK_FULL.
type InstallError struct {
	Code string
	Err  error
}

func (e *InstallError) Error() string {
	if e.Err == nil {
		return e.Code
	}
	return e.Code + ": " + e.Err.Error()
}
func (e *InstallError) Unwrap() error { return e.Err }

// Config is what an Agent needs.
type Config struct {
	// Dir is the state folder, created if missing.
	Dir string
	// Client calls the server; the agent adds the device's token.
	Client *client.Client
	// Root is the trusted root.json for the first start; later starts
	// use the one in Dir and ignore Root.
	Root []byte
	// Device is the device's identity and state.
	Device Device
	// EnrollmentSecret is the fleet's, if the server asks for one.
	EnrollmentSecret string
	// Installer installs verified updates.
	Installer Installer
	// CurrentImage, optional, is the path of the running build's full
	// image: what a binary delta (manifests.FormatZstdPatch) is applied
	// to. Without it such an offer fails with CodeIncrementalApply and
	// the server offers the full image next.
	CurrentImage string
	// AllowedHosts are host[:port]s besides the server's that offers may
	// name for metadata and files (a CDN).
	AllowedHosts []string
	// Now is the clock (default time.Now); reports carry its time.
	Now func() time.Time
	// Backoff is the wait after the n-th failure in a row (n from 1);
	// default: 1s doubling to 5 minutes, with jitter. A server's
	// Retry-After wins over it.
	Backoff func(n int) time.Duration
	// TUFTimeout bounds each metadata request (default 30s).
	TUFTimeout time.Duration
	// DownloadIdleTimeout ends a download that receives nothing for this
	// long (default DefaultIdleTimeout); the next step resumes it. The
	// download as a whole has no time limit: a large update over a slow
	// link takes what it takes.
	DownloadIdleTimeout time.Duration
	// Logger gets the agent's log; default slog.Default().
	Logger *slog.Logger
}

// Limits of the agent's waits.
const (
	// MinPoll keeps a server answering poll_after_seconds 0 from being
	// polled in a tight loop; the first check-in after an enrollment or
	// an install is immediate.
	MinPoll = time.Second
	// MaxPoll caps the wait between check-ins.
	MaxPoll = 24 * time.Hour
	// MaxFetchAttempts is how many failed attempts at fetching an offer
	// in a row, none of which received a byte, end it as failed with
	// CodeDownload: a download that moves on, however slowly, is never
	// given up.
	MaxFetchAttempts = 5
)

// Agent is one device's update agent. Its methods must not be called
// concurrently.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	key    ed25519.PrivateKey
	st     state
	outbox *Outbox
	// failures counts failed steps in a row, for the backoff.
	failures int
	// idle is true when the last step checked in without an offer and
	// left nothing to do (Idle).
	idle bool
}

// state is state.json.
type state struct {
	DeviceID string `json:"device_id,omitempty"`
	Token    string `json:"token,omitempty"`
	// Build is what the device runs after an install; "" is Device.Build.
	Build            string   `json:"build,omitempty"`
	InstalledPatches []string `json:"installed_patches,omitempty"`
	CloudMessaging   string   `json:"cloud_messaging,omitempty"`
	NumberEncryption *bool    `json:"number_encryption,omitempty"`
	Job              *job     `json:"job,omitempty"`
}

// job is the update in progress.
type job struct {
	// ID makes the job's report ids: a step repeated after a crash
	// queues the same report, which the outbox and server keep once.
	ID    string           `json:"id"`
	Offer wire.OfferAnswer `json:"offer"`
	// Stage is stageFetch or stageInstall.
	Stage    string                  `json:"stage"`
	Attempts int                     `json:"attempts,omitempty"`
	Verified *manifests.TargetCustom `json:"verified_custom,omitempty"`
	// SHA256 is the signed sha256 (hex) once verified: it names the
	// file in download/, never the offer's copy, which the server wrote.
	SHA256 string `json:"sha256,omitempty"`
	// Full is the signed full image an incremental payload stands for.
	Full *fullImage `json:"full,omitempty"`
}

// fullImage is a release's full image as its signed metadata states it.
type fullImage struct {
	Target string `json:"target"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
}

const (
	stageFetch   = "fetch"
	stageInstall = "install"
)

// New opens (or, on the first start, creates) the agent's state in
// cfg.Dir.
func New(cfg Config) (*Agent, error) {
	if cfg.Dir == "" || cfg.Client == nil || cfg.Installer == nil {
		return nil, errors.New("agent: Dir, Client and Installer are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.TUFTimeout <= 0 {
		cfg.TUFTimeout = 30 * time.Second
	}
	if cfg.Device.CloudMessaging == "" {
		cfg.Device.CloudMessaging = "auto_enabled"
	}
	a := &Agent{cfg: cfg, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.Default()
	}
	for _, d := range []string{cfg.Dir, a.tufDir(), a.downloadDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state folder: %w", err)
		}
	}
	if err := a.loadKey(); err != nil {
		return nil, err
	}
	if err := a.loadRoot(); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(a.statePath())
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &a.st); err != nil {
			return nil, fmt.Errorf("%s: %w (remove it to enroll again)", a.statePath(), err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("state: %w", err)
	}
	if a.outbox, err = OpenOutbox(filepath.Join(cfg.Dir, "outbox")); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) statePath() string   { return filepath.Join(a.cfg.Dir, "state.json") }
func (a *Agent) tufDir() string      { return filepath.Join(a.cfg.Dir, "tuf") }
func (a *Agent) downloadDir() string { return filepath.Join(a.cfg.Dir, "download") }

// loadKey reads the device key, making it on the first start.
func (a *Agent) loadKey() error {
	name := filepath.Join(a.cfg.Dir, "device.key")
	data, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		rand.Read(seed)
		if err := writeFileAtomic(name, []byte(hex.EncodeToString(seed)+"\n"), 0o600); err != nil {
			return fmt.Errorf("device key: %w", err)
		}
		a.key = ed25519.NewKeyFromSeed(seed)
		return nil
	}
	if err != nil {
		return fmt.Errorf("device key: %w", err)
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return fmt.Errorf("device key %s is not a hex ed25519 seed; remove it to make a new device (which enrolls as a new device)", name)
	}
	a.key = ed25519.NewKeyFromSeed(seed)
	return nil
}

// loadRoot installs Config.Root as the trusted root on the first start.
func (a *Agent) loadRoot() error {
	name := filepath.Join(a.tufDir(), "root.json")
	if _, err := os.Stat(name); err == nil {
		return nil
	}
	if len(a.cfg.Root) == 0 {
		return errors.New("no trusted root: give the repository's root.json (1.root.json) for the first start")
	}
	var probe struct {
		Signed struct {
			Type string `json:"_type"`
		} `json:"signed"`
	}
	if json.Unmarshal(a.cfg.Root, &probe) != nil || probe.Signed.Type != "root" {
		return errors.New("the trusted root is not a TUF root.json")
	}
	return writeFileAtomic(name, a.cfg.Root, 0o600)
}

func (a *Agent) trustedRoot() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(a.tufDir(), "root.json"))
	if err != nil {
		return nil, fmt.Errorf("trusted root: %w", err)
	}
	return b, nil
}

func (a *Agent) save() error {
	data, err := json.MarshalIndent(&a.st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(a.statePath(), data, 0o600)
}

// Status is what the agent knows of its device.
type Status struct {
	DeviceID         string
	Build            string
	InstalledPatches []string
	// Updating names the patch being fetched or installed, or "".
	Updating string
	// Outbox is how many reports wait for the server's acknowledgment.
	Outbox int
}

// Status returns the device's current state.
func (a *Agent) Status() Status {
	s := Status{DeviceID: a.st.DeviceID, Build: a.build(), InstalledPatches: slices.Clone(a.st.InstalledPatches)}
	if a.st.Job != nil {
		s.Updating = a.st.Job.Offer.PatchID
	}
	s.Outbox, _ = a.outbox.Len()
	return s
}

// Idle reports whether the last step left nothing to do until the next
// check-in: checked in without an offer, no update in progress, every
// report acknowledged.
func (a *Agent) Idle() bool { return a.idle }

func (a *Agent) build() string {
	if a.st.Build != "" {
		return a.st.Build
	}
	return a.cfg.Device.Build
}

// Run runs the agent until ctx ends, and returns nil then; it returns an
// error only for a state folder it cannot use.
func (a *Agent) Run(ctx context.Context) error { return a.run(ctx, false) }

// RunUntilIdle is Run that also returns once a step leaves nothing to do
// until the next check-in (Idle): one pass from a cron job or a boot
// script, the offer of that check-in installed and reported.
func (a *Agent) RunUntilIdle(ctx context.Context) error { return a.run(ctx, true) }

func (a *Agent) run(ctx context.Context, untilIdle bool) error {
	for {
		wait, err := a.Step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var se *StateError
			if errors.As(err, &se) {
				return err
			}
			a.log.Warn("update agent step failed", "error", Describe(err), "retry_in", wait.Round(time.Millisecond).String())
		} else if untilIdle && a.Idle() {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// StateError is a failure to read or write the state folder: the agent
// cannot go on without it.
type StateError struct{ Err error }

func (e *StateError) Error() string { return "state folder: " + e.Err.Error() }
func (e *StateError) Unwrap() error { return e.Err }

// Step does what is due: send the outbox, enroll, go on with the update
// in progress, or check in. It returns how long to wait before the next
// step, and the error of a step that failed (the wait is then the
// backoff, or the server's Retry-After).
func (a *Agent) Step(ctx context.Context) (time.Duration, error) {
	a.idle = false
	wait, err := a.step(ctx)
	if err != nil {
		a.failures++
		if ra, ok := client.RetryAfter(err); ok {
			wait = ra
		} else if wait == 0 {
			wait = a.cfg.Backoff(a.failures)
		}
		return wait, err
	}
	a.failures = 0
	return wait, nil
}

func (a *Agent) step(ctx context.Context) (time.Duration, error) {
	if a.st.Token == "" {
		if err := a.enroll(ctx); err != nil {
			return 0, err
		}
	}
	if err := a.flush(ctx); err != nil {
		return 0, err
	}
	if a.st.Job != nil {
		return a.runJob(ctx)
	}
	return a.checkIn(ctx)
}

func (a *Agent) api() *client.Client { return a.cfg.Client.WithToken(a.st.Token) }

func (a *Agent) enroll(ctx context.Context) error {
	d := a.cfg.Device
	// Enrollment states the build the device runs now.
	ans, created, err := a.cfg.Client.Enroll(ctx, a.key, wire.EnrollBody{Model: d.Model, Build: a.build(), Channel: d.Channel,
		Region: d.Region, EnrollmentSecret: a.cfg.EnrollmentSecret})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	a.st.DeviceID, a.st.Token = ans.DeviceID, ans.Token
	if err := a.save(); err != nil {
		return &StateError{err}
	}
	a.log.Info("enrolled", "device_id", ans.DeviceID, "new", created)
	return nil
}

// unauthorized handles a 401: the token is gone (the device was erased,
// or the server's database replaced); the next step enrolls again.
func (a *Agent) unauthorized(err error) {
	if e := client.AsError(err); e != nil && e.Status == http.StatusUnauthorized {
		a.st.Token = ""
		if serr := a.save(); serr != nil {
			a.log.Error("saving state", "error", serr)
		}
	}
}

func (a *Agent) flush(ctx context.Context) error {
	sent, err := a.outbox.Flush(ctx, a.api().Report, func(e Entry, err error) {
		a.log.Warn("report refused by the server, dropped", "report_id", e.Report.ReportID, "state", e.Report.State, "error", Describe(err))
	})
	if sent > 0 {
		a.log.Info("reports acknowledged", "count", sent)
	}
	if err != nil {
		a.unauthorized(err)
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

func (a *Agent) checkIn(ctx context.Context) (time.Duration, error) {
	msg, enc := a.cfg.Device.CloudMessaging, a.cfg.Device.NumberEncryption
	if a.st.CloudMessaging != "" {
		msg = a.st.CloudMessaging
	}
	if a.st.NumberEncryption != nil {
		enc = *a.st.NumberEncryption
	}
	ans, err := a.api().CheckIn(ctx, wire.CheckInBody{Build: a.build(), Model: a.cfg.Device.Model, Channel: a.cfg.Device.Channel,
		InstalledPatches: a.st.InstalledPatches, CloudMessaging: msg, NumberEncryption: &enc,
		UTCOffsetMinutes: a.cfg.Device.UTCOffsetMinutes})
	if err != nil {
		a.unauthorized(err)
		return 0, fmt.Errorf("check in: %w", err)
	}
	poll := min(max(time.Duration(ans.PollAfterSeconds)*time.Second, MinPoll), MaxPoll)
	o := ans.Offer
	if o != nil && (o.PatchID == "" || o.Target == "" || o.Length <= 0) {
		a.log.Warn("offer without a patch, target or length ignored")
		o = nil
	}
	if o == nil || slices.Contains(a.st.InstalledPatches, o.PatchID) {
		if ans.NoOffer != "" {
			a.log.Debug("no offer", "reason", ans.NoOffer)
		}
		a.idle = true
		return poll, nil
	}
	id := make([]byte, 16)
	rand.Read(id)
	a.st.Job = &job{ID: hex.EncodeToString(id), Offer: *o, Stage: stageFetch}
	if err := a.queue("downloading", "", ""); err != nil {
		return 0, err
	}
	if err := a.save(); err != nil {
		return 0, &StateError{err}
	}
	a.log.Info("update offered", "patch_id", o.PatchID, "target", o.Target, "length", o.Length)
	return 0, nil
}

// queue stores the job's report of state in the outbox. Its id derives
// from the job and the state, so queueing it again after a crash is the
// same report.
func (a *Agent) queue(state, code, message string) error {
	j := a.st.Job
	sum := sha256.Sum256([]byte(j.ID + "/" + state))
	id := sum[:16]
	id[6] = id[6]&0x0f | 0x80 // a UUID of version 8 (made by the application)
	id[8] = id[8]&0x3f | 0x80
	h := hex.EncodeToString(id)
	b := wire.ReportBody{ReportID: h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:],
		PatchID: j.Offer.PatchID, RolloutID: j.Offer.RolloutID, Target: j.Offer.Target, State: state,
		ErrorCode: code, Message: ReportMessage(message)}
	at := a.cfg.Now().UTC()
	b.At = &at
	if err := a.outbox.Add(b); err != nil {
		return &StateError{err}
	}
	return nil
}

func (a *Agent) runJob(ctx context.Context) (time.Duration, error) {
	j := a.st.Job
	o := j.Offer
	if j.Stage == stageFetch {
		v, res, err := a.fetch(ctx, o)
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			var f *failure
			if !errors.As(err, &f) {
				f = classify("fetch", err)
			}
			if f.transient {
				if res.Received > 0 {
					j.Attempts = 0 // bytes came: the link works, slowly or in pieces
				}
				j.Attempts++
				if j.Attempts < MaxFetchAttempts {
					if err := a.save(); err != nil {
						return 0, &StateError{err}
					}
					return 0, err
				}
			}
			return a.finish(f.code, Describe(f.err))
		}
		a.log.Info("update verified", "patch_id", o.PatchID, "resumed_at", res.ResumedAt, "received", res.Received,
			"restarted", res.Restarted)
		j.Stage, j.Verified, j.SHA256, j.Attempts = stageInstall, &v.custom, v.sha256, 0
		if f := v.full; f != nil {
			j.Full = &fullImage{Target: f.Path, Length: f.Length, SHA256: f.SHA256}
		}
		for _, s := range []string{"downloaded", "verified", "installing"} {
			if err := a.queue(s, "", ""); err != nil {
				return 0, err
			}
		}
		if err := a.save(); err != nil {
			return 0, &StateError{err}
		}
		// Before installing, the server hears that the device is about
		// to: a device that then goes silent is counted as such.
		if err := a.flush(ctx); err != nil {
			a.log.Warn("reports not sent before installing; they stay in the outbox", "error", Describe(err))
		}
	}
	dst := a.downloadPath(j.SHA256)
	if ok, err := fileMatches(dst, o.Length, j.SHA256); j.SHA256 == "" || err != nil || !ok {
		// The verified file is gone (removed by hand?): fetch it again.
		j.Stage = stageFetch
		if err := a.save(); err != nil {
			return 0, &StateError{err}
		}
		return 0, nil
	}
	u := &Update{Path: dst, Target: o.Target, Length: o.Length, SHA256: j.SHA256, PatchID: o.PatchID,
		RolloutID: o.RolloutID, Custom: *j.Verified, Incremental: j.Verified.Incremental, Urgent: o.Urgent}
	if deltaFormat(j.Verified) {
		if j.Full == nil {
			return a.finish(CodeIncrementalApply, "the job has no signed full image to check the delta's result against")
		}
		full := a.downloadPath(j.Full.SHA256)
		if ok, _ := fileMatches(full, j.Full.Length, j.Full.SHA256); !ok {
			err := ApplyDelta(a.cfg.CurrentImage, dst, full, &Target{Length: j.Full.Length, SHA256: j.Full.SHA256})
			if err != nil {
				return a.finish(Code(err), Describe(err))
			}
		}
		u.Path, u.Target, u.Length, u.SHA256 = full, j.Full.Target, j.Full.Length, j.Full.SHA256
	}
	err := a.cfg.Installer.Install(ctx, u)
	if err != nil && ctx.Err() != nil {
		// Stopped while installing: install again after the restart. An
		// install that ended well despite the stop is recorded below.
		return 0, ctx.Err()
	}
	if err != nil {
		code := CodeInstall
		var ie *InstallError
		if errors.As(err, &ie) && ie.Code != "" {
			code = ie.Code
		}
		return a.finish(code, Describe(err))
	}
	c := j.Verified
	if !slices.Contains(a.st.InstalledPatches, o.PatchID) {
		a.st.InstalledPatches = append(a.st.InstalledPatches, o.PatchID)
		slices.Sort(a.st.InstalledPatches)
	}
	if c.InstallsBuild != "" {
		a.st.Build = c.InstallsBuild
	}
	msg := a.cfg.Device.CloudMessaging
	if a.st.CloudMessaging != "" {
		msg = a.st.CloudMessaging
	}
	if c.CloudMessagingDefault == "opt-in" && msg == "auto_enabled" {
		a.st.CloudMessaging = "opted_out"
	}
	if c.NumberEncryption == "on" {
		on := true
		a.st.NumberEncryption = &on
	}
	a.log.Info("update installed", "patch_id", o.PatchID, "build", a.build())
	return a.finish("", "")
}

// finish ends the job: installed when code is "", else failed with code.
// The next check-in is at once, so that the server learns the new state.
func (a *Agent) finish(code, message string) (time.Duration, error) {
	j := a.st.Job
	state := "installed"
	if code != "" {
		state = "failed"
		a.log.Warn("update failed", "patch_id", j.Offer.PatchID, "code", code, "error", message)
	}
	if err := a.queue(state, code, message); err != nil {
		return 0, err
	}
	a.st.Job = nil
	if err := a.save(); err != nil {
		return 0, &StateError{err}
	}
	if j.SHA256 != "" {
		os.Remove(a.downloadPath(j.SHA256))
	}
	if j.Full != nil {
		os.Remove(a.downloadPath(j.Full.SHA256))
	}
	return 0, nil
}

// downloadPath is where the file of signed sha256 sum goes. sum is the
// hex of a hash go-tuf verified, so it names a file inside download/.
func (a *Agent) downloadPath(sum string) string {
	return filepath.Join(a.downloadDir(), sum)
}

// fetch verifies the offer through TUF and downloads its file to dst.
func (a *Agent) fetch(ctx context.Context, o wire.OfferAnswer) (*verified, DownloadResult, error) {
	v, err := a.verifyOffer(ctx, o, a.build())
	if err != nil {
		return nil, DownloadResult{}, err
	}
	t := &Target{URL: v.url, Length: v.length, SHA256: v.sha256}
	res, err := t.Fetch(ctx, a.downloadPath(v.sha256), FetchOptions{Client: a.cfg.Client.HTTPClient(),
		IdleTimeout: a.cfg.DownloadIdleTimeout})
	if err != nil {
		return nil, res, err
	}
	return v, res, nil
}

// DefaultBackoff is 1s doubling to 5 minutes, with jitter so that a
// fleet back from an outage does not retry in lockstep.
func DefaultBackoff(n int) time.Duration {
	d := min(time.Second<<min(max(n-1, 0), 16), 5*time.Minute)
	return d/2 + mrand.N(d/2+1)
}

// ReportMessage fits a message into what the server accepts of a
// report's message: one line of at most 256 bytes, cut on a character.
func ReportMessage(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= 256 {
		return s
	}
	s = s[:253]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}
