package main

import (
	"errors"
	"testing"

	"github.com/patchfleet/ota/internal/envflag"
)

// TestFlagsFollowServerRules: the settings the handset sends are checked
// with the server's own rules, so a model or code the server would refuse
// stops the run at once, naming the flag.
func TestFlagsFollowServerRules(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		flag string // "" when valid
	}{
		{"valid", func(*Config) {}, ""},
		{"Android build id", func(c *Config) { c.Build = "TQ3A.230805.001" }, ""},
		{"IMEI as model", func(c *Config) { c.Model = "867530012345670" }, "model"},
		{"OEM build of four dotted numbers", func(c *Config) { c.Build = "14.0.0.201" }, ""},
		{"IMEI with dashes as build", func(c *Config) { c.Build = "867-530-012-345-670" }, "build"},
		{"phone number as channel", func(c *Config) { c.Channel = "p8613812345678" }, "channel"},
		{"lowercase fail code", func(c *Config) { c.FailCodes = "E_DISK_FULL,e_disk" }, "fail-codes"},
		{"fail code with digits", func(c *Config) { c.FailCodes = "E_8675300" }, "fail-codes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultConfig()
			c.Server, c.Model, c.Build, c.FailCodes = "http://127.0.0.1:1", "PX-7", "7.2.0", "E_DISK_FULL"
			tc.edit(&c)
			err := c.Validate()
			var fe *envflag.Error
			switch {
			case tc.flag == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.flag != "" && (!errors.As(err, &fe) || fe.Flag != tc.flag):
				t.Fatalf("got %v, want an error naming --%s", err, tc.flag)
			}
		})
	}
}
