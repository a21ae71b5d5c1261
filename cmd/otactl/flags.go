package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// newFlagSet returns the flag set of one subcommand. Its usage names the
// synopsis and says what the command does; --help prints it and exits 0.
func newFlagSet(synopsis, description string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(synopsis, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: otactl %s\n\n%s\n", synopsis, description)
		has := false
		fs.VisitAll(func(*flag.Flag) { has = true })
		if has {
			fmt.Fprint(out, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseArgs parses flags and positional arguments in any order
// ("release sign ID --key K" as well as "release sign --key K ID"); after
// "--" everything is positional. It returns the positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// wantArgs checks the number of positional arguments.
func wantArgs(fs *flag.FlagSet, pos []string, min, max int, what string) error {
	if len(pos) < min || len(pos) > max {
		fs.Usage()
		if len(pos) < min {
			return usageError{fmt.Errorf("%s: missing %s", commandName(fs), what)}
		}
		return usageError{fmt.Errorf("%s: unexpected argument %q", commandName(fs), pos[max])}
	}
	return nil
}

// commandName is "release create" for the flag set named by the synopsis
// "release create FILE --name PATH ...".
func commandName(fs *flag.FlagSet) string {
	var words []string
	for _, w := range strings.Fields(fs.Name()) {
		if w == "" || w[0] < 'a' || w[0] > 'z' {
			break
		}
		words = append(words, w)
	}
	return strings.Join(words, " ")
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ", ") }

func (l *listFlag) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*l = append(*l, v)
	return nil
}

// choiceFlag is a string flag restricted to a few values ("" = unset).
type choiceFlag struct {
	value   string
	choices []string
}

func (f *choiceFlag) String() string {
	if f == nil {
		return ""
	}
	return f.value
}

func (f *choiceFlag) Set(v string) error {
	for _, c := range f.choices {
		if v == c {
			f.value = v
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(f.choices, " or "))
}

// serverFlags are the flags of every command that talks to otad.
type serverFlags struct {
	server string
	token  string
}

func (sf *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&sf.server, "server", "", "otad base URL, e.g. https://ota.example.com (env "+envServer+")")
	fs.StringVar(&sf.token, "token", "", "admin API token from \"otad token create\"; prefer the environment, flags show up in ps (env "+envToken+")")
}
