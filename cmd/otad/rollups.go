package main

import (
	"context"
	"fmt"
	"io"
)

const rollupsUsage = `Usage:
  otad rollups verify
  otad rollups fold

The rollups are the counters that reports read (fleet_counts,
rollout_counts, ...). Every check-in and report that changes what they
count appends its change to a delta log in the same transaction, and the
running server folds the logs into the rollups every
--rollup-fold-interval; reports add the unfolded tail, so they are exact
either way. "verify" recounts the rollups that can be recounted from
their rows (the devices, the rollout records), in one snapshot, and exits
1 naming each disagreement. "fold" folds the delta logs now.
`

func runRollups(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	sub, err := subcommand(args, rollupsUsage, stderr, "verify", "fold")
	if err != nil {
		return err
	}
	synopsis := map[string]string{
		"verify": "Recounts the rollups that reports read from the rows they count, in one snapshot;\nexits 1 naming each disagreement.",
		"fold":   "Folds the rollups' delta logs into the rollups now (the server does it every --rollup-fold-interval).",
	}[sub]
	c := newAdminCommand("otad rollups "+sub+" [flags]", synopsis, stderr)
	if err := c.parse(args[1:], getenv, 0); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartupTimeout)
	defer cancel()
	db, err := c.open(ctx, stderr)
	if err != nil {
		return err
	}
	defer db.Close()
	switch sub {
	case "verify":
		diffs, err := db.VerifyRollups(ctx)
		if err != nil {
			return err
		}
		if len(diffs) == 0 {
			fmt.Fprintln(stdout, "rollups agree with the rows")
			return nil
		}
		for _, d := range diffs {
			fmt.Fprintln(stdout, d)
		}
		// Nothing rebuilds the rollups from the rows yet: a disagreement
		// is a bug (or a hand edit) to report, not something to repair
		// in place.
		return fmt.Errorf("%d rollup disagreements with the rows (listed above): reports read these counters and are off by as much; "+
			"nothing rebuilds them, so report it with this output and the otad version", len(diffs))
	case "fold":
		n, err := db.FoldRollups(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "folded %d deltas into the rollups\n", n)
	}
	return nil
}
