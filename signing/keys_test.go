package signing

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

var algs = []Algorithm{AlgEd25519, AlgECDSAP256}

// fixedExpire keeps metadata built in tests independent of the clock.
var fixedExpire = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// mustGenerate returns a new random key for alg.
func mustGenerate(tb testing.TB, alg Algorithm) *PrivateKey {
	tb.Helper()
	k, err := Generate(alg)
	if err != nil {
		tb.Fatalf("Generate(%q): %v", alg, err)
	}
	return k
}

// seededKey returns the Ed25519 key whose seed is sha256(name): the same key
// on every run, for deterministic signatures and files.
func seededKey(tb testing.TB, name string) *PrivateKey {
	tb.Helper()
	seed := sha256.Sum256([]byte(name))
	k, err := NewPrivateKey(ed25519.NewKeyFromSeed(seed[:]))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// mustSign signs payload with k's Signer the way go-tuf's Sign does.
func mustSign(tb testing.TB, k *PrivateKey, payload []byte) []byte {
	tb.Helper()
	sig, err := k.Signer().SignMessage(bytes.NewReader(payload))
	if err != nil {
		tb.Fatal(err)
	}
	return sig
}

func TestGenerate(t *testing.T) {
	tests := []struct {
		alg        Algorithm
		keytype    string
		scheme     string
		publicSize int // length of keyval.public; 0 = PEM, not checked
	}{
		{AlgEd25519, "ed25519", "ed25519", 64},
		{AlgECDSAP256, "ecdsa", "ecdsa-sha2-nistp256", 0},
	}
	for _, tc := range tests {
		t.Run(string(tc.alg), func(t *testing.T) {
			k := mustGenerate(t, tc.alg)
			if got := k.Alg(); got != tc.alg {
				t.Errorf("Alg() = %q, want %q", got, tc.alg)
			}
			pub := k.Public()
			if pub.Type != tc.keytype || pub.Scheme != tc.scheme {
				t.Errorf("got keytype/scheme %q/%q, want %q/%q", pub.Type, pub.Scheme, tc.keytype, tc.scheme)
			}
			if tc.publicSize != 0 && len(pub.Value.PublicKey) != tc.publicSize {
				t.Errorf("got public key of %d chars, want %d", len(pub.Value.PublicKey), tc.publicSize)
			}
			if err := ValidateKey(pub); err != nil {
				t.Errorf("ValidateKey(Public()) = %v, want nil", err)
			}
			id, err := pub.ID()
			if err != nil {
				t.Fatal(err)
			}
			if k.KeyID() != id {
				t.Errorf("KeyID() = %s, want go-tuf's id %s", k.KeyID(), id)
			}
			if k2 := mustGenerate(t, tc.alg); k2.KeyID() == k.KeyID() {
				t.Errorf("two generated keys share id %s", k.KeyID())
			}
		})
	}
}

func TestGenerateUnsupported(t *testing.T) {
	for _, alg := range []Algorithm{"", "rsa", "ecdsa-p384", "Ed25519"} {
		if _, err := Generate(alg); !errors.Is(err, ErrUnsupportedAlgorithm) {
			t.Errorf("Generate(%q) error = %v, want ErrUnsupportedAlgorithm", alg, err)
		}
	}
}

func TestNewPrivateKey(t *testing.T) {
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wrongHalf := ed25519.PrivateKey(bytes.Clone(edPriv))
	wrongHalf[63] ^= 1
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		priv    any
		wantErr error
	}{
		{"ed25519", edPriv, nil},
		{"ecdsa p256", p256, nil},
		{"ed25519 short", edPriv[:32], ErrInvalidKey},
		{"ed25519 wrong public half", wrongHalf, ErrKeyMismatch},
		{"ecdsa p384", p384, ErrUnsupportedAlgorithm},
		{"ecdsa nil", (*ecdsa.PrivateKey)(nil), ErrUnsupportedAlgorithm},
		{"ed25519 pointer", &edPriv, ErrUnsupportedAlgorithm},
		{"nil", nil, ErrUnsupportedAlgorithm},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPrivateKey(tc.priv)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got error %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestNewPrivateKeyCopiesEd25519(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	clear(priv) // the caller wipes its copy
	payload := []byte("payload")
	if err := VerifySignature(k.Public(), payload, mustSign(t, k, payload)); err != nil {
		t.Errorf("after the caller cleared its slice: %v, want a working key", err)
	}
}

func TestSeededKeyIsDeterministic(t *testing.T) {
	a, b := seededKey(t, "engineer-1"), seededKey(t, "engineer-1")
	if a.KeyID() != b.KeyID() {
		t.Fatalf("got ids %s and %s, want equal", a.KeyID(), b.KeyID())
	}
	payload := []byte("golden")
	if !bytes.Equal(mustSign(t, a, payload), mustSign(t, b, payload)) {
		t.Errorf("got different ed25519 signatures for one key and payload, want equal")
	}
}

func TestPublicReturnsCopy(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	p := k.Public()
	p.Value.PublicKey = "00"
	p.Scheme = "x"
	if got := k.Public(); got.Value.PublicKey == "00" || got.Scheme == "x" {
		t.Errorf("modifying Public()'s result changed the key: %+v", got)
	}
	s := k.Signer()
	sk := s.Key()
	sk.Type = "x"
	if s.Key().Type == "x" {
		t.Errorf("modifying Signer().Key() changed the signer's key")
	}
}

func TestSignerMatchesKey(t *testing.T) {
	for _, alg := range algs {
		t.Run(string(alg), func(t *testing.T) {
			k := mustGenerate(t, alg)
			s := k.Signer()
			if s.KeyID() != k.KeyID() {
				t.Errorf("Signer().KeyID() = %s, want %s", s.KeyID(), k.KeyID())
			}
			// go-tuf names a signature by KeyFromPublicKey(signer.PublicKey()).
			pub, err := s.PublicKey()
			if err != nil {
				t.Fatal(err)
			}
			tk, err := metadata.KeyFromPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			id, err := tk.ID()
			if err != nil {
				t.Fatal(err)
			}
			if id != k.KeyID() {
				t.Errorf("go-tuf computes id %s for the signer, want %s", id, k.KeyID())
			}
			skid, err := s.Key().ID()
			if err != nil {
				t.Fatal(err)
			}
			if skid != k.KeyID() {
				t.Errorf("Signer().Key().ID() = %s, want %s", skid, k.KeyID())
			}
		})
	}
}

func TestSignVerify(t *testing.T) {
	for _, alg := range algs {
		t.Run(string(alg), func(t *testing.T) {
			k := mustGenerate(t, alg)
			payload := []byte(`{"_type":"targets","version":1}`)
			sig := mustSign(t, k, payload)
			if err := VerifySignature(k.Public(), payload, sig); err != nil {
				t.Errorf("VerifySignature = %v, want nil", err)
			}
			if err := VerifySignature(k.Public(), append(payload, ' '), sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("other payload: got %v, want ErrBadSignature", err)
			}
		})
	}
}

// rootFor returns a root whose targets role lists keys with threshold.
func rootFor(tb testing.TB, threshold int, keys ...*PrivateKey) *metadata.Metadata[metadata.RootType] {
	tb.Helper()
	root := metadata.Root(fixedExpire)
	for _, k := range keys {
		if err := root.Signed.AddKey(k.Public(), metadata.TARGETS); err != nil {
			tb.Fatal(err)
		}
	}
	root.Signed.Roles[metadata.TARGETS].Threshold = threshold
	return root
}

// signedTargets signs a targets metadata with keys and reloads it from its
// JSON, as a client receives it.
func signedTargets(tb testing.TB, keys ...*PrivateKey) *metadata.Metadata[metadata.TargetsType] {
	tb.Helper()
	tg := metadata.Targets(fixedExpire)
	tg.Signed.Version = 7
	for _, k := range keys {
		if _, err := tg.Sign(k.Signer()); err != nil {
			tb.Fatal(err)
		}
	}
	b, err := tg.ToBytes(false)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := metadata.Targets().FromBytes(b)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestGoTUFVerifyDelegate is the contract with the clients: metadata signed
// through Signer passes go-tuf's own threshold check on a root listing the
// key, for both algorithms.
func TestGoTUFVerifyDelegate(t *testing.T) {
	ed1, ed2 := mustGenerate(t, AlgEd25519), mustGenerate(t, AlgEd25519)
	ec1 := mustGenerate(t, AlgECDSAP256)
	outsider := mustGenerate(t, AlgEd25519)
	tests := []struct {
		name      string
		listed    []*PrivateKey
		threshold int
		signers   []*PrivateKey
		wantOK    bool
	}{
		{"ed25519 1 of 1", []*PrivateKey{ed1}, 1, []*PrivateKey{ed1}, true},
		{"ecdsa 1 of 1", []*PrivateKey{ec1}, 1, []*PrivateKey{ec1}, true},
		{"mixed 2 of 3", []*PrivateKey{ed1, ec1, ed2}, 2, []*PrivateKey{ec1, ed2}, true},
		{"2 of 3 with one signature", []*PrivateKey{ed1, ec1, ed2}, 2, []*PrivateKey{ec1}, false},
		{"unlisted signer", []*PrivateKey{ed1}, 1, []*PrivateKey{outsider}, false},
		{"unsigned", []*PrivateKey{ed1}, 1, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := rootFor(t, tc.threshold, tc.listed...)
			tg := signedTargets(t, tc.signers...)
			err := root.VerifyDelegate(metadata.TARGETS, tg)
			if (err == nil) != tc.wantOK {
				t.Errorf("go-tuf VerifyDelegate = %v, want ok=%v", err, tc.wantOK)
			}
			// CountValid must agree with go-tuf on the same input.
			payload, err := CanonicalSigned(tg.Signed)
			if err != nil {
				t.Fatal(err)
			}
			role := root.Signed.Roles[metadata.TARGETS]
			valid := CountValid(root.Signed.Keys, Threshold{KeyIDs: role.KeyIDs, Threshold: role.Threshold}, payload, tg.Signatures)
			if met := len(valid) >= tc.threshold; met != tc.wantOK {
				t.Errorf("CountValid = %v (threshold %d), want met=%v", valid, tc.threshold, tc.wantOK)
			}
		})
	}
}
