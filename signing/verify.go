package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ValidateKey checks a public key from outside before any use: a known
// type and scheme pair and a public key that parses to the right size.
// go-tuf's VerifyDelegate can panic on a malformed ed25519 key, so every
// key that did not come from this package goes through here first.
func ValidateKey(k *metadata.Key) error {
	if k == nil {
		return errors.New("no key")
	}
	switch {
	case k.Type == metadata.KeyTypeEd25519 && k.Scheme == metadata.KeySchemeEd25519:
		b, err := hex.DecodeString(k.Value.PublicKey)
		if err != nil {
			return fmt.Errorf("ed25519 public key is not hex: %w", err)
		}
		if len(b) != ed25519.PublicKeySize {
			return fmt.Errorf("ed25519 public key has %d bytes, want %d", len(b), ed25519.PublicKeySize)
		}
	case (k.Type == metadata.KeyTypeECDSA_SHA2_P256 || k.Type == metadata.KeyTypeECDSA_SHA2_P256_COMPAT) &&
		k.Scheme == metadata.KeySchemeECDSA_SHA2_P256:
		pub, err := k.ToPublicKey()
		if err != nil {
			return fmt.Errorf("ecdsa public key: %w", err)
		}
		if ek, ok := pub.(*ecdsa.PublicKey); !ok || ek.Curve != elliptic.P256() {
			return errors.New("ecdsa public key is not on P-256")
		}
	default:
		return fmt.Errorf("key type %q with scheme %q: want ed25519/ed25519 or ecdsa/ecdsa-sha2-nistp256", k.Type, k.Scheme)
	}
	if _, err := k.ID(); err != nil {
		return fmt.Errorf("key id: %w", err)
	}
	return nil
}

// VerifySignature checks sig over payload with k, as go-tuf does. It never
// panics, whatever k and sig hold.
func VerifySignature(k *metadata.Key, payload, sig []byte) error {
	if err := ValidateKey(k); err != nil {
		return err
	}
	pub, err := k.ToPublicKey()
	if err != nil {
		return err
	}
	hash := crypto.Hash(0)
	if k.Type != metadata.KeyTypeEd25519 {
		hash = crypto.SHA256
	}
	v, err := signature.LoadVerifier(pub, hash)
	if err != nil {
		return err
	}
	if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return nil
}

// CanonicalSigned returns the canonical JSON of a metadata's signed part:
// exactly the bytes go-tuf signs and verifies.
func CanonicalSigned(signed any) ([]byte, error) {
	b, err := cjson.EncodeCanonical(signed)
	if err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	return b, nil
}

// Threshold is a role's key ids and how many of them must sign.
type Threshold struct {
	KeyIDs    []string
	Threshold int
}

// CountValid returns the distinct key ids of role whose signature in sigs
// verifies over payload. Unknown keys, keys outside the role, malformed
// keys and duplicates count for nothing.
func CountValid(keys map[string]*metadata.Key, role Threshold, payload []byte, sigs []metadata.Signature) []string {
	inRole := make(map[string]bool, len(role.KeyIDs))
	for _, id := range role.KeyIDs {
		inRole[id] = true
	}
	seen := map[string]bool{}
	var valid []string
	for _, s := range sigs {
		if seen[s.KeyID] || !inRole[s.KeyID] {
			continue
		}
		k, ok := keys[s.KeyID]
		if !ok {
			continue
		}
		// A key listed under an id that is not its own must not count.
		if id, err := k.ID(); err != nil || id != s.KeyID {
			continue
		}
		if VerifySignature(k, payload, s.Signature) == nil {
			seen[s.KeyID] = true
			valid = append(valid, s.KeyID)
		}
	}
	return valid
}
