package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// config is the agent's config file. It is JSON, read with the standard
// library: a device image carries no TOML or YAML parser for one file,
// provisioning tools write JSON without a template engine, and unknown
// keys are refused (a misspelt key is an error, not a silent default).
type config struct {
	// Server is the otad URL, https:// in production.
	Server string `json:"server"`
	// StateDir is the folder the agent keeps everything in across
	// reboots (device key, enrollment, trusted root, downloads, outbox).
	StateDir string `json:"state_dir"`
	Model    string `json:"model"`
	Build    string `json:"build"`
	Channel  string `json:"channel"`
	Region   string `json:"region,omitempty"`
	// EnrollmentSecret, or EnrollmentSecretFile naming a file holding it,
	// if the server asks for one.
	EnrollmentSecret     string `json:"enrollment_secret,omitempty"`
	EnrollmentSecretFile string `json:"enrollment_secret_file,omitempty"`
	// Root is the path of the repository's root.json (1.root.json), read
	// on the first start only; the state folder keeps the trusted root
	// after that.
	Root string `json:"root"`
	// InstallHook is the command that installs a verified file: its path
	// is the last argument (see hook.go for the whole contract).
	InstallHook []string `json:"install_hook"`
	// HookTimeout ends a hook that runs longer ("30m"); default 1h.
	HookTimeout string `json:"hook_timeout,omitempty"`
	// CloudMessaging and NumberEncryption are the device's messaging
	// state before any patch: "auto_enabled", "opted_out" or "opted_in".
	CloudMessaging   string `json:"cloud_messaging,omitempty"`
	NumberEncryption bool   `json:"number_encryption,omitempty"`
	UTCOffsetMinutes *int   `json:"utc_offset_minutes,omitempty"`
	// AllowedHosts are hosts (host[:port]) besides the server's that
	// offers may send the agent to: a CDN for /tuf/ and /targets/.
	AllowedHosts []string `json:"allowed_hosts,omitempty"`
	// CurrentImage is the running build's full image, which binary
	// deltas (otactl delta make) apply to: agent.Config.CurrentImage.
	CurrentImage string `json:"current_image,omitempty"`

	hookTimeout time.Duration
}

var (
	regionPattern  = regexp.MustCompile(`^[A-Z]{2}$`)
	channelPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// loadConfig reads and checks the config file.
func loadConfig(name string) (*config, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config file %s: %w (see ota-agent --help for the keys)", name, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: more than one JSON object", name)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	return &c, nil
}

// validate names the key at fault and what it wants.
func (c *config) validate() error {
	if u, err := url.Parse(c.Server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New(`"server": want the otad URL, such as https://ota.example.com`)
	}
	if c.StateDir == "" {
		return errors.New(`"state_dir": want a folder the agent keeps across reboots, such as /var/lib/ota-agent`)
	}
	for _, f := range []struct{ key, v string }{{"model", c.Model}, {"build", c.Build}} {
		if f.v == "" || strings.ContainsAny(f.v, " \t@:/") {
			return fmt.Errorf("%q: want the device's %s, such as %s", f.key, f.key, map[string]string{"model": "PX-7", "build": "7.4.2"}[f.key])
		}
	}
	if !channelPattern.MatchString(c.Channel) {
		return errors.New(`"channel": want a release channel such as stable (lowercase letters, digits, '-')`)
	}
	if c.Region != "" && !regionPattern.MatchString(c.Region) {
		return errors.New(`"region": want an ISO 3166-1 alpha-2 code such as DE, or leave it out`)
	}
	if c.EnrollmentSecret != "" && c.EnrollmentSecretFile != "" {
		return errors.New(`"enrollment_secret" and "enrollment_secret_file": give one of them`)
	}
	if c.EnrollmentSecretFile != "" {
		b, err := os.ReadFile(c.EnrollmentSecretFile)
		if err != nil {
			return fmt.Errorf(`"enrollment_secret_file": %w`, err)
		}
		c.EnrollmentSecret = strings.TrimSpace(string(b))
	}
	if c.Root == "" {
		return errors.New(`"root": want the path of the repository's 1.root.json (fetch it once from SERVER/tuf/1.root.json and check it with your release engineers)`)
	}
	if len(c.InstallHook) == 0 || c.InstallHook[0] == "" {
		return errors.New(`"install_hook": want the command that installs the verified file, such as ["/usr/libexec/ota-install"]`)
	}
	switch c.CloudMessaging {
	case "", "auto_enabled", "opted_out", "opted_in":
	default:
		return errors.New(`"cloud_messaging": want auto_enabled, opted_out or opted_in`)
	}
	c.hookTimeout = time.Hour
	if c.HookTimeout != "" {
		d, err := time.ParseDuration(c.HookTimeout)
		if err != nil || d <= 0 {
			return errors.New(`"hook_timeout": want a duration such as 30m`)
		}
		c.hookTimeout = d
	}
	return nil
}
