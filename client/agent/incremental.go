package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/delta"
	"github.com/patchfleet/ota/server/handsets"
)

// CodeIncrementalApply: an incremental payload did not apply (it is not
// for the running build, the agent has no image of it, or the result
// does not match the full image's signed hash). The server offers the
// full image next. An Installer that applies the maker's incremental
// packages (manifests.FormatPackage) reports its own failures to apply
// with this code too.
const CodeIncrementalApply = handsets.CodeIncrementalApply

// Full checks incremental payload t against the signed metadata of the
// release it is a payload of, and returns that release's full image: t
// must be for build, and the full image's signed custom metadata must
// list t's path for that build. Both are signed with the same targets
// metadata, so neither the server nor the network can pair a payload
// with another release. An error has CodeIncrementalApply, or the
// verifier's codes for the full image's metadata.
func (w *View) Full(t *Target, build string) (*Target, error) {
	inc := t.Custom.Incremental
	if inc == nil {
		return nil, &failure{code: CodeVerify, err: errors.New("target is not an incremental payload")}
	}
	if inc.FromBuild != build {
		return nil, &failure{code: CodeIncrementalApply,
			err: fmt.Errorf("the incremental payload is for build %s, this handset runs %s", inc.FromBuild, build)}
	}
	full, err := w.lookup(inc.Of)
	if err != nil {
		return nil, err
	}
	if full.Custom.PatchID != t.Custom.PatchID {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("incremental payload of patch %s, signed release %s is of %s",
			t.Custom.PatchID, inc.Of, full.Custom.PatchID)}
	}
	if full.Custom.Incrementals[build] != t.Path {
		return nil, &failure{code: CodeVerify, err: fmt.Errorf("signed release %s does not list %s as its payload from build %s",
			inc.Of, t.Path, build)}
	}
	return full, nil
}

// ApplyDelta applies the binary delta at patch (manifests.FormatZstdPatch,
// made by otactl delta make) to base, the image of the running build,
// and writes the result to dst only if it matches full's signed length
// and sha256. Every failure is CodeIncrementalApply: the server then
// offers the full image.
func ApplyDelta(base, patch, dst string, full *Target) error {
	fail := func(err error) error { return &failure{code: CodeIncrementalApply, err: err} }
	if base == "" {
		return fail(errors.New("no image of the running build to apply a delta to (Config.CurrentImage)"))
	}
	old, err := os.Open(base)
	if err != nil {
		return fail(fmt.Errorf("image of the running build: %w", err))
	}
	defer old.Close()
	fi, err := old.Stat()
	if err != nil {
		return fail(err)
	}
	p, err := os.Open(patch)
	if err != nil {
		return fail(err)
	}
	defer p.Close()
	tmp := dst + ".part"
	out, err := os.Create(tmp)
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp)
	h := sha256.New()
	n, err := delta.Apply(old, fi.Size(), p, io.MultiWriter(out, h))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != full.Length || sum != full.SHA256 {
		return fail(fmt.Errorf("the delta gives %d bytes with sha256 %s, the signed full image is %d bytes with sha256 %s",
			n, sum, full.Length, full.SHA256))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fail(err)
	}
	return nil
}

// deltaFormat reports whether custom is that of a binary delta the agent
// applies itself.
func deltaFormat(custom *manifests.TargetCustom) bool {
	return custom != nil && custom.Incremental != nil && custom.Incremental.Format == manifests.FormatZstdPatch
}
