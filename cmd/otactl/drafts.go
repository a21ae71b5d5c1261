package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

// fetchDraft returns draft id, or the pending draft when id is "".
func (cl *conn) fetchDraft(ctx context.Context, id string) (*manifests.DraftView, error) {
	var v *manifests.DraftView
	var err error
	if id == "" {
		v, err = cl.PendingDraft(ctx)
	} else {
		v, err = cl.Draft(ctx, id)
	}
	if client.HasCode(err, "not_found") {
		if id == "" {
			return nil, fmt.Errorf("no draft is pending (otactl draft list shows recent ones)")
		}
		return nil, fmt.Errorf("no draft %s (otactl draft list shows recent ones)", id)
	}
	return v, cl.explain(err)
}

func (c *cli) releaseShow(args []string) error {
	var sf serverFlags
	fs := newFlagSet("release show [ID] [flags]",
		"Shows a draft (the pending one by default): kind, state, creator, what it changes\nand, per threshold, how many keys have signed and which.", c.stderr)
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 1, "draft id"); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	id := ""
	if len(pos) == 1 {
		id = pos[0]
	}
	v, err := cl.fetchDraft(c.ctx, id)
	if err != nil {
		return err
	}
	printDraft(c.stdout, v)
	return nil
}

// printDraft prints a draft as the server describes it.
func printDraft(w io.Writer, v *manifests.DraftView) {
	fmt.Fprintf(w, "draft %s: %s, %s\n", esc(v.ID), esc(v.Kind), esc(v.State))
	fmt.Fprintf(w, "created by %s at %s\n", esc(v.CreatedBy), v.CreatedAt.UTC().Format(time.RFC3339))
	if v.Digest != "" {
		fmt.Fprintf(w, "digest %s\n", esc(v.Digest))
	}
	printChanges(w, v.Changes)
	printThresholds(w, v.State, v.Thresholds)
}

func printChanges(w io.Writer, changes []string) {
	fmt.Fprintln(w, "changes (as the server describes them):")
	for _, ch := range changes {
		fmt.Fprintf(w, "  %s\n", esc(ch))
	}
}

func printThresholds(w io.Writer, state string, ts []manifests.PartStatus) {
	if len(ts) == 0 {
		fmt.Fprintf(w, "signatures: none needed (the draft is %s)\n", esc(state))
		return
	}
	fmt.Fprintln(w, "signatures:")
	for _, t := range ts {
		fmt.Fprintf(w, "  %s\n", thresholdLine(t))
		for _, id := range t.KeyIDs {
			mark := "waiting"
			if slices.Contains(t.Signed, id) {
				mark = "signed "
			}
			fmt.Fprintf(w, "    %s %s\n", mark, esc(id))
		}
	}
}

func (c *cli) draftList(args []string) error {
	var sf serverFlags
	fs := newFlagSet("draft list [flags]", "Lists the newest drafts (at most 50): id, kind, state, creator and date.", c.stderr)
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	list, err := cl.Drafts(c.ctx)
	if err != nil {
		return cl.explain(err)
	}
	if len(list) == 0 {
		fmt.Fprintln(c.stdout, "no drafts")
		return nil
	}
	for _, v := range list {
		summary := ""
		if len(v.Changes) > 0 {
			summary = v.Changes[0]
		}
		for _, ch := range v.Changes {
			if strings.HasPrefix(ch, "adds ") || strings.HasPrefix(ch, "removes ") || strings.HasPrefix(ch, "replaces ") {
				summary = ch
				break
			}
		}
		fmt.Fprintf(c.stdout, "%s\t%s\t%s\t%s\t%s\t%s\n", esc(v.ID), esc(v.Kind), esc(v.State), esc(v.CreatedBy),
			v.CreatedAt.UTC().Format(time.RFC3339), esc(summary))
	}
	return nil
}

func (c *cli) draftDiscard(args []string) error {
	var sf serverFlags
	fs := newFlagSet("draft discard ID [flags]",
		"Abandons a pending draft, so that another can be drafted. Signatures collected\nfor it are dropped; nothing is published.", c.stderr)
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, 1, "draft id (otactl draft list)"); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	if err := cl.DiscardDraft(c.ctx, pos[0]); err != nil {
		if client.HasCode(err, "not_found") {
			return fmt.Errorf("no draft %s (otactl draft list shows recent ones)", pos[0])
		}
		return cl.explain(err)
	}
	fmt.Fprintf(c.stdout, "discarded draft %s\n", pos[0])
	return nil
}

func (c *cli) releaseYank(args []string) error {
	var sf serverFlags
	fs := newFlagSet("release yank PATH [flags]",
		"Drafts the next targets version without the target PATH, so that no handset is\noffered it again once k engineers sign. The artifact stays in storage.", c.stderr)
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, 1, "target path (otactl status lists them)"); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	v, err := cl.Yank(c.ctx, pos[0])
	if err != nil {
		return cl.explain(err)
	}
	c.printCreated(v, "release sign "+v.ID)
	return nil
}

// printCreated prints a new draft and what to do next.
func (c *cli) printCreated(v *manifests.DraftView, signCmd string) {
	fmt.Fprintf(c.stdout, "drafted %s (%s)\n", esc(v.ID), esc(v.Kind))
	printChanges(c.stdout, v.Changes)
	for _, t := range v.Thresholds {
		fmt.Fprintf(c.stdout, "needs %s\n", thresholdLine(t))
	}
	fmt.Fprintf(c.stdout, "next: each key holder runs otactl %s --key KEYFILE\n", signCmd)
}

// rootFlags are the flags of repo init and root rotate.
type rootFlags struct {
	rootKeys, targetsKeys        listFlag
	rootThreshold, targetsThresh int
}

// request reads the public keys and builds the root draft request.
func (rf *rootFlags) request() (*wire.RootDraftRequest, error) {
	if len(rf.rootKeys) == 0 || len(rf.targetsKeys) == 0 {
		return nil, usageError{fmt.Errorf("need at least one --root-key and one --targets-key")}
	}
	if rf.rootThreshold < 1 || rf.rootThreshold > len(rf.rootKeys) {
		return nil, usageError{fmt.Errorf("--root-threshold %d: want 1 to %d (the number of --root-key)", rf.rootThreshold, len(rf.rootKeys))}
	}
	if rf.targetsThresh < 1 || rf.targetsThresh > len(rf.targetsKeys) {
		return nil, usageError{fmt.Errorf("--targets-threshold %d: want 1 to %d (the number of --targets-key)", rf.targetsThresh, len(rf.targetsKeys))}
	}
	req := &wire.RootDraftRequest{RootThreshold: rf.rootThreshold, TargetsThreshold: rf.targetsThresh}
	var err error
	if req.RootKeys, err = readPublicKeys("--root-key", rf.rootKeys); err != nil {
		return nil, err
	}
	if req.TargetsKeys, err = readPublicKeys("--targets-key", rf.targetsKeys); err != nil {
		return nil, err
	}
	return req, nil
}

func readPublicKeys(flag string, files []string) ([]*metadata.Key, error) {
	var keys []*metadata.Key
	seen := map[string]string{}
	for _, f := range files {
		k, id, err := readPublicKey(f)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flag, f, err)
		}
		if prev, ok := seen[id]; ok {
			return nil, usageError{fmt.Errorf("%s: %s and %s are the same key %s", flag, prev, f, id)}
		}
		seen[id] = f
		keys = append(keys, k)
	}
	return keys, nil
}

func (c *cli) repoInit(args []string) error {
	return c.draftRoot(args, false)
}

func (c *cli) rootRotate(args []string) error {
	return c.draftRoot(args, true)
}

func (c *cli) draftRoot(args []string, rotate bool) error {
	var sf serverFlags
	var rf rootFlags
	synopsis := "repo init --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold K [flags]"
	desc := "Drafts root v1 (the root and targets keys and thresholds, and the server's online\n" +
		"key for snapshot and timestamp) with an empty targets v1. Each root key holder then\n" +
		"signs it with otactl repo sign; at the threshold the server publishes it.\n" +
		"Pass public keys (FILE.pub); private key files are accepted too, only their public half is read."
	if rotate {
		synopsis = "root rotate --root-key PUB... --root-threshold K --targets-key PUB... --targets-threshold K [flags]"
		desc = "Drafts the next root version with these keys and thresholds (all of them: keys not\n" +
			"listed are removed). It needs the current root's threshold of signatures and the\n" +
			"new root's own; when the targets keys change, the current targets is re-drafted\n" +
			"for the new targets keys to sign. Sign with otactl repo sign."
	}
	fs := newFlagSet(synopsis, desc, c.stderr)
	sf.register(fs)
	fs.Var(&rf.rootKeys, "root-key", "a root key holder's public key file (FILE.pub, or the key file itself); repeat for each")
	fs.IntVar(&rf.rootThreshold, "root-threshold", 0, "how many root keys must sign a new root")
	fs.Var(&rf.targetsKeys, "targets-key", "a targets key holder's public key file; repeat for each")
	fs.IntVar(&rf.targetsThresh, "targets-threshold", 0, "how many targets keys must sign a release or yank")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	req, err := rf.request()
	if err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	st, err := cl.RepoStatus(c.ctx)
	if err != nil {
		return cl.explain(err)
	}
	hasRoot := roleVersion(st, metadata.ROOT) > 0
	switch {
	case rotate && !hasRoot:
		return fmt.Errorf("the repository has no root yet: run otactl repo init for the first one")
	case !rotate && hasRoot:
		return fmt.Errorf("the repository is already initialized: use otactl root rotate to change keys")
	}
	v, err := cl.CreateRootDraft(c.ctx, *req)
	if err != nil {
		return cl.explain(err)
	}
	c.printCreated(v, "repo sign --draft "+v.ID)
	return nil
}
