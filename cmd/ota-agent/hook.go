package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/patchfleet/ota/client/agent"
	"github.com/patchfleet/ota/manifests"
)

// hookInstaller runs the install hook, the device's own installer. Its
// contract:
//
//   - argv: the configured command, then the verified file's path;
//   - env: OTA_FILE (the path again), OTA_TARGET, OTA_SHA256, OTA_LENGTH,
//     OTA_PATCH_ID, OTA_INSTALLS_BUILD, beside the agent's environment,
//     and for a maker's incremental package OTA_INCREMENTAL_FROM (its
//     starting build) and OTA_INCREMENTAL_FORMAT ("package");
//   - exit 0: installed. Any other exit: failed; the last line of
//     stdout, if it is an upper snake case code starting with E_
//     (E_DISK_FULL), is the report's error code, else E_INSTALL; the
//     last line of stderr is the report's message;
//   - it may run again with the same file after the agent was killed
//     during an install, so it must be idempotent;
//   - it is not killed when the agent is asked to stop (an interrupted
//     install is worse than a late stop), only after hook_timeout.
type hookInstaller struct {
	argv    []string
	timeout time.Duration
}

var codeLine = regexp.MustCompile(`^E_[A-Z0-9]+(?:_[A-Z0-9]+)*$`)

func (h *hookInstaller) Install(ctx context.Context, u *agent.Update) error {
	args := append(append([]string{}, h.argv[1:]...), u.Path)
	cmd := exec.Command(h.argv[0], args...)
	cmd.Env = append(os.Environ(),
		"OTA_FILE="+u.Path,
		"OTA_TARGET="+u.Target,
		"OTA_SHA256="+u.SHA256,
		"OTA_LENGTH="+strconv.FormatInt(u.Length, 10),
		"OTA_PATCH_ID="+u.PatchID,
		"OTA_INSTALLS_BUILD="+u.Custom.InstallsBuild,
	)
	if inc := u.Incremental; inc != nil && inc.Format == manifests.FormatPackage {
		// The maker's incremental package: the hook applies it, and
		// prints E_INCREMENTAL_APPLY when it does not apply, so that
		// the server offers the full image next.
		cmd.Env = append(cmd.Env, "OTA_INCREMENTAL_FROM="+inc.FromBuild, "OTA_INCREMENTAL_FORMAT="+inc.Format)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Its own process group: a SIGTERM to the agent's group (systemd's
	// stop, a terminal's ^C) does not reach the installer.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return &agent.InstallError{Code: "E_INSTALL_HOOK", Err: fmt.Errorf("install hook %s: %w", h.argv[0], err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(h.timeout)
	defer timer.Stop()
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return &agent.InstallError{Code: "E_INSTALL_TIMEOUT", Err: fmt.Errorf("install hook ran longer than %v", h.timeout)}
	}
	if err == nil {
		return nil
	}
	code := "E_INSTALL"
	if l := lastLine(stdout.Bytes()); codeLine.MatchString(l) && len(l) <= 48 {
		code = l
	}
	msg := lastLine(stderr.Bytes())
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if msg == "" {
			msg = "install hook exited with " + strconv.Itoa(ee.ExitCode())
		}
		return &agent.InstallError{Code: code, Err: errors.New(msg)}
	}
	return &agent.InstallError{Code: code, Err: err}
}

// lastLine is the last non-empty line of b, at most 256 bytes.
func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 256 {
		l = l[:256]
	}
	return l
}
