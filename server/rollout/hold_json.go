package rollout

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// FormatDuration writes d as time.ParseDuration reads it, without the
// zero minutes and seconds of String: "6h", "1h30m", "45s". It is how
// every answer of the API writes a duration.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}

// holdWire is a Hold's one wire shape: the admin API's rollout, its
// events and its report all marshal a Hold through it. With a shape per
// answer, a hold's window read "6h" on the rollout and "6h0m0s" on its
// report.
type holdWire struct {
	Model     string    `json:"model,omitempty"`
	Actor     string    `json:"actor"`
	Reason    string    `json:"reason"`
	Installed int64     `json:"installed"`
	Failed    int64     `json:"failed"`
	Silent    int64     `json:"silent,omitempty"`
	Rate      float64   `json:"rate"`
	MaxRate   float64   `json:"max_rate"`
	Window    string    `json:"window,omitempty"`
	At        time.Time `json:"at"`
}

// MarshalJSON writes h as the API shows it: the window as FormatDuration
// writes it (left out on an operator's hold), the time in UTC.
func (h Hold) MarshalJSON() ([]byte, error) {
	w := holdWire{Model: h.Model, Actor: h.Actor, Reason: h.Reason, Installed: h.Installed, Failed: h.Failed, Silent: h.Silent,
		Rate: h.Rate, MaxRate: h.MaxRate, At: h.At.UTC()}
	if h.Window > 0 {
		w.Window = FormatDuration(h.Window)
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes, for the API's clients.
func (h *Hold) UnmarshalJSON(b []byte) error {
	var w holdWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var window time.Duration
	if w.Window != "" {
		d, err := time.ParseDuration(w.Window)
		if err != nil {
			return fmt.Errorf("hold window: %w", err)
		}
		window = d
	}
	*h = Hold{Model: w.Model, Actor: w.Actor, Reason: w.Reason, Installed: w.Installed, Failed: w.Failed, Silent: w.Silent,
		Rate: w.Rate, MaxRate: w.MaxRate, Window: window, At: w.At}
	return nil
}
