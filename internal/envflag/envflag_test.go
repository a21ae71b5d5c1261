package envflag

import (
	"errors"
	"io"
	"testing"
	"time"
)

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		wantErr string
	}{
		{"default", nil, nil, "def", ""},
		{"environment", nil, map[string]string{"A_PRIMARY": "env"}, "env", ""},
		{"first variable wins", nil, map[string]string{"A_PRIMARY": "one", "A_ALIAS": "two"}, "one", ""},
		{"alias when the first is empty", nil, map[string]string{"A_ALIAS": "two"}, "two", ""},
		{"command line wins", []string{"--a", "cli"}, map[string]string{"A_PRIMARY": "env"}, "cli", ""},
		{"bad value names the variable", nil, map[string]string{"D_TIMEOUT": "soon"}, "def", `D_TIMEOUT (sets --d): invalid value "soon"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := New("x", "", io.Discard)
			var a string
			var d time.Duration
			fs.StringEnv(&a, "a", "def", "a flag", "A_PRIMARY", "A_ALIAS")
			fs.DurationEnv(&d, "d", time.Second, "d flag", "D_TIMEOUT")
			err := fs.ParseEnv(tc.args, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				var e *Error
				if !errors.As(err, &e) || len(err.Error()) < len(tc.wantErr) || err.Error()[:len(tc.wantErr)] != tc.wantErr {
					t.Fatalf("got %v, want an *Error starting %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || a != tc.want {
				t.Fatalf("got %q, %v; want %q", a, err, tc.want)
			}
		})
	}
}
