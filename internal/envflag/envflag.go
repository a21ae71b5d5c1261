// Package envflag is the flag handling the project's commands share:
// stdlib flag sets whose flags can also be set from environment variables
// (the command line wins), and configuration errors that name the setting
// at fault so a command can exit with one line that says what to fix.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// FlagSet is a flag.FlagSet whose flags may be bound to environment
// variables. The first non-empty variable of a flag's list wins over the
// later ones (so OTAD_* beats the AWS_* and MINIO_* names it accepts too).
type FlagSet struct {
	*flag.FlagSet
	env map[string][]string // flag name -> env var names
}

// New returns a FlagSet whose usage prints synopsis and the flags, each
// with the variables that set it.
func New(name, synopsis string, out io.Writer) *FlagSet {
	fs := &FlagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), env: map[string][]string{}}
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags (the command line wins over the environment variables named):\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func (fs *FlagSet) bind(name string, env []string) { fs.env[name] = env }

func withEnv(usage string, env []string) string {
	if len(env) == 0 {
		return usage
	}
	return usage + " (env " + strings.Join(env, ", ") + ")"
}

// StringEnv defines a string flag set by env too.
func (fs *FlagSet) StringEnv(p *string, name, def, usage string, env ...string) {
	fs.StringVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// BoolEnv defines a bool flag set by env too.
func (fs *FlagSet) BoolEnv(p *bool, name string, def bool, usage string, env ...string) {
	fs.BoolVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// IntEnv defines an int flag set by env too.
func (fs *FlagSet) IntEnv(p *int, name string, def int, usage string, env ...string) {
	fs.IntVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// Int64Env defines an int64 flag set by env too.
func (fs *FlagSet) Int64Env(p *int64, name string, def int64, usage string, env ...string) {
	fs.Int64Var(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// Float64Env defines a float64 flag set by env too.
func (fs *FlagSet) Float64Env(p *float64, name string, def float64, usage string, env ...string) {
	fs.Float64Var(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// DurationEnv defines a duration flag set by env too.
func (fs *FlagSet) DurationEnv(p *time.Duration, name string, def time.Duration, usage string, env ...string) {
	fs.DurationVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// ParseEnv applies the environment, then the command line. A malformed
// environment value is an *Error naming the variable.
func (fs *FlagSet) ParseEnv(args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		for _, name := range fs.env[f.Name] {
			v := getenv(name)
			if v == "" {
				continue
			}
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, &Error{Flag: f.Name, Env: name, FromEnv: true,
					Err: fmt.Errorf("invalid value %q: %w", v, err)})
			}
			return
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// Error names the setting that is wrong.
type Error struct {
	Flag    string // without dashes
	Env     string // its main environment variable
	FromEnv bool   // the bad value came from Env, not the command line
	Err     error
}

func (e *Error) Error() string {
	switch {
	case e.FromEnv:
		return fmt.Sprintf("%s (sets --%s): %v", e.Env, e.Flag, e.Err)
	case e.Env != "":
		return fmt.Sprintf("--%s / %s: %v", e.Flag, e.Env, e.Err)
	default:
		return fmt.Sprintf("--%s: %v", e.Flag, e.Err)
	}
}

func (e *Error) Unwrap() error { return e.Err }
