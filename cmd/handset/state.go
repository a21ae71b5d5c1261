package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/server/handsets"
)

// stateFile is what --state-file keeps between runs: each handset's device
// key (so it re-enrolls as the same device) and what it runs. It holds
// private keys: it is written with mode 0600.
type stateFile struct {
	Version int           `json:"version"`
	Server  string        `json:"server,omitempty"`
	Devices []stateDevice `json:"devices"`
}

type stateDevice struct {
	Key              string   `json:"key"` // hex ed25519 seed
	DeviceID         string   `json:"device_id,omitempty"`
	InstalledPatches []string `json:"installed_patches"`
	// Build is the build an installed release moved the handset to;
	// absent, the run's --build.
	Build            string `json:"build,omitempty"`
	CloudMessaging   string `json:"cloud_messaging"`
	NumberEncryption bool   `json:"number_encryption"`
}

const (
	stateVersion = 1
	maxStateFile = 512 << 20
)

// loadDevices returns cfg.Count handsets: those of the state file first,
// new ones after. extra holds the file's handsets beyond the count,
// written back untouched. fresh reports whether any key was generated.
func loadDevices(path string, cfg Config) (devs []handsetsim.Handset, extra []stateDevice, fresh bool, err error) {
	count := cfg.Count
	var sf stateFile
	if path != "" {
		f, err := os.Open(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, nil, false, settingError("state-file", unwrapPathError(err))
		default:
			data, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
			f.Close()
			if err != nil {
				return nil, nil, false, settingError("state-file", err)
			}
			if len(data) > maxStateFile {
				return nil, nil, false, settingError("state-file", fmt.Errorf("%s: larger than %d bytes", path, maxStateFile))
			}
			if err := json.Unmarshal(data, &sf); err != nil {
				return nil, nil, false, settingError("state-file", fmt.Errorf("%s: %w", path, err))
			}
			if sf.Version != stateVersion {
				return nil, nil, false, settingError("state-file", fmt.Errorf("%s: version %d, want %d", path, sf.Version, stateVersion))
			}
		}
	}
	devs = make([]handsetsim.Handset, count)
	for i := range devs {
		devs[i] = handsetsim.NewHandset(cfg.Model, cfg.Build, cfg.Channel, cfg.Region)
		devs[i].UTCOffsetMinutes = cfg.UTCOffsetMinutes
		if i >= len(sf.Devices) {
			fresh = true
			continue
		}
		if err := sf.Devices[i].apply(&devs[i]); err != nil {
			return nil, nil, false, settingError("state-file", fmt.Errorf("%s: device %d: %w", path, i+1, err))
		}
	}
	if len(sf.Devices) > count {
		extra = sf.Devices[count:]
	}
	return devs, extra, fresh, nil
}

// apply sets handset h to what the file says of it.
func (sd *stateDevice) apply(h *handsetsim.Handset) error {
	seed, err := hex.DecodeString(sd.Key)
	if err != nil || len(seed) != len(h.Seed) {
		return errors.New("key: want 64 hex digits (an ed25519 seed)")
	}
	copy(h.Seed[:], seed)
	switch sd.CloudMessaging {
	case handsets.MessagingAutoEnabled, handsets.MessagingOptedOut, handsets.MessagingOptedIn:
	default:
		return fmt.Errorf("cloud_messaging %q: want opted_in, opted_out or auto_enabled", sd.CloudMessaging)
	}
	for _, p := range sd.InstalledPatches {
		if handsets.ValidatePatchID("installed_patches", p) != nil {
			return fmt.Errorf("installed_patches: %q is not a patch id", p)
		}
	}
	if len(sd.InstalledPatches) > 0 {
		h.Installed = slices.Compact(slices.Sorted(slices.Values(sd.InstalledPatches)))
	}
	if sd.Build != "" {
		if handsets.ValidateDeviceInfo("m", sd.Build, "stable", "") != nil {
			return fmt.Errorf("build %q: not a build", sd.Build)
		}
		h.Build = sd.Build
	}
	h.DeviceID, h.Messaging, h.NumberEncryption = sd.DeviceID, sd.CloudMessaging, sd.NumberEncryption
	return nil
}

// saveDevices writes the state file atomically: a crash leaves the old
// file or the new one, never half of one.
// A handset's build is kept only when an installed release moved it off
// the run's --build.
func saveDevices(path, server string, cfg Config, devs []handsetsim.Handset, extra []stateDevice) error {
	sf := stateFile{Version: stateVersion, Server: server, Devices: make([]stateDevice, 0, len(devs)+len(extra))}
	for i := range devs {
		h := &devs[i]
		patches := h.Installed
		if patches == nil {
			patches = []string{}
		}
		build := h.Build
		if build == cfg.Build {
			build = ""
		}
		sf.Devices = append(sf.Devices, stateDevice{Key: hex.EncodeToString(h.Seed[:]), DeviceID: h.DeviceID,
			InstalledPatches: patches, Build: build, CloudMessaging: h.Messaging, NumberEncryption: h.NumberEncryption})
	}
	sf.Devices = append(sf.Devices, extra...)
	data, err := json.MarshalIndent(sf, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".handset-state-*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// unwrapPathError keeps the cause ("permission denied") and drops the
// repeated path.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}
