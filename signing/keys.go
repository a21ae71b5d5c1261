// Package signing holds the keys that sign TUF metadata and checks the
// signatures made with them.
//
// Release engineers keep the root and targets keys offline, encrypted with a
// passphrase (EncryptKey, WriteKeyFile); the server keeps only the online
// timestamp/snapshot key, unencrypted so it can start unattended
// (WriteUnencryptedKeyFile). Signatures are made through Signer, which
// go-tuf's (*metadata.Metadata[T]).Sign accepts, and checked with
// VerifySignature and CountValid, which validate keys first so that hostile
// input cannot panic go-tuf or sigstore.
//
// This package is the bottom layer: it imports the standard library,
// golang.org/x/crypto, go-tuf's metadata types and sigstore's signature
// package, and nothing from this module.
package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Algorithm names a key algorithm this package can generate and store.
type Algorithm string

// The algorithms Generate accepts. Ed25519 is the default everywhere:
// deterministic signatures (stable golden files) and no curve pitfalls.
// ECDSA P-256 is there for HSMs and KMSs that lack Ed25519.
const (
	AlgEd25519   Algorithm = "ed25519"
	AlgECDSAP256 Algorithm = "ecdsa-p256"
)

// Errors returned by this package; match them with errors.Is.
var (
	// ErrUnsupportedAlgorithm means a key is neither Ed25519 nor ECDSA P-256.
	ErrUnsupportedAlgorithm = errors.New("unsupported key algorithm")
	// ErrInvalidKey means a TUF public key is malformed or of a type/scheme
	// this package does not verify.
	ErrInvalidKey = errors.New("invalid key")
	// ErrBadSignature means a signature does not verify with the key.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrKeyMismatch means a private key does not belong to the public key
	// stored next to it.
	ErrKeyMismatch = errors.New("private key does not match its public key")
)

// PrivateKey is a signing key held in memory: an Ed25519 or ECDSA P-256
// private key with its TUF public key and key id. Make one with Generate,
// NewPrivateKey or a parse function (the zero value is not a key). It is
// safe for concurrent use, and so are its Signers.
type PrivateKey struct {
	alg    Algorithm
	priv   crypto.PrivateKey // ed25519.PrivateKey or *ecdsa.PrivateKey
	signer signature.Signer
	pub    *metadata.Key // never handed out: Public returns a copy
	id     string
}

// Generate creates a new random key for alg.
func Generate(alg Algorithm) (*PrivateKey, error) {
	switch alg {
	case AlgEd25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", alg, err)
		}
		return NewPrivateKey(priv)
	case AlgECDSAP256:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", alg, err)
		}
		return NewPrivateKey(priv)
	}
	return nil, fmt.Errorf("%w: %q (want %q or %q)", ErrUnsupportedAlgorithm, alg, AlgEd25519, AlgECDSAP256)
}

// NewPrivateKey wraps an existing ed25519.PrivateKey or P-256
// *ecdsa.PrivateKey. Tests use it with ed25519.NewKeyFromSeed for
// deterministic keys and signatures (golden files).
func NewPrivateKey(priv crypto.PrivateKey) (*PrivateKey, error) {
	var (
		alg    Algorithm
		pub    crypto.PublicKey
		signer signature.Signer
		err    error
	)
	switch p := priv.(type) {
	case ed25519.PrivateKey:
		if len(p) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%w: ed25519 private key is %d bytes, want %d", ErrInvalidKey, len(p), ed25519.PrivateKeySize)
		}
		// The second half of an ed25519.PrivateKey is a cached public key
		// that Sign trusts; a wrong one yields signatures nobody can verify.
		if !ed25519.NewKeyFromSeed(p.Seed()).Equal(p) {
			return nil, fmt.Errorf("%w: ed25519 private key carries the wrong public key", ErrKeyMismatch)
		}
		p = bytes.Clone(p) // the caller's slice stays theirs
		priv = p
		alg, pub = AlgEd25519, p.Public()
		signer, err = signature.LoadED25519Signer(p)
	case *ecdsa.PrivateKey:
		if p == nil || p.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: only ECDSA keys on P-256", ErrUnsupportedAlgorithm)
		}
		// ECDH checks that the key is a valid scalar with its point on
		// the curve, which a hand-built ecdsa.PrivateKey may not be.
		if _, err := p.ECDH(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
		}
		alg, pub = AlgECDSAP256, &p.PublicKey
		// go-tuf's VerifyDelegate verifies ecdsa-sha2-nistp256 with SHA-256,
		// and so do python-tuf and tuf-js; sigstore signs ASN.1 DER.
		signer, err = signature.LoadECDSASigner(p, crypto.SHA256)
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedAlgorithm, priv)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s signer: %w", alg, err)
	}
	// KeyFromPublicKey is what go-tuf's Sign uses to name the signature's
	// key id, so ids computed here always match the signatures.
	key, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("tuf key: %w", err)
	}
	id, err := key.ID()
	if err != nil {
		return nil, fmt.Errorf("tuf key id: %w", err)
	}
	return &PrivateKey{alg: alg, priv: priv, signer: signer, pub: key, id: id}, nil
}

// Public returns the key's TUF public key object, as listed in root.json.
// Each call returns a fresh copy, so callers may modify it.
func (k *PrivateKey) Public() *metadata.Key { return copyKey(k.pub) }

// KeyID returns the TUF key id: the hex SHA-256 of the canonical JSON of
// Public(), as go-tuf computes it.
func (k *PrivateKey) KeyID() string { return k.id }

// Alg returns the key's algorithm.
func (k *PrivateKey) Alg() Algorithm { return k.alg }

// Signer returns a Signer that signs with k.
func (k *PrivateKey) Signer() Signer { return &keySigner{Signer: k.signer, pub: k.pub, id: k.id} }

// Signer signs TUF metadata. It is a sigstore signature.Signer, which is what
// go-tuf's (*metadata.Metadata[T]).Sign takes, plus the TUF key it signs for,
// so callers can check a key is authorised before signing. A KMS or PKCS#11
// signer can implement it later without touching the callers.
type Signer interface {
	signature.Signer
	// Key returns the TUF public key; callers may modify the copy.
	Key() *metadata.Key
	// KeyID returns the TUF key id of Key().
	KeyID() string
}

// keySigner is the Signer of an in-memory PrivateKey.
type keySigner struct {
	signature.Signer
	pub *metadata.Key
	id  string
}

var _ Signer = (*keySigner)(nil)

func (s *keySigner) Key() *metadata.Key { return copyKey(s.pub) }

func (s *keySigner) KeyID() string { return s.id }

// copyKey copies the exported fields of k; metadata.Key caches its id in an
// unexported field, which a copy recomputes on demand.
func copyKey(k *metadata.Key) *metadata.Key {
	return &metadata.Key{
		Type:               k.Type,
		Scheme:             k.Scheme,
		Value:              metadata.KeyVal{PublicKey: k.Value.PublicKey, UnrecognizedFields: maps.Clone(k.Value.UnrecognizedFields)},
		UnrecognizedFields: maps.Clone(k.UnrecognizedFields),
	}
}
