package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
)

func (c *cli) repoSign(args []string) error {
	var sf serverFlags
	var keyFile, id string
	var yes bool
	fs := newFlagSet("repo sign --key FILE [--draft ID] [flags]",
		"Reviews and signs a draft (the pending one by default) with your key: otactl checks\n"+
			"that the draft's digest matches its bytes, shows what those bytes contain, signs\n"+
			"every part your key may sign and uploads only the signatures. At the threshold\n"+
			"the server publishes the draft. Same as otactl release sign.", c.stderr)
	sf.register(fs)
	fs.StringVar(&keyFile, "key", "", "your private key file from otactl key generate (required)")
	fs.StringVar(&id, "draft", "", "the draft to sign; default: the pending draft")
	fs.BoolVar(&yes, "yes", false, "sign without asking; needed when stdin is not a terminal")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	return c.signDraft(sf, keyFile, id, yes)
}

func (c *cli) releaseSign(args []string) error {
	var sf serverFlags
	var keyFile string
	var yes bool
	fs := newFlagSet("release sign ID --key FILE [flags]",
		"Reviews and signs draft ID with your key: otactl checks that the draft's digest\n"+
			"matches its bytes, shows what those bytes contain (every target with its length,\n"+
			"sha256 and custom metadata, and what is added or removed), signs every part your\n"+
			"key may sign and uploads only the signatures. At the threshold the server\n"+
			"publishes the draft.", c.stderr)
	sf.register(fs)
	fs.StringVar(&keyFile, "key", "", "your private key file from otactl key generate (required)")
	fs.BoolVar(&yes, "yes", false, "sign without asking; needed when stdin is not a terminal")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 1, 1, "draft id (otactl release show prints the pending one)"); err != nil {
		return err
	}
	return c.signDraft(sf, keyFile, pos[0], yes)
}

// signDraft is repo sign and release sign.
func (c *cli) signDraft(sf serverFlags, keyFile, id string, yes bool) error {
	if keyFile == "" {
		return usageError{errors.New("--key FILE is required: the private key file from otactl key generate")}
	}
	// The key id comes from the public half, so a key that may sign
	// nothing is refused before any passphrase is asked.
	_, keyID, err := readPublicKey(keyFile)
	if err != nil {
		return fmt.Errorf("--key %s: %w", keyFile, err)
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	v, err := cl.fetchDraft(c.ctx, id)
	if err != nil {
		return err
	}
	if id != "" && v.ID != id {
		return fmt.Errorf("asked for draft %s, the server answered with draft %s; refusing to sign", id, v.ID)
	}
	if v.State != manifests.DraftPending {
		return fmt.Errorf("draft %s is %s: there is nothing to sign", v.ID, v.State)
	}
	d, err := parseDraftView(v)
	if err != nil {
		return err
	}
	st, err := cl.RepoStatus(c.ctx)
	if err != nil {
		return cl.explain(err)
	}

	out := c.stdout
	fmt.Fprintf(out, "draft %s: %s, created by %s at %s\n", esc(v.ID), esc(v.Kind), esc(v.CreatedBy), v.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(out, "digest %s (checked against the draft's bytes)\n", esc(v.Digest))
	fmt.Fprintln(out, "what you sign (read from the draft's bytes):")
	now := time.Now()
	if d.root != nil {
		printRoot(out, d.root, keyID, st.OnlineKeyID, now)
	}
	var delta targetsDelta
	if d.targets != nil {
		delta = compareTargets(d.targets, st.Targets)
		printTargets(out, d.targets, st, delta, now)
	}
	printChanges(out, v.Changes)
	if d.targets != nil {
		if err := delta.check(v.Changes); err != nil {
			return fmt.Errorf("refusing to sign draft %s: %w", v.ID, err)
		}
	}

	parts, already := partsFor(v.Thresholds, keyID)
	if len(parts) == 0 && len(already) == 0 {
		return fmt.Errorf("key %s (%s) may not sign draft %s: no threshold lists it (%s); nothing was uploaded",
			keyID, keyFile, v.ID, describeSigners(v.Thresholds))
	}
	for _, p := range parts {
		if _, ok := d.payloads[p]; !ok {
			return fmt.Errorf("the server asks for %s signatures but draft %s has no %s part; refusing to sign", p, v.ID, p)
		}
	}
	if len(parts) == 0 {
		fmt.Fprintf(out, "key %s has already signed %s of draft %s; nothing to do\n", short(keyID), esc(strings.Join(already, " and ")), esc(v.ID))
		printThresholds(out, v.State, v.Thresholds)
		return nil
	}
	fmt.Fprintf(out, "key %s (%s) signs: %s\n", keyID, keyFile, esc(strings.Join(parts, ", ")))

	if !yes {
		if err := c.confirm("sign this? [y/N] "); err != nil {
			return err
		}
	}
	signer, err := c.loadSigner(keyFile, keyID)
	if err != nil {
		return err
	}
	upload := wire.SignatureUpload{Digest: v.Digest}
	for _, p := range parts {
		sig, err := d.sign(p, signer)
		if err != nil {
			return fmt.Errorf("sign the %s part: %w", p, err)
		}
		// The upload names the key id root lists (that of the public
		// key), whatever id go-tuf derived for the signer.
		upload.Signatures = append(upload.Signatures, wire.UploadSignature{Part: p, KeyID: keyID, Sig: hex.EncodeToString(sig.Signature)})
	}
	after, err := cl.AddSignatures(c.ctx, v.ID, upload)
	if err != nil {
		return fmt.Errorf("upload signatures: %w", cl.explain(err))
	}
	fmt.Fprintf(out, "uploaded %d signature(s) by key %s\n", len(upload.Signatures), short(keyID))
	tally := after.Thresholds
	if len(tally) == 0 {
		// A published draft has no open thresholds: show the ones it met.
		tally = withSigner(v.Thresholds, keyID, parts)
	}
	for _, t := range tally {
		fmt.Fprintln(out, thresholdLine(t))
	}
	switch after.State {
	case manifests.DraftPublished:
		fmt.Fprintf(out, "draft %s is published\n", esc(v.ID))
	case manifests.DraftPending:
		fmt.Fprintf(out, "draft %s is not published yet: it needs %s\n", esc(v.ID), esc(missing(tally)))
	default:
		fmt.Fprintf(out, "draft %s is %s\n", esc(v.ID), esc(after.State))
	}
	return nil
}

// confirm asks on the terminal; without one it refuses, since nobody could
// have reviewed the draft.
func (c *cli) confirm(prompt string) error {
	if !c.isTerminal(c.stdin) {
		return usageError{errors.New("stdin is not a terminal, so otactl cannot ask: review the draft above and run again with --yes to sign it")}
	}
	fmt.Fprint(c.stderr, prompt)
	line, err := interruptible(c.ctx, func() (string, error) { return readLine(c.stdin) })
	if errors.Is(err, errInterrupted) {
		fmt.Fprintln(c.stderr)
		return fmt.Errorf("%w; nothing was signed", err)
	}
	if err != nil && line == "" {
		return fmt.Errorf("no answer: %w; nothing was signed", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errors.New("not signed: you did not answer yes")
}

// readLine reads up to a newline one byte at a time, so that nothing
// after it (a passphrase) is consumed.
func readLine(r io.Reader) (string, error) {
	var sb strings.Builder
	b := make([]byte, 1)
	for sb.Len() < 1024 {
		n, err := r.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				return sb.String(), nil
			}
			sb.WriteByte(b[0])
		}
		if err != nil {
			return sb.String(), err
		}
	}
	return sb.String(), nil
}

// draft is a draft view with its parts parsed by go-tuf.
type draft struct {
	root     *metadata.Metadata[metadata.RootType]
	targets  *metadata.Metadata[metadata.TargetsType]
	payloads map[string]bool
}

// draftDigest is the digest a signature upload names: sha256 over the
// sha256 of the root bytes and of the targets bytes (a missing part hashes
// as empty bytes). manifests.(*Draft).Digest computes the same on the server.
func draftDigest(root, targets []byte) string {
	h := sha256.New()
	for _, part := range [][]byte{root, targets} {
		sum := sha256.Sum256(part)
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// parseDraftView checks that the draft's digest is that of its bytes and
// parses each part. Whatever the server says, otactl signs only what it
// shows, and shows only what it parsed from the bytes it signs.
func parseDraftView(v *manifests.DraftView) (*draft, error) {
	if got := draftDigest(v.Root, v.Targets); got != v.Digest {
		return nil, fmt.Errorf("draft %s does not match its digest (the server says %s, its bytes hash to %s): it was altered on the way or by the server; refusing to sign, report it",
			v.ID, v.Digest, got)
	}
	d := &draft{payloads: map[string]bool{}}
	var err error
	if len(v.Root) > 0 {
		if d.root, err = (&metadata.Metadata[metadata.RootType]{}).FromBytes(v.Root); err != nil {
			return nil, fmt.Errorf("draft %s: its root part is not valid TUF root metadata: %w; refusing to sign", v.ID, err)
		}
		d.payloads[manifests.PartRoot] = true
	}
	if len(v.Targets) > 0 {
		if d.targets, err = (&metadata.Metadata[metadata.TargetsType]{}).FromBytes(v.Targets); err != nil {
			return nil, fmt.Errorf("draft %s: its targets part is not valid TUF targets metadata: %w; refusing to sign", v.ID, err)
		}
		d.payloads[manifests.PartTargets] = true
	}
	if len(d.payloads) == 0 {
		return nil, fmt.Errorf("draft %s has neither a root nor a targets part; refusing to sign", v.ID)
	}
	return d, nil
}

// sign signs one part with go-tuf (canonical JSON of "signed") and returns
// the signature.
func (d *draft) sign(part string, signer tufSigner) (*metadata.Signature, error) {
	switch part {
	case manifests.PartRoot:
		d.root.ClearSignatures()
		return d.root.Sign(signer)
	case manifests.PartTargets:
		d.targets.ClearSignatures()
		return d.targets.Sign(signer)
	}
	return nil, fmt.Errorf("unknown part %q", part)
}

// partsFor returns the parts keyID may sign and has not signed yet, and
// those it already signed.
func partsFor(ts []manifests.PartStatus, keyID string) (todo, done []string) {
	may := map[string]bool{}
	signed := map[string]bool{}
	for _, t := range ts {
		if slices.Contains(t.KeyIDs, keyID) {
			may[t.Part] = true
			if !slices.Contains(t.Signed, keyID) {
				signed[t.Part] = false
			} else if _, seen := signed[t.Part]; !seen {
				signed[t.Part] = true
			}
		}
	}
	for _, p := range []string{manifests.PartRoot, manifests.PartTargets} {
		switch {
		case !may[p]:
		case signed[p]:
			done = append(done, p)
		default:
			todo = append(todo, p)
		}
	}
	return todo, done
}

func describeSigners(ts []manifests.PartStatus) string {
	if len(ts) == 0 {
		return "the draft lists no thresholds"
	}
	var s []string
	for _, t := range ts {
		ids := make([]string, len(t.KeyIDs))
		for i, id := range t.KeyIDs {
			ids[i] = short(id)
		}
		s = append(s, fmt.Sprintf("%s needs %d of %s", t.What, t.Threshold, strings.Join(ids, ", ")))
	}
	return strings.Join(s, "; ")
}

// withSigner returns ts with keyID counted as signed for parts.
func withSigner(ts []manifests.PartStatus, keyID string, parts []string) []manifests.PartStatus {
	out := make([]manifests.PartStatus, len(ts))
	for i, t := range ts {
		t.Signed = slices.Clone(t.Signed)
		if slices.Contains(parts, t.Part) && slices.Contains(t.KeyIDs, keyID) && !slices.Contains(t.Signed, keyID) {
			t.Signed = append(t.Signed, keyID)
		}
		out[i] = t
	}
	return out
}

func missing(ts []manifests.PartStatus) string {
	var s []string
	for _, t := range ts {
		if n := t.Threshold - len(t.Signed); n > 0 {
			s = append(s, fmt.Sprintf("%d more %s signature(s) (%s)", n, t.Part, t.What))
		}
	}
	if len(s) == 0 {
		return "nothing more; the server will publish it"
	}
	return strings.Join(s, " and ")
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// printRoot prints a root part: version, expiry and each role's keys and
// threshold.
func printRoot(w io.Writer, root *metadata.Metadata[metadata.RootType], myKey, onlineKey string, now time.Time) {
	s := root.Signed
	fmt.Fprintf(w, "  root v%d, expires %s (%s)\n", s.Version, s.Expires.UTC().Format(time.RFC3339), until(s.Expires, now))
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		r := s.Roles[role]
		if r == nil {
			fmt.Fprintf(w, "    %s role: MISSING\n", role)
			continue
		}
		fmt.Fprintf(w, "    %s role: %d of %d keys\n", role, r.Threshold, len(r.KeyIDs))
		for _, id := range slices.Sorted(slices.Values(r.KeyIDs)) {
			kind := "unknown key"
			if k := s.Keys[id]; k != nil {
				kind = esc(k.Type + "/" + k.Scheme)
			}
			note := ""
			switch id {
			case myKey:
				note = " (your key)"
			case onlineKey:
				note = " (the server's online key)"
			}
			fmt.Fprintf(w, "      %s %s%s\n", esc(id), kind, note)
			if id == onlineKey && (role == metadata.ROOT || role == metadata.TARGETS) {
				fmt.Fprintf(w, "      WARNING: the server's online key may sign %s: the server could then authorise builds alone\n", role)
			}
		}
	}
}

// targetsDelta is how a targets draft differs from the published targets.
type targetsDelta struct {
	added, removed, replaced []string
}

func compareTargets(next *metadata.Metadata[metadata.TargetsType], published []manifests.TargetInfo) targetsDelta {
	var d targetsDelta
	old := map[string]manifests.TargetInfo{}
	for _, t := range published {
		old[t.Path] = t
	}
	for _, p := range slices.Sorted(maps.Keys(next.Signed.Targets)) {
		t := next.Signed.Targets[p]
		o, ok := old[p]
		switch {
		case !ok:
			d.added = append(d.added, p)
		case o.Length != t.Length || o.SHA256 != hex.EncodeToString(t.Hashes["sha256"]) || !sameJSON(o.Custom, rawCustom(t)):
			d.replaced = append(d.replaced, p)
		}
	}
	for _, t := range published {
		if _, ok := next.Signed.Targets[t.Path]; !ok {
			d.removed = append(d.removed, t.Path)
		}
	}
	slices.Sort(d.removed)
	return d
}

func rawCustom(t *metadata.TargetFiles) json.RawMessage {
	if t.Custom == nil {
		return nil
	}
	return *t.Custom
}

func sameJSON(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return string(a) == string(b)
	}
	return reflect.DeepEqual(x, y)
}

// check compares the delta with the server's change lines: a server that
// describes a draft as something else than it is must not get a signature.
func (d targetsDelta) check(changes []string) error {
	known := map[string]bool{}
	for _, l := range [][]string{d.added, d.removed, d.replaced} {
		for _, p := range l {
			known[p] = true
		}
	}
	said := map[string][]string{}
	for _, line := range changes {
		for _, verb := range []string{"adds", "removes", "replaces"} {
			rest, ok := strings.CutPrefix(line, verb+" target ")
			if !ok {
				continue
			}
			said[verb] = append(said[verb], pathIn(rest, known))
		}
	}
	for verb, mine := range map[string][]string{"adds": d.added, "removes": d.removed, "replaces": d.replaced} {
		theirs := slices.Sorted(slices.Values(said[verb]))
		if !slices.Equal(theirs, slices.Sorted(slices.Values(mine))) {
			return fmt.Errorf("the server's description says it %s targets [%s], but the draft's bytes %s [%s]",
				verb, strings.Join(theirs, ", "), verb, strings.Join(mine, ", "))
		}
	}
	return nil
}

// pathIn returns the longest known path that a change line's remainder
// starts with ("PATH (12 bytes, ...)" or "PATH: ..."), or the remainder.
func pathIn(rest string, known map[string]bool) string {
	best := ""
	for p := range known {
		if (rest == p || strings.HasPrefix(rest, p+" (") || strings.HasPrefix(rest, p+":")) && len(p) > len(best) {
			best = p
		}
	}
	if best != "" {
		return best
	}
	if i := strings.Index(rest, " ("); i >= 0 {
		rest = rest[:i]
	}
	if i := strings.Index(rest, ": "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// printTargets prints a targets part: version, expiry, every target and
// what it adds, removes or replaces compared with the published targets.
func printTargets(w io.Writer, t *metadata.Metadata[metadata.TargetsType], st *manifests.Status, d targetsDelta, now time.Time) {
	s := t.Signed
	fmt.Fprintf(w, "  targets v%d, expires %s (%s), %d target(s)\n", s.Version, s.Expires.UTC().Format(time.RFC3339), until(s.Expires, now), len(s.Targets))
	for _, p := range slices.Sorted(maps.Keys(s.Targets)) {
		tf := s.Targets[p]
		var hashes []string
		for _, alg := range slices.Sorted(maps.Keys(tf.Hashes)) {
			hashes = append(hashes, alg+" "+hex.EncodeToString(tf.Hashes[alg]))
		}
		fmt.Fprintf(w, "    %s\n      %d bytes, %s\n", esc(p), tf.Length, esc(strings.Join(hashes, ", ")))
		if tf.Custom != nil {
			fmt.Fprintf(w, "      %s\n", describeCustom(*tf.Custom))
		}
	}
	if s.Delegations != nil {
		fmt.Fprintf(w, "    WARNING: delegates to %d role(s); otactl does not show delegated targets\n", len(s.Delegations.Roles))
	}
	published := roleVersion(st, metadata.TARGETS)
	fmt.Fprintf(w, "  compared with the published targets v%d:\n", published)
	if s.Version != published+1 {
		fmt.Fprintf(w, "    WARNING: the draft is targets v%d, not v%d: it does not follow what is published\n", s.Version, published+1)
	}
	for _, p := range d.added {
		fmt.Fprintf(w, "    adds %s\n", esc(p))
	}
	for _, p := range d.replaced {
		fmt.Fprintf(w, "    replaces %s\n", esc(p))
	}
	for _, p := range d.removed {
		fmt.Fprintf(w, "    removes %s: handsets are no longer offered it\n", esc(p))
	}
	if len(d.added)+len(d.replaced)+len(d.removed) == 0 {
		fmt.Fprintln(w, "    no target added, replaced or removed")
	}
}
