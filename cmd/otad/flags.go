package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// flagSet is a flag.FlagSet whose flags can also be set from environment
// variables. The command line wins over the environment, and the first
// non-empty variable of a flag's list wins over the later ones (so OTAD_*
// beats the AWS_* and MINIO_* names it accepts too).
type flagSet struct {
	*flag.FlagSet
	env map[string][]string // flag name -> env var names
}

func newFlagSet(name, synopsis string, out io.Writer) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), env: map[string][]string{}}
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: %s\n\n%s\n\nFlags (the command line wins over the environment variables named):\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func (fs *flagSet) bind(name string, env []string) {
	fs.env[name] = env
}

func withEnv(usage string, env []string) string {
	if len(env) == 0 {
		return usage
	}
	return usage + " (env " + strings.Join(env, ", ") + ")"
}

func (fs *flagSet) stringVar(p *string, name, def, usage string, env ...string) {
	fs.StringVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

func (fs *flagSet) durationVar(p *time.Duration, name string, def time.Duration, usage string, env ...string) {
	fs.DurationVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

func (fs *flagSet) boolVar(p *bool, name string, def bool, usage string, env ...string) {
	fs.BoolVar(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

func (fs *flagSet) float64Var(p *float64, name string, def float64, usage string, env ...string) {
	fs.Float64Var(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

func (fs *flagSet) int64Var(p *int64, name string, def int64, usage string, env ...string) {
	fs.Int64Var(p, name, def, withEnv(usage, env))
	fs.bind(name, env)
}

// parse applies the environment, then the command line. A malformed
// environment value is an error naming the variable.
func (fs *flagSet) parse(args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		for _, name := range fs.env[f.Name] {
			v := getenv(name)
			if v == "" {
				continue
			}
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, &configError{Flag: f.Name, Env: name, FromEnv: true,
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

// configError names the setting that is wrong, so that otad can exit with
// one line that tells the operator what to fix.
type configError struct {
	Flag    string // without dashes
	Env     string // its main environment variable
	FromEnv bool   // the bad value came from Env, not the command line
	Err     error
}

func (e *configError) Error() string {
	switch {
	case e.FromEnv:
		return fmt.Sprintf("%s (sets --%s): %v", e.Env, e.Flag, e.Err)
	case e.Env != "":
		return fmt.Sprintf("--%s / %s: %v", e.Flag, e.Env, e.Err)
	default:
		return fmt.Sprintf("--%s: %v", e.Flag, e.Err)
	}
}

func (e *configError) Unwrap() error { return e.Err }
