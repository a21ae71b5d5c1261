package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/humanize"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/delta"
	"github.com/patchfleet/ota/server/api/wire"
)

func (c *cli) releaseCreate(args []string) error {
	var sf serverFlags
	var name, patchID, buildMin, buildMax, installsBuild string
	var models, extra, incrementals listFlag
	messaging := &choiceFlag{choices: []string{"opt-in", "opt-out"}}
	encryption := &choiceFlag{choices: []string{"on", "off"}}
	fs := newFlagSet("release create FILE --name PATH --patch-id ID [flags]",
		"Uploads the build FILE (hashed locally first; an artifact the server already has\n"+
			"is not sent again) and drafts the next targets version offering it as PATH with\n"+
			"the custom metadata below. Nothing reaches handsets until k targets key holders\n"+
			"sign the draft with otactl release sign.", c.stderr)
	sf.register(fs)
	fs.StringVar(&name, "name", "", "target path handsets see, e.g. cm-privacy/2026.1/update.zip (required)")
	fs.StringVar(&patchID, "patch-id", "", "patch id, e.g. CM-2026-001 (required)")
	fs.Var(&models, "model", "a device model the patch is for; repeat for each (none: every model)")
	fs.StringVar(&buildMin, "build-min", "", "lowest build the patch applies to (inclusive)")
	fs.StringVar(&buildMax, "build-max", "", "highest build the patch applies to (inclusive)")
	fs.StringVar(&installsBuild, "installs-build", "", "the build a handset runs once the patch is installed, e.g. 7.5.0;\na rollout needs it, and never offers the release to a handset on it or newer")
	fs.Var(messaging, "messaging-default", "cloud messaging default after install: opt-in or opt-out")
	fs.Var(encryption, "number-encryption", "phone number encryption after install: on or off")
	fs.Var(&extra, "custom", "another custom field as key=value; repeat for each")
	fs.Var(&incrementals, "incremental-from", "BUILD=FILE: an incremental payload for handsets on BUILD, the maker's\n"+
		"incremental package or a delta from otactl delta make (told apart by its\n"+
		"first bytes); uploaded as PATH with .from-BUILD before the extension and\n"+
		"signed with the release. Repeat for each starting build")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, 1, "the build FILE"); err != nil {
		return err
	}
	file := pos[0]
	if name == "" || patchID == "" {
		return usageError{errors.New("release create needs --name PATH and --patch-id ID")}
	}
	if err := manifests.ValidateTargetPath(name); err != nil {
		return usageError{fmt.Errorf("--name %q: want a relative slash path like dir/file.zip: %w", name, err)}
	}
	custom := manifests.TargetCustom{PatchID: patchID, Models: models, BuildMin: buildMin, BuildMax: buildMax,
		InstallsBuild: installsBuild, CloudMessagingDefault: messaging.value, NumberEncryption: encryption.value}
	for _, kv := range extra {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return usageError{fmt.Errorf("--custom %q: want key=value", kv)}
		}
		if custom.Extra == nil {
			custom.Extra = map[string]string{}
		}
		if _, dup := custom.Extra[k]; dup {
			return usageError{fmt.Errorf("--custom %s given twice", k)}
		}
		custom.Extra[k] = v
	}
	if err := custom.Validate(); err != nil {
		return usageError{fmt.Errorf("custom metadata: %w", err)}
	}
	payloads := []payloadFile{{file: file, path: name}}
	for _, kv := range incrementals {
		build, f, ok := strings.Cut(kv, "=")
		if !ok || build == "" || f == "" {
			return usageError{fmt.Errorf("--incremental-from %q: want BUILD=FILE, e.g. 7.4.1=inc-741.zip", kv)}
		}
		payloads = append(payloads, payloadFile{file: f, path: incrementalPath(name, build), fromBuild: build})
	}
	for i := range payloads {
		if err := payloads[i].open(); err != nil {
			return err
		}
		defer payloads[i].f.Close()
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}

	// Uploading gigabytes only to hear that a draft is pending, or that
	// there is no repository yet, wastes the engineer's time: ask first.
	st, err := cl.RepoStatus(c.ctx)
	if err != nil {
		return cl.explain(err)
	}
	if p := st.Pending; p != nil {
		return fmt.Errorf("draft %s (%s, by %s) is pending and only one draft may be: sign it (otactl release sign %s) or discard it (otactl draft discard %s) first",
			p.ID, p.Kind, p.CreatedBy, p.ID, p.ID)
	}
	if roleVersion(st, metadata.TARGETS) == 0 {
		return errors.New("the repository has no targets yet: run the ceremony first (otactl repo init, then otactl repo sign)")
	}

	req := wire.ReleaseRequest{Path: name, Custom: custom}
	for i := range payloads {
		p := &payloads[i]
		if err := c.hashAndUpload(cl, p); err != nil {
			return err
		}
		if i == 0 {
			req.Length, req.SHA256 = p.size, p.sum
			continue
		}
		req.Incrementals = append(req.Incrementals, wire.ReleaseIncremental{FromBuild: p.fromBuild, Path: p.path,
			Length: p.size, SHA256: p.sum, Format: p.format})
		fmt.Fprintf(c.stdout, "  incremental from %s (%s): %s of the full image's %s\n", p.fromBuild, p.format,
			humanize.Bytes(p.size), humanize.Bytes(payloads[0].size))
	}
	v, err := cl.CreateRelease(c.ctx, req)
	if err != nil {
		return cl.explain(err)
	}
	c.printCreated(v, "release sign "+v.ID)
	return nil
}

// payloadFile is one file of a release: the full image, or an
// incremental payload from fromBuild.
type payloadFile struct {
	file, path, fromBuild string
	f                     *os.File
	size                  int64
	sum, format           string
}

func (p *payloadFile) open() error {
	f, err := os.Open(p.file)
	if err != nil {
		return fmt.Errorf("%s: %w", p.file, unwrapPathError(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", p.file)
	}
	p.f, p.size = f, fi.Size()
	if p.fromBuild != "" {
		// A delta of otactl delta make starts with its magic; anything
		// else is the maker's incremental package.
		head := make([]byte, len(delta.Magic))
		n, _ := io.ReadFull(f, head)
		p.format = manifests.FormatPackage
		if string(head[:n]) == delta.Magic {
			p.format = manifests.FormatZstdPatch
		}
	}
	return nil
}

// incrementalPath is the target path of the incremental payload from
// build of the release at name: "dir/update.zip" from 7.4.1 is
// "dir/update.from-7.4.1.zip".
func incrementalPath(name, build string) string {
	ext := path.Ext(name)
	if strings.Contains(ext, "/") {
		ext = ""
	}
	return strings.TrimSuffix(name, ext) + ".from-" + build + ext
}

// hashAndUpload hashes p locally and uploads it (an artifact the server
// has is not sent again), with progress.
func (c *cli) hashAndUpload(cl *conn, p *payloadFile) error {
	fmt.Fprintf(c.stderr, "hashing %s (%s)...\n", p.file, humanize.Bytes(p.size))
	h := sha256.New()
	if n, err := io.Copy(h, ctxReader{c.ctx, io.NewSectionReader(p.f, 0, p.size)}); err != nil {
		return fmt.Errorf("hash %s: %w", p.file, err)
	} else if n != p.size {
		return fmt.Errorf("%s shrank while it was hashed; try again once it is complete", p.file)
	}
	p.sum = hex.EncodeToString(h.Sum(nil))
	art, err := c.upload(cl, p.f, p.file, p.path, p.size, p.sum)
	if err != nil {
		return err
	}
	if art.SHA256 != p.sum || art.Length != p.size {
		return fmt.Errorf("upload check failed: the server reports %s as %d bytes with sha256 %s, but %s is %d bytes with sha256 %s; nothing was released, upload again",
			p.path, art.Length, art.SHA256, p.file, p.size, p.sum)
	}
	if art.Existed {
		fmt.Fprintf(c.stdout, "%s is already stored on the server (%d bytes, sha256 %s); it was not sent again\n", p.path, p.size, p.sum)
	} else {
		fmt.Fprintf(c.stdout, "uploaded %s (%d bytes, sha256 %s)\n", p.path, p.size, p.sum)
	}
	return nil
}

// upload streams the build to the server (client.UploadArtifact): the
// body is read from the file as it goes, never held in memory, and
// hashed again on the way to catch a file that changes.
func (c *cli) upload(cl *conn, f *os.File, file, name string, size int64, sum string) (*wire.Artifact, error) {
	prog := newProgress(c.stderr, name, size, c.isTerminal(c.stderr))
	art, err := cl.uploads.UploadArtifact(c.ctx, client.Upload{Path: name, Body: io.NewSectionReader(f, 0, size),
		Length: size, SHA256: sum, Progress: prog.set})
	prog.finish()
	if ce := (*client.ChangedError)(nil); errors.As(err, &ce) {
		return nil, fmt.Errorf("%s changed while it was uploaded (sha256 %s before, %s sent); nothing was released, upload again once the file is final",
			file, ce.Declared, ce.Sent)
	}
	if client.HasCode(err, "body_too_large") {
		return nil, fmt.Errorf("the server refuses %s: %s (raise otad's --max-artifact-size)", file, client.AsError(err).Message)
	}
	if err != nil {
		return nil, fmt.Errorf("upload %s: %w", file, cl.explain(err))
	}
	return art, nil
}

// roleVersion is the published version of role, 0 if none.
func roleVersion(st *manifests.Status, role string) int64 {
	for _, r := range st.Roles {
		if r.Role == role {
			return r.Version
		}
	}
	return 0
}

// ctxReader stops reading once ctx ends, so that Ctrl-C interrupts hashing
// a large build.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, errInterrupted
	}
	return r.r.Read(b)
}
