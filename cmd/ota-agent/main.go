// Command ota-agent is the reference update agent for Linux-based
// devices: a daemon over package client/agent that enrolls the device,
// checks in with otad, verifies offers with TUF, downloads them
// resumably, runs an install hook and reports through a durable outbox.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/client/agent"
)

const usage = `ota-agent is the reference update agent for Linux-based devices.

Usage:
  ota-agent --config /etc/ota-agent.json [--once] [--log-format text|json]

It enrolls the device with otad once, checks in as the server asks,
verifies every offer with TUF against the trusted root, downloads it
(resuming after an interruption), runs the install hook, and reports each
step; reports wait in STATE_DIR/outbox until the server acknowledges them.
SIGTERM or SIGINT stops it cleanly; it may also be killed at any moment.

The config file is one JSON object:
  {
    "server": "https://ota.example.com",
    "state_dir": "/var/lib/ota-agent",
    "model": "PX-7", "build": "7.4.2", "channel": "stable", "region": "DE",
    "root": "/etc/ota-agent/1.root.json",
    "install_hook": ["/usr/libexec/ota-install"],
    "hook_timeout": "1h",
    "enrollment_secret_file": "/etc/ota-agent/secret",
    "cloud_messaging": "auto_enabled", "number_encryption": false,
    "allowed_hosts": ["cdn.example.com"]
  }
region, hook_timeout, enrollment_secret(_file), cloud_messaging,
number_encryption, utc_offset_minutes, allowed_hosts and current_image (the
running build's full image, which binary deltas apply to) are optional.

The install hook gets the verified file's path as its last argument and
OTA_FILE, OTA_TARGET, OTA_SHA256, OTA_LENGTH, OTA_PATCH_ID and
OTA_INSTALLS_BUILD in its environment (and, for a maker's incremental
package, OTA_INCREMENTAL_FROM and OTA_INCREMENTAL_FORMAT: print
E_INCREMENTAL_APPLY when it does not apply and the server offers the full
image next). Exit 0 means installed; any other
exit is a failure whose error code is the last line of stdout if it looks
like E_SOME_CODE (else E_INSTALL), and whose message is the last line of
stderr. It may run twice for one update (after a crash): make it
idempotent.

Flags:
`

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1 // the state folder failed
	exitConfig = 2 // bad flags or config file
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("ota-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the config file (JSON, see above)")
	once := fs.Bool("once", false, "stop once nothing is left to do (checked in without an offer, every report acknowledged): for cron or a boot script")
	logFormat := fs.String("log-format", "text", "text or json")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if *cfgPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "ota-agent: give the config file with --config FILE (ota-agent --help shows its keys)")
		return exitConfig
	}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(stderr, nil)
	case "json":
		h = slog.NewJSONHandler(stderr, nil)
	default:
		fmt.Fprintln(stderr, "ota-agent: --log-format: want text or json")
		return exitConfig
	}
	log := slog.New(h)
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, "ota-agent:", err)
		return exitConfig
	}
	var root []byte
	if _, err := os.Stat(cfg.StateDir + "/tuf/root.json"); err != nil {
		// The first start: the configured root becomes the trusted one.
		if root, err = os.ReadFile(cfg.Root); err != nil {
			fmt.Fprintf(stderr, "ota-agent: \"root\": %v (the first start needs the repository's 1.root.json)\n", err)
			return exitConfig
		}
	}
	c, err := client.New(cfg.Server, client.WithUserAgent("ota-agent/1"))
	if err != nil {
		fmt.Fprintln(stderr, "ota-agent: \"server\":", err)
		return exitConfig
	}
	a, err := agent.New(agent.Config{
		Dir: cfg.StateDir, Client: c, Root: root, EnrollmentSecret: cfg.EnrollmentSecret,
		Device: agent.Device{Model: cfg.Model, Build: cfg.Build, Channel: cfg.Channel, Region: cfg.Region,
			CloudMessaging: cfg.CloudMessaging, NumberEncryption: cfg.NumberEncryption, UTCOffsetMinutes: cfg.UTCOffsetMinutes},
		Installer:    &hookInstaller{argv: cfg.InstallHook, timeout: cfg.hookTimeout},
		AllowedHosts: cfg.AllowedHosts, CurrentImage: cfg.CurrentImage,
		Logger: log,
	})
	if err != nil {
		fmt.Fprintln(stderr, "ota-agent:", err)
		return exitFailed
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	st := a.Status()
	log.Info("ota-agent started", "device_id", st.DeviceID, "build", st.Build, "installed_patches", st.InstalledPatches,
		"outbox", st.Outbox, "once", *once)
	if *once {
		err = a.RunUntilIdle(ctx)
	} else {
		err = a.Run(ctx)
	}
	if err != nil {
		log.Error("ota-agent stopped", "error", agent.Describe(err))
		return exitFailed
	}
	log.Info("ota-agent stopped")
	return exitOK
}
