package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/patchfleet/ota/humanize"
	"github.com/patchfleet/ota/manifests/delta"
)

// deltaMake writes a binary delta between two builds' images (package
// manifests/delta), for makers without incremental packages of their
// own; otactl release create --incremental-from BUILD=DELTA uploads it.
func (c *cli) deltaMake(args []string) error {
	var from, to, out string
	fs := newFlagSet("delta make --from OLD --to NEW --out FILE",
		"Writes a binary delta that turns the full image OLD (the build handsets run) into\n"+
			"NEW (the release's full image): zstd with the old image as its dictionary, as\n"+
			"zstd --patch-from. The agent applies it to the running build's image and installs\n"+
			"the result only if it matches NEW's signed sha256. Offer it with\n"+
			"otactl release create NEW ... --incremental-from OLDBUILD=FILE.", c.stderr)
	fs.StringVar(&from, "from", "", "full image of the starting build (required)")
	fs.StringVar(&to, "to", "", "full image of the release (required)")
	fs.StringVar(&out, "out", "", "where to write the delta (required)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	if from == "" || to == "" || out == "" {
		return usageError{errors.New("delta make needs --from OLD, --to NEW and --out FILE")}
	}
	old, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("%s: %w", from, unwrapPathError(err))
	}
	defer old.Close()
	oldInfo, err := old.Stat()
	if err != nil {
		return err
	}
	next, err := os.Open(to)
	if err != nil {
		return fmt.Errorf("%s: %w", to, unwrapPathError(err))
	}
	defer next.Close()
	nextInfo, err := next.Stat()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".delta-*")
	if err != nil {
		return fmt.Errorf("create the delta next to %s: %w", out, unwrapPathError(err))
	}
	defer os.Remove(tmp.Name())
	prog := newProgress(c.stderr, filepath.Base(to), nextInfo.Size(), c.isTerminal(c.stderr))
	err = delta.Make(c.ctx, old, oldInfo.Size(), ctxReader{c.ctx, next}, nextInfo.Size(), tmp, prog.set)
	prog.finish()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, errInterrupted) || c.ctx.Err() != nil {
		return errInterrupted
	}
	if err != nil {
		return fmt.Errorf("make the delta: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "wrote %s: %s, %.2f%% of %s (%s)\n", out, humanize.Bytes(st.Size()),
		100*float64(st.Size())/float64(max(nextInfo.Size(), 1)), to, humanize.Bytes(nextInfo.Size()))
	return nil
}
