package web

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/audit"
)

// auditDraftSign is the audit action of a signature upload (server/api
// records it with the draft id as object and "part:keyid" per signature):
// it tells who uploaded each key's signature, the only name a key has.
const auditDraftSign = "draft.sign"

// signersShown bounds the signature uploads read to name the signers of
// the drafts on the releases page.
const signersShown = 500

// draftEntry is one draft of the releases page's history.
type draftEntry struct {
	*manifests.DraftView
	// KindWord is the kind in words: ceremony, release, yank, root
	// rotation.
	KindWord   string
	Signatures []thresholdEntry
	// YankedBy is set on a published release whose target a later
	// published yank removed (and no later release put back).
	YankedBy *yankEntry
}

// thresholdEntry is one threshold of a draft with its signers named.
type thresholdEntry struct {
	What string
	// Signed of Threshold signatures, from Keys keys that may sign.
	Signed, Threshold, Keys int
	Met                     bool
	Signers                 []signerEntry
}

// signerEntry is a key that signed, with the user who uploaded its
// signature when the audit log says.
type signerEntry struct {
	KeyID, Short, Name string
}

// yankEntry is a target a published yank removed.
type yankEntry struct {
	Path, Draft, By string
	At              time.Time
}

var kindWords = map[string]string{
	manifests.DraftKindInit:    "ceremony",
	manifests.DraftKindRelease: "release",
	manifests.DraftKindYank:    "yank",
	manifests.DraftKindRotate:  "root rotation",
}

// draftHistory turns the newest-first drafts into the page's history:
// kind in words, signers named (names maps draft id and key id to the
// uploader), and each published release marked when a later published
// yank removed its target. It also returns the yanks, newest first.
func draftHistory(drafts []*manifests.DraftView, names map[string]map[string]string) ([]draftEntry, []yankEntry) {
	out := make([]draftEntry, len(drafts))
	for i, dv := range drafts {
		e := draftEntry{DraftView: dv, KindWord: kindWords[dv.Kind]}
		if e.KindWord == "" {
			e.KindWord = dv.Kind
		}
		for _, th := range dv.Thresholds {
			te := thresholdEntry{What: th.What, Signed: len(th.Signed), Threshold: th.Threshold, Keys: len(th.KeyIDs), Met: th.Met()}
			for _, id := range th.Signed {
				te.Signers = append(te.Signers, signerEntry{KeyID: id, Short: shortKey(id), Name: names[dv.ID][id]})
			}
			e.Signatures = append(e.Signatures, te)
		}
		out[i] = e
	}
	// Oldest first: a yank removes what the newest release before it
	// added.
	var yanks []yankEntry
	addedBy := map[string]int{}
	for i := len(out) - 1; i >= 0; i-- {
		dv := out[i].DraftView
		if dv.State != manifests.DraftPublished {
			continue
		}
		for _, p := range append(append([]string(nil), dv.Added...), dv.Replaced...) {
			addedBy[p] = i
		}
		for _, p := range dv.Removed {
			y := yankEntry{Path: p, Draft: dv.ID, By: dv.CreatedBy}
			if dv.ClosedAt != nil {
				y.At = *dv.ClosedAt
			}
			if j, ok := addedBy[p]; ok {
				out[j].YankedBy = &y
				delete(addedBy, p)
			}
			yanks = append([]yankEntry{y}, yanks...)
		}
	}
	return out, yanks
}

func shortKey(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// signerNames reads who uploaded each key's signature to each draft
// from the audit log: draft id -> key id -> user. The newest upload of a
// key to a draft is the signature the draft keeps.
func signerNames(ctx context.Context, log audit.AuditStore) (map[string]map[string]string, error) {
	es, err := log.ListAudit(ctx, audit.AuditQuery{Action: auditDraftSign, Limit: signersShown})
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, e := range es { // newest first
		var d struct {
			Signatures []string `json:"signatures"`
		}
		if json.Unmarshal([]byte(e.Detail), &d) != nil {
			continue
		}
		for _, s := range d.Signatures {
			_, keyID, ok := strings.Cut(s, ":")
			if !ok {
				continue
			}
			if out[e.Object] == nil {
				out[e.Object] = map[string]string{}
			}
			if _, seen := out[e.Object][keyID]; !seen {
				out[e.Object][keyID] = e.Actor
			}
		}
	}
	return out, nil
}
