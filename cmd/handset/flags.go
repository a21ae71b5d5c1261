package main

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// Config is everything handset reads from flags and the environment.
type Config struct {
	Server           string
	Count            int
	Model            string
	Build            string
	Channel          string
	Region           string
	EnrollmentSecret string

	FailRate  float64
	FailCodes string // comma separated
	// UTCOffsetMinutes, when set, is sent with every check-in: the
	// handsets' time zone, for rollout maintenance windows.
	UTCOffsetMinutes *int

	PollScale       float64
	Duration        time.Duration // > 0: load generator mode
	Concurrency     int
	Timeout         time.Duration
	RequestTimeout  time.Duration
	DownloadTimeout time.Duration
	TUFMaxAge       time.Duration
	Progress        time.Duration

	Root       string // trusted root.json; "" = trust on first use
	StateFile  string
	AllowHosts string // comma separated extra hosts for offers and redirects
	Erase      bool
	JSON       bool
}

func defaultConfig() Config {
	return Config{
		Count:           1,
		Channel:         "stable",
		FailCodes:       "E_INSTALL",
		PollScale:       1,
		Concurrency:     32,
		Timeout:         5 * time.Minute,
		RequestTimeout:  30 * time.Second,
		DownloadTimeout: 5 * time.Minute,
		TUFMaxAge:       30 * time.Second,
		Progress:        10 * time.Second,
	}
}

// Limits that keep one process sane.
const (
	maxCount       = 1_000_000
	maxConcurrency = 10_000
)

func (c *Config) register(fs *envflag.FlagSet) {
	fs.StringEnv(&c.Server, "server", c.Server, "base URL of the otad server, e.g. http://127.0.0.1:8080 (required); the only host contacted", "HANDSET_SERVER")
	fs.IntEnv(&c.Count, "count", c.Count, "number of handsets to simulate", "HANDSET_COUNT")
	fs.StringEnv(&c.Model, "model", c.Model, "device model every handset reports, e.g. PX-7 (required)", "HANDSET_MODEL")
	fs.StringEnv(&c.Build, "build", c.Build, "firmware build every handset starts on, e.g. 7.2.1 (required)", "HANDSET_BUILD")
	fs.StringEnv(&c.Channel, "channel", c.Channel, "update channel", "HANDSET_CHANNEL")
	fs.StringEnv(&c.Region, "region", c.Region, "ISO 3166-1 alpha-2 region, e.g. DE (optional)", "HANDSET_REGION")
	fs.StringEnv(&c.EnrollmentSecret, "enrollment-secret", c.EnrollmentSecret,
		"fleet enrollment secret, when the server requires one; prefer the environment, flags show up in ps", "HANDSET_ENROLLMENT_SECRET")
	fs.Func("utc-offset-minutes", "time zone offset from UTC in minutes (a multiple of 15) each check-in sends,\nfor rollout maintenance windows in local hours; default: none sent (windows read in UTC)", func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < handsets.MinUTCOffsetMinutes || n > handsets.MaxUTCOffsetMinutes || n%15 != 0 {
			return fmt.Errorf("%q: want whole minutes, a multiple of 15 from %d to %d", v, handsets.MinUTCOffsetMinutes, handsets.MaxUTCOffsetMinutes)
		}
		c.UTCOffsetMinutes = &n
		return nil
	})
	fs.Float64Env(&c.FailRate, "fail-rate", c.FailRate, "probability (0 to 1) that an install fails after a verified download", "HANDSET_FAIL_RATE")
	fs.StringEnv(&c.FailCodes, "fail-codes", c.FailCodes, "comma-separated error codes a failed install reports, picked at random", "HANDSET_FAIL_CODES")
	fs.Float64Env(&c.PollScale, "poll-scale", c.PollScale,
		"multiplies the server's poll_after_seconds and the handsets' own backoff, e.g. 0.001 so a demo does not wait an hour", "HANDSET_POLL_SCALE")
	fs.DurationEnv(&c.Duration, "duration", c.Duration,
		"load generator mode: after enrolling, check in as fast as --concurrency allows for this long and print throughput and latency", "HANDSET_DURATION")
	fs.IntEnv(&c.Concurrency, "concurrency", c.Concurrency, "most requests in flight at once, over all handsets", "HANDSET_CONCURRENCY")
	fs.DurationEnv(&c.Timeout, "timeout", c.Timeout,
		"give up when the handsets have not all installed or failed by then (and bounds enrollment in load mode)", "HANDSET_TIMEOUT")
	fs.DurationEnv(&c.RequestTimeout, "request-timeout", c.RequestTimeout, "time limit of one API request", "HANDSET_REQUEST_TIMEOUT")
	fs.DurationEnv(&c.DownloadTimeout, "download-timeout", c.DownloadTimeout, "time limit of one TUF metadata or artifact download", "HANDSET_DOWNLOAD_TIMEOUT")
	fs.DurationEnv(&c.TUFMaxAge, "tuf-max-age", c.TUFMaxAge,
		"how long handsets share one refreshed TUF view before the next offer refreshes it", "HANDSET_TUF_MAX_AGE")
	fs.DurationEnv(&c.Progress, "progress", c.Progress, "print a progress line to stderr this often; 0 turns it off", "HANDSET_PROGRESS")
	fs.StringEnv(&c.Root, "root", c.Root,
		"trusted TUF root.json, as shipped in firmware; without it root v1 is fetched from the server once (trust on first use)", "HANDSET_ROOT")
	fs.StringEnv(&c.StateFile, "state-file", c.StateFile,
		"keeps the handsets' device keys and state (mode 0600) so that a re-run re-enrolls the same devices", "HANDSET_STATE_FILE")
	fs.StringEnv(&c.AllowHosts, "allow-hosts", c.AllowHosts,
		"comma-separated host[:port]s besides --server that offers and redirects may point at (a CDN, presigned storage)", "HANDSET_ALLOW_HOSTS")
	fs.BoolEnv(&c.Erase, "erase", c.Erase, "at the end, erase every simulated device from the server (DELETE /api/v1/devices/self)", "HANDSET_ERASE")
	fs.BoolEnv(&c.JSON, "json", c.JSON, "print the result as one JSON object", "HANDSET_JSON")
}

// Validate checks the settings, naming the one that is wrong.
func (c *Config) Validate() error {
	u, err := url.Parse(c.Server)
	switch {
	case c.Server == "":
		return settingError("server", errors.New("required, e.g. http://127.0.0.1:8080"))
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "":
		return settingError("server", fmt.Errorf("%q: want http(s)://host[:port][/path]", c.Server))
	case c.Count < 1 || c.Count > maxCount:
		return settingError("count", fmt.Errorf("%d: want 1 to %d", c.Count, maxCount))
	case c.Model == "":
		return settingError("model", errors.New("required, e.g. PX-7"))
	case c.Build == "":
		return settingError("build", errors.New("required, e.g. 7.2.1"))
	}
	// The server's own rules: refusing here gives one clear line instead
	// of N enrollment errors.
	if fe := new(errs.FieldError); errors.As(handsets.ValidateDeviceInfo(c.Model, c.Build, c.Channel, c.Region), &fe) {
		return settingError(fe.Field, errors.New(fe.Message))
	}
	switch {
	case !(c.FailRate >= 0 && c.FailRate <= 1):
		return settingError("fail-rate", fmt.Errorf("%v: want 0 to 1", c.FailRate))
	case !(c.PollScale > 0 && c.PollScale <= 1000):
		return settingError("poll-scale", fmt.Errorf("%v: want more than 0, at most 1000", c.PollScale))
	case c.Duration < 0:
		return settingError("duration", fmt.Errorf("%v: must not be negative", c.Duration))
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return settingError("concurrency", fmt.Errorf("%d: want 1 to %d", c.Concurrency, maxConcurrency))
	case c.Progress < 0:
		return settingError("progress", fmt.Errorf("%v: must not be negative", c.Progress))
	}
	for name, d := range map[string]time.Duration{"timeout": c.Timeout, "request-timeout": c.RequestTimeout,
		"download-timeout": c.DownloadTimeout, "tuf-max-age": c.TUFMaxAge} {
		if d <= 0 {
			return settingError(name, fmt.Errorf("%v: must be positive", d))
		}
	}
	codes := c.failCodes()
	if len(codes) == 0 {
		return settingError("fail-codes", errors.New("want at least one code, e.g. E_DISK_FULL"))
	}
	for _, code := range codes {
		if fe := new(errs.FieldError); errors.As(handsets.ValidateErrorCode(code), &fe) {
			return settingError("fail-codes", fmt.Errorf("%q: %s", code, fe.Message))
		}
	}
	for _, h := range splitList(c.AllowHosts) {
		if strings.ContainsAny(h, "/?#@ ") {
			return settingError("allow-hosts", fmt.Errorf("%q: want host or host:port", h))
		}
	}
	return nil
}

func (c *Config) failCodes() []string { return splitList(c.FailCodes) }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// envName is the environment variable of a flag: --fail-rate is
// HANDSET_FAIL_RATE.
func envName(flag string) string {
	return "HANDSET_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func settingError(flag string, err error) error {
	return &envflag.Error{Flag: flag, Env: envName(flag), Err: err}
}

// parseFlags applies the environment, then the command line; handset
// takes no positional arguments.
func parseFlags(fs *envflag.FlagSet, args []string, getenv func(string) string) error {
	if err := fs.ParseEnv(args, getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: handset takes flags only", fs.Arg(0))
	}
	return nil
}
