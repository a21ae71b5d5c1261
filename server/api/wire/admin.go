package wire

import (
	"github.com/patchfleet/ota/manifests"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// OnlineKey is the answer of GET /admin/repo/online-key.
type OnlineKey struct {
	KeyID string        `json:"keyid"`
	Key   *metadata.Key `json:"key"`
}

// RootDraftRequest is the body of POST /admin/repo/root-drafts.
type RootDraftRequest struct {
	RootKeys         []*metadata.Key `json:"root_keys"`
	RootThreshold    int             `json:"root_threshold"`
	TargetsKeys      []*metadata.Key `json:"targets_keys"`
	TargetsThreshold int             `json:"targets_threshold"`
}

// Artifact is the answer of PUT /admin/artifacts/{path}.
type Artifact struct {
	Path   string `json:"path"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256"`
	// Existed is true when the same artifact was already stored, so
	// nothing was uploaded.
	Existed bool `json:"existed"`
}

// HeaderContentSHA256 carries the sha256 the uploader computed; the server
// checks the stored bytes against it.
const HeaderContentSHA256 = "X-Content-Sha256"

// ReleaseRequest is the body of POST /admin/releases.
type ReleaseRequest struct {
	Path   string                 `json:"path"`
	Length int64                  `json:"length"`
	SHA256 string                 `json:"sha256"`
	Custom manifests.TargetCustom `json:"custom"`
	// Incrementals are the release's incremental payloads, each uploaded
	// under its own path first.
	Incrementals []ReleaseIncremental `json:"incrementals,omitempty"`
}

// ReleaseIncremental is an incremental payload of a ReleaseRequest: for
// handsets on FromBuild, in Format (manifests.FormatPackage or
// manifests.FormatZstdPatch).
type ReleaseIncremental struct {
	FromBuild string `json:"from_build"`
	Path      string `json:"path"`
	Length    int64  `json:"length"`
	SHA256    string `json:"sha256"`
	Format    string `json:"format"`
}

// YankRequest is the body of POST /admin/yanks.
type YankRequest struct {
	Path string `json:"path"`
}

// SignatureUpload is the body of POST /admin/drafts/{id}/signatures.
type SignatureUpload struct {
	// Digest is the draft digest the signatures were made over.
	Digest     string            `json:"digest"`
	Signatures []UploadSignature `json:"signatures"`
}

// UploadSignature is one signature of a SignatureUpload.
type UploadSignature struct {
	Part  string `json:"part"`
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"` // hex
}
