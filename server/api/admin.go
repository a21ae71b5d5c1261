package api

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// Routes of the admin API that the CLI (otactl) calls.
const (
	AdminPrefix   = wire.AdminPrefix
	artifactRoute = AdminPrefix + "/artifacts/*"
)

func (s *Server) mountAdmin() {
	r := routes{s: s, g: s.echo.Group(AdminPrefix, s.authenticate), prefix: AdminPrefix}
	read, release := needs(identity.PermRead), needs(identity.PermReleaseChange)
	r.add(http.MethodGet, "/whoami", read, s.whoami)
	r.add(http.MethodGet, "/repo/status", read, s.repoStatus)
	r.add(http.MethodGet, "/repo/online-key", read, s.onlineKey)
	r.add(http.MethodPost, "/repo/root-drafts", release, s.createRootDraft)
	r.add(http.MethodPut, "/artifacts/*", release, s.uploadArtifact)
	r.add(http.MethodPost, "/releases", release, s.createRelease)
	r.add(http.MethodPost, "/yanks", release, s.createYank)
	r.add(http.MethodGet, "/drafts", read, s.listDrafts)
	r.add(http.MethodGet, "/drafts/pending", read, s.pendingDraft)
	r.add(http.MethodGet, "/drafts/:id", read, s.getDraft)
	r.add(http.MethodPost, "/drafts/:id/signatures", release, s.addSignatures)
	r.add(http.MethodDelete, "/drafts/:id", release, s.discardDraft)
	if s.fleet != nil {
		r.add(http.MethodGet, "/fleet/summary", read, s.fleetSummary)
	}
	if s.rollouts != nil {
		s.mountRollouts(r)
	}
	r.add(http.MethodGet, "/audit", read, s.auditEntries)
	r.add(http.MethodGet, "/audit/verify", read, s.verifyAudit)
	if s.users.Store != nil {
		s.mountUsers(r)
	}
	s.mountReports(r)
}

func (s *Server) repoStatus(c echo.Context) error {
	st, err := s.repo.Status(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, st)
}

func (s *Server) onlineKey(c echo.Context) error {
	k := s.repo.OnlineKey()
	id, err := k.ID()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.OnlineKey{KeyID: id, Key: k})
}

func (s *Server) createRootDraft(c echo.Context) error {
	var req wire.RootDraftRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	d, err := s.repo.CreateRootDraft(c.Request().Context(), manifests.RootParams{
		RootKeys: req.RootKeys, RootThreshold: req.RootThreshold,
		TargetsKeys: req.TargetsKeys, TargetsThreshold: req.TargetsThreshold,
	}, actor(c))
	if err != nil {
		return err
	}
	if err := s.audit(c, "root-draft.create", d.ID, map[string]int{"root_keys": len(req.RootKeys),
		"root_threshold": req.RootThreshold, "targets_keys": len(req.TargetsKeys), "targets_threshold": req.TargetsThreshold}); err != nil {
		return err
	}
	return s.respondDraft(c, http.StatusCreated, d.ID)
}

// uploadArtifact streams a build into the blob store under its
// hash-prefixed name, never holding it in memory. A body whose sha256
// differs from the declared one is deleted and refused.
func (s *Server) uploadArtifact(c echo.Context) error {
	p := c.Param("*")
	if err := manifests.ValidateTargetPath(p); err != nil {
		return fmt.Errorf("%w: target path: %w", errs.ErrInvalid, err)
	}
	sum := c.Request().Header.Get(wire.HeaderContentSHA256)
	if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 || hex.EncodeToString(b) != sum {
		return fmt.Errorf("%w: header %s must be the 64 lowercase hex digits of the body's sha256", errs.ErrInvalid, wire.HeaderContentSHA256)
	}
	ctx := c.Request().Context()
	key := manifests.TargetKey(p, sum)
	if info, err := s.blobs.Stat(ctx, key); err == nil {
		return c.JSON(http.StatusOK, wire.Artifact{Path: p, Length: info.Size, SHA256: sum, Existed: true})
	} else if !errors.Is(err, manifests.ErrNotExist) {
		return err
	}
	// Uploads of several GB outlast the server's read timeout, which is
	// meant for API calls: lift it for this authenticated request.
	rc := http.NewResponseController(c.Response().Writer)
	if err := rc.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	info, err := s.blobs.Put(ctx, key, c.Request().Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return mbe
		}
		return fmt.Errorf("store artifact: %w", err)
	}
	if info.SHA256 != sum {
		if err := s.blobs.Delete(ctx, key); err != nil {
			s.log.ErrorContext(ctx, "deleting a mismatched upload", "key", key, "error", err)
		}
		return fmt.Errorf("%w: uploaded bytes have sha256 %s, not the declared %s; the upload was discarded, try again",
			errs.ErrInvalid, info.SHA256, sum)
	}
	// An upload of bytes already stored (Existed, above) changes nothing
	// and is not audited.
	if err := s.audit(c, "artifact.upload", p, map[string]any{"sha256": sum, "length": info.Size}); err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, wire.Artifact{Path: p, Length: info.Size, SHA256: sum})
}

func (s *Server) createRelease(c echo.Context) error {
	var req wire.ReleaseRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	// Handsets report and check in with the patch id, under the same rule
	// as every handset field: a patch they could not name is refused here.
	if err := handsets.ValidatePatchID("custom.patch_id", req.Custom.PatchID); err != nil {
		return err
	}
	rel := manifests.Release{Path: req.Path, Length: req.Length, SHA256: req.SHA256, Custom: req.Custom}
	var from []string
	for _, inc := range req.Incrementals {
		rel.Incrementals = append(rel.Incrementals, manifests.IncrementalPayload{FromBuild: inc.FromBuild, Path: inc.Path,
			Length: inc.Length, SHA256: inc.SHA256, Format: inc.Format})
		from = append(from, inc.FromBuild+"="+inc.Path)
	}
	d, err := s.repo.CreateReleaseDraft(c.Request().Context(), rel, actor(c))
	if err != nil {
		return err
	}
	details := map[string]string{"draft": d.ID, "sha256": req.SHA256, "patch_id": req.Custom.PatchID}
	if len(from) > 0 {
		details["incrementals"] = strings.Join(from, ",")
	}
	if err := s.audit(c, "release.create", req.Path, details); err != nil {
		return err
	}
	return s.respondDraft(c, http.StatusCreated, d.ID)
}

func (s *Server) createYank(c echo.Context) error {
	var req wire.YankRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	d, err := s.repo.CreateYankDraft(c.Request().Context(), req.Path, actor(c))
	if err != nil {
		return err
	}
	if err := s.audit(c, "yank.create", req.Path, map[string]string{"draft": d.ID}); err != nil {
		return err
	}
	return s.respondDraft(c, http.StatusCreated, d.ID)
}

func (s *Server) respondDraft(c echo.Context, status int, id string) error {
	v, err := s.repo.DraftView(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(status, v)
}

func (s *Server) listDrafts(c echo.Context) error {
	ds, err := s.repo.ListDrafts(c.Request().Context(), 50)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ds)
}

func (s *Server) pendingDraft(c echo.Context) error {
	v, err := s.repo.PendingDraftView(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) getDraft(c echo.Context) error {
	return s.respondDraft(c, http.StatusOK, c.Param("id"))
}

func (s *Server) addSignatures(c echo.Context) error {
	var req wire.SignatureUpload
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if len(req.Signatures) == 0 || len(req.Signatures) > 16 {
		return fmt.Errorf("%w: signatures: want 1 to 16", errs.ErrInvalid)
	}
	sigs := make([]manifests.DraftSignature, len(req.Signatures))
	for i, us := range req.Signatures {
		if !slices.Contains([]string{manifests.PartRoot, manifests.PartTargets}, us.Part) {
			return fmt.Errorf("%w: signatures[%d].part %q: want root or targets", errs.ErrInvalid, i, us.Part)
		}
		sig, err := hex.DecodeString(us.Sig)
		if err != nil || len(sig) == 0 || len(sig) > 1024 {
			return fmt.Errorf("%w: signatures[%d].sig: want hex, at most 1024 bytes", errs.ErrInvalid, i)
		}
		if len(us.KeyID) != 64 {
			return fmt.Errorf("%w: signatures[%d].keyid: want 64 hex digits", errs.ErrInvalid, i)
		}
		sigs[i] = manifests.DraftSignature{Part: us.Part, KeyID: us.KeyID, Sig: sig}
	}
	v, err := s.repo.AddSignatures(c.Request().Context(), c.Param("id"), req.Digest, sigs)
	if err != nil {
		return err
	}
	keys := make([]string, len(sigs))
	for i, sg := range sigs {
		keys[i] = sg.Part + ":" + sg.KeyID
	}
	if err := s.audit(c, "draft.sign", c.Param("id"), map[string]any{"digest": req.Digest, "signatures": keys}); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) discardDraft(c echo.Context) error {
	if err := s.repo.DiscardDraft(c.Request().Context(), c.Param("id")); err != nil {
		return err
	}
	if err := s.audit(c, "draft.discard", c.Param("id"), nil); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
