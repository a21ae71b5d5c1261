package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"reflect"

	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ValidateKey checks that k is a TUF public key this package can verify
// with: keytype/scheme "ed25519"/"ed25519" with a 32-byte hex key, or
// "ecdsa" (or the spec's "ecdsa-sha2-nistp256")/"ecdsa-sha2-nistp256" with a
// PEM "PUBLIC KEY" on P-256. Every key that comes from outside (an upload, a
// root.json, a file) must pass it before it reaches go-tuf: VerifyDelegate
// panics on an Ed25519 key that is not 32 bytes.
//
// It also refuses fields the TUF spec does not define for these keys, above
// all a "private" value inside keyval (old securesystemslib key dicts carry
// one), which would otherwise be published in root.json.
func ValidateKey(k *metadata.Key) error {
	_, err := publicKey(k)
	return err
}

// publicKey validates k (see ValidateKey) and returns its crypto key.
func publicKey(k *metadata.Key) (crypto.PublicKey, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: no key", ErrInvalidKey)
	}
	for name := range k.UnrecognizedFields {
		return nil, fmt.Errorf("%w: unexpected field %q", ErrInvalidKey, name)
	}
	for name := range k.Value.UnrecognizedFields {
		return nil, fmt.Errorf("%w: unexpected field %q in keyval", ErrInvalidKey, name)
	}
	var want crypto.PublicKey
	switch {
	case k.Type == metadata.KeyTypeEd25519 && k.Scheme == metadata.KeySchemeEd25519:
		b, err := hex.DecodeString(k.Value.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%w: ed25519 public key is not hex: %w", ErrInvalidKey, err)
		}
		if len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: ed25519 public key is %d bytes, want %d", ErrInvalidKey, len(b), ed25519.PublicKeySize)
		}
		want = ed25519.PublicKey(b)
	case (k.Type == metadata.KeyTypeECDSA_SHA2_P256 || k.Type == metadata.KeyTypeECDSA_SHA2_P256_COMPAT) &&
		k.Scheme == metadata.KeySchemeECDSA_SHA2_P256:
		pub, err := parseECDSAPEM(k.Value.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
		}
		want = pub
	default:
		return nil, fmt.Errorf("%w: unsupported keytype/scheme %q/%q (want ed25519/ed25519 or ecdsa/ecdsa-sha2-nistp256)",
			ErrInvalidKey, k.Type, k.Scheme)
	}
	// Decode once more the way go-tuf does, so whatever passes here is also
	// a key go-tuf's VerifyDelegate can load, and the same key.
	got, err := k.ToPublicKey()
	if err != nil {
		return nil, fmt.Errorf("%w: go-tuf cannot load it: %w", ErrInvalidKey, err)
	}
	if !samePublicKey(got, want) {
		return nil, fmt.Errorf("%w: go-tuf reads a different key", ErrInvalidKey)
	}
	return want, nil
}

// parseECDSAPEM is stricter than go-tuf's decoder, which takes the first PEM
// block and ignores anything around it: one "PUBLIC KEY" block, no headers,
// nothing but white space after, a P-256 point.
func parseECDSAPEM(s string) (*ecdsa.PublicKey, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("ecdsa public key is not PEM")
	}
	if block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("ecdsa public key is a PEM %q block, want \"PUBLIC KEY\"", block.Type)
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("ecdsa public key has PEM headers")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("ecdsa public key has data after the PEM block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ecdsa public key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("ecdsa public key holds a %T", pub)
	}
	if ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("ecdsa public key is on %s, want P-256", ec.Curve.Params().Name)
	}
	return ec, nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

// VerifySignature checks that sig is k's signature over payload, the way
// go-tuf's VerifyDelegate does (key.ToPublicKey, then sigstore's verifier
// with SHA-256 for ECDSA and no pre-hash for Ed25519). A bad key yields an
// error wrapping ErrInvalidKey, a signature that does not verify one wrapping
// ErrBadSignature. It does not panic on any input.
//
// It is stricter than go-tuf in one way: ECDSA signatures must be ASN.1 DER.
// sigstore also accepts raw r||s (IEEE P1363), which python-tuf and tuf-js
// reject; counting such a signature could publish metadata that only go-tuf
// clients accept.
func VerifySignature(k *metadata.Key, payload, sig []byte) error {
	pub, err := publicKey(k)
	if err != nil {
		return err
	}
	hash := crypto.Hash(0) // Ed25519 signs the message itself
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		hash = crypto.SHA256
		if !isDER(sig) {
			return fmt.Errorf("%w: ecdsa signature is not ASN.1 DER", ErrBadSignature)
		}
	}
	v, err := signature.LoadVerifier(pub, hash)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return nil
}

// isDER reports whether sig is exactly one DER SEQUENCE of two INTEGERs,
// the ECDSA signature encoding every TUF client accepts.
func isDER(sig []byte) bool {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(sig, &rs)
	return err == nil && len(rest) == 0
}

// CanonicalSigned returns the canonical JSON (OLPC, as securesystemslib's
// cjson writes it) of a metadata's Signed part: exactly the bytes go-tuf's
// Sign signs and VerifyDelegate verifies, and what release engineers sign
// offline. signed is the Signed part (md.Signed, or any value that marshals
// to it, such as a decoded map); given a *metadata.Metadata[T] of one of the
// four top-level roles it uses that metadata's Signed part.
func CanonicalSigned(signed any) ([]byte, error) {
	// A typed nil *Metadata[T] would panic on .Signed, hence the checks.
	switch md := signed.(type) {
	case *metadata.Metadata[metadata.RootType]:
		if md != nil {
			signed = md.Signed
		}
	case *metadata.Metadata[metadata.TargetsType]:
		if md != nil {
			signed = md.Signed
		}
	case *metadata.Metadata[metadata.SnapshotType]:
		if md != nil {
			signed = md.Signed
		}
	case *metadata.Metadata[metadata.TimestampType]:
		if md != nil {
			signed = md.Signed
		}
	}
	if signed == nil || reflect.ValueOf(signed).Kind() == reflect.Pointer && reflect.ValueOf(signed).IsNil() {
		return nil, errors.New("canonical json: nothing to encode")
	}
	b, err := cjson.EncodeCanonical(signed)
	if err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	return b, nil
}

// Threshold is a role's signing rule: at least Threshold distinct keys out
// of KeyIDs (metadata.Role's fields).
type Threshold struct {
	KeyIDs    []string
	Threshold int
}

// CountValid returns the ids of the keys in role.KeyIDs, in that order,
// that signed payload: keys maps key ids to keys (root's Keys), sigs are the
// signatures collected so far. The caller compares len(valid) with
// role.Threshold. It does not panic on any input.
//
// It never counts more than a TUF client would:
//   - a key id listed twice in role.KeyIDs counts once, and so do two ids
//     whose keys are the same public key (go-tuf dedupes on the key too);
//   - ids missing from keys, keys ValidateKey rejects and keys listed under
//     an id that is not their own are skipped;
//   - a key with several signatures counts only if all of them verify:
//     go-tuf and tuf-js keep the last signature per key id and python-tuf
//     refuses duplicates, so a bad one may be the one a client checks.
func CountValid(keys map[string]*metadata.Key, role Threshold, payload []byte, sigs []metadata.Signature) (valid []string) {
	seenID := map[string]bool{}
	seenKey := map[[sha256.Size]byte]bool{}
	for _, id := range role.KeyIDs {
		if seenID[id] {
			continue
		}
		seenID[id] = true
		k := keys[id]
		pub, err := publicKey(k)
		if err != nil {
			continue
		}
		// On a copy: Key.ID caches, and a cached id may predate a change.
		if kid, err := copyKey(k).ID(); err != nil || kid != id {
			continue
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			continue
		}
		fp := sha256.Sum256(der)
		if seenKey[fp] || !allVerify(k, id, payload, sigs) {
			continue
		}
		seenKey[fp] = true
		valid = append(valid, id)
	}
	return valid
}

// allVerify reports whether sigs holds at least one signature by id and
// every signature by id verifies.
func allVerify(k *metadata.Key, id string, payload []byte, sigs []metadata.Signature) bool {
	n := 0
	for _, s := range sigs {
		if s.KeyID != id {
			continue
		}
		if VerifySignature(k, payload, s.Signature) != nil {
			return false
		}
		n++
	}
	return n > 0
}
