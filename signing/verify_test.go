package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// pemPublic returns pub as a PEM "PUBLIC KEY" block.
func pemPublic(tb testing.TB, pub crypto.PublicKey) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// key builds a TUF key object from its three fields.
func key(keytype, scheme, public string) *metadata.Key {
	return &metadata.Key{Type: keytype, Scheme: scheme, Value: metadata.KeyVal{PublicKey: public}}
}

// malformedKeys are keys from outside that must be refused, not panic.
func malformedKeys(tb testing.TB) map[string]*metadata.Key {
	tb.Helper()
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	p256 := mustGenerate(tb, AlgECDSAP256).Public().Value.PublicKey
	withPrivate := mustGenerate(tb, AlgEd25519).Public()
	withPrivate.Value.UnrecognizedFields = map[string]any{"private": "secret"}
	withExtra := mustGenerate(tb, AlgEd25519).Public()
	withExtra.UnrecognizedFields = map[string]any{"keyid_hash_algorithms": []any{"sha256"}}
	return map[string]*metadata.Key{
		"nil":                       nil,
		"empty":                     {},
		"ed25519 31 bytes":          key("ed25519", "ed25519", strings.Repeat("ab", 31)),
		"ed25519 33 bytes":          key("ed25519", "ed25519", strings.Repeat("ab", 33)),
		"ed25519 empty":             key("ed25519", "ed25519", ""),
		"ed25519 not hex":           key("ed25519", "ed25519", strings.Repeat("zz", 32)),
		"ed25519 as PEM":            key("ed25519", "ed25519", pemPublic(tb, edPub)),
		"unknown scheme":            key("ed25519", "ed448", hex.EncodeToString(edPub)),
		"ed25519 with ecdsa scheme": key("ed25519", "ecdsa-sha2-nistp256", hex.EncodeToString(edPub)),
		"rsa":                       key("rsa", "rsassa-pss-sha256", p256),
		"bad PEM":                   key("ecdsa", "ecdsa-sha2-nistp256", "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n"),
		"not PEM":                   key("ecdsa", "ecdsa-sha2-nistp256", "hello"),
		"PEM private key type":      key("ecdsa", "ecdsa-sha2-nistp256", strings.ReplaceAll(p256, "PUBLIC KEY", "PRIVATE KEY")),
		"PEM trailing data":         key("ecdsa", "ecdsa-sha2-nistp256", p256+"garbage"),
		"PEM headers":               key("ecdsa", "ecdsa-sha2-nistp256", strings.Replace(p256, "-----\n", "-----\nProc-Type: 4,ENCRYPTED\n\n", 1)),
		"ecdsa p384":                key("ecdsa", "ecdsa-sha2-nistp256", pemPublic(tb, &p384.PublicKey)),
		"ecdsa p384 scheme":         key("ecdsa", "ecdsa-sha2-nistp384", pemPublic(tb, &p384.PublicKey)),
		"ed25519 in ecdsa PEM":      key("ecdsa", "ecdsa-sha2-nistp256", pemPublic(tb, edPub)),
		"keyval private":            withPrivate,
		"extra top-level field":     withExtra,
	}
}

func TestValidateKey(t *testing.T) {
	ec := mustGenerate(t, AlgECDSAP256).Public()
	ed := mustGenerate(t, AlgEd25519).Public()
	good := map[string]*metadata.Key{
		"ed25519":                     ed,
		"ed25519 upper-case hex":      key("ed25519", "ed25519", strings.ToUpper(ed.Value.PublicKey)),
		"ecdsa":                       ec,
		"ecdsa-sha2-nistp256 keytype": key("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", ec.Value.PublicKey),
		"ecdsa PEM trailing newlines": key("ecdsa", "ecdsa-sha2-nistp256", ec.Value.PublicKey+"\n\n"),
	}
	for name, k := range good {
		t.Run(name, func(t *testing.T) {
			if err := ValidateKey(k); err != nil {
				t.Errorf("got %v, want nil", err)
			}
		})
	}
	for name, k := range malformedKeys(t) {
		t.Run(name, func(t *testing.T) {
			if err := ValidateKey(k); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("got %v, want ErrInvalidKey", err)
			}
		})
	}
}

// p1363 re-encodes a DER ECDSA signature as raw r||s.
func p1363(tb testing.TB, der []byte) []byte {
	tb.Helper()
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		tb.Fatal(err)
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out
}

func TestVerifySignature(t *testing.T) {
	ed, ed2 := mustGenerate(t, AlgEd25519), mustGenerate(t, AlgEd25519)
	ec, ec2 := mustGenerate(t, AlgECDSAP256), mustGenerate(t, AlgECDSAP256)
	payload := []byte(`{"_type":"targets","spec_version":"1.0.31","version":3}`)
	edSig, ecSig := mustSign(t, ed, payload), mustSign(t, ec, payload)
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 1; return b }
	ecCompat := key("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", ec.Public().Value.PublicKey)
	raw := p1363(t, ecSig)
	// sigstore alone accepts raw r||s; VerifySignature must not.
	v, err := signature.LoadVerifier(mustPub(t, ec.Public()), crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.VerifySignature(bytes.NewReader(raw), bytes.NewReader(payload)); err != nil {
		t.Fatalf("sigstore rejects the P1363 signature (%v); the test no longer shows anything", err)
	}
	tests := []struct {
		name    string
		key     *metadata.Key
		payload []byte
		sig     []byte
		wantErr error
	}{
		{"ed25519 good", ed.Public(), payload, edSig, nil},
		{"ecdsa good", ec.Public(), payload, ecSig, nil},
		{"ecdsa spec keytype good", ecCompat, payload, ecSig, nil},
		{"ed25519 wrong key", ed2.Public(), payload, edSig, ErrBadSignature},
		{"ecdsa wrong key", ec2.Public(), payload, ecSig, ErrBadSignature},
		{"ed25519 sig for ecdsa key", ec.Public(), payload, edSig, ErrBadSignature},
		{"ed25519 flipped sig bit", ed.Public(), payload, flip(edSig, 10), ErrBadSignature},
		{"ecdsa flipped sig bit", ec.Public(), payload, flip(ecSig, len(ecSig)-1), ErrBadSignature},
		{"ed25519 flipped payload bit", ed.Public(), flip(payload, 3), edSig, ErrBadSignature},
		{"ecdsa flipped payload bit", ec.Public(), flip(payload, 3), ecSig, ErrBadSignature},
		{"ed25519 truncated", ed.Public(), payload, edSig[:63], ErrBadSignature},
		{"ecdsa truncated", ec.Public(), payload, ecSig[:len(ecSig)-1], ErrBadSignature},
		{"ed25519 extended", ed.Public(), payload, append(bytes.Clone(edSig), 0), ErrBadSignature},
		{"ecdsa DER trailing byte", ec.Public(), payload, append(bytes.Clone(ecSig), 0), ErrBadSignature},
		{"ecdsa P1363", ec.Public(), payload, raw, ErrBadSignature},
		{"ed25519 empty sig", ed.Public(), payload, nil, ErrBadSignature},
		{"ecdsa empty sig", ec.Public(), payload, nil, ErrBadSignature},
		{"ecdsa zero r s", ec.Public(), payload, []byte{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00}, ErrBadSignature},
		{"empty payload", ed.Public(), nil, edSig, ErrBadSignature},
	}
	for name, k := range malformedKeys(t) {
		tests = append(tests, struct {
			name    string
			key     *metadata.Key
			payload []byte
			sig     []byte
			wantErr error
		}{"malformed key: " + name, k, payload, edSig, ErrInvalidKey})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifySignature(tc.key, tc.payload, tc.sig)
			if tc.wantErr == nil && err != nil || !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func mustPub(tb testing.TB, k *metadata.Key) crypto.PublicKey {
	tb.Helper()
	p, err := k.ToPublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestCountValid(t *testing.T) {
	ed1, ed2 := seededKey(t, "engineer-1"), seededKey(t, "engineer-2")
	ec := mustGenerate(t, AlgECDSAP256)
	outsider := mustGenerate(t, AlgEd25519)
	payload := []byte(`{"_type":"root","version":2}`)

	// The same ECDSA key under the spec's keytype has another key id.
	ecCompat := key("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", ec.Public().Value.PublicKey)
	ecCompatID, err := ecCompat.ID()
	if err != nil {
		t.Fatal(err)
	}
	short := key("ed25519", "ed25519", strings.Repeat("ab", 31))
	keys := map[string]*metadata.Key{
		ed1.KeyID(): ed1.Public(), ed2.KeyID(): ed2.Public(), ec.KeyID(): ec.Public(),
		ecCompatID: ecCompat, "short": short, "nil": nil,
	}
	sig := func(k *PrivateKey) metadata.Signature {
		return metadata.Signature{KeyID: k.KeyID(), Signature: mustSign(t, k, payload)}
	}
	as := func(id string, s metadata.Signature) metadata.Signature { s.KeyID = id; return s }
	bad := func(k *PrivateKey) metadata.Signature {
		return metadata.Signature{KeyID: k.KeyID(), Signature: mustSign(t, k, []byte("other payload"))}
	}
	tests := []struct {
		name   string
		keyIDs []string
		sigs   []metadata.Signature
		want   []string
	}{
		{"all good, role order", []string{ec.KeyID(), ed1.KeyID(), ed2.KeyID()},
			[]metadata.Signature{sig(ed1), sig(ec), sig(ed2)}, []string{ec.KeyID(), ed1.KeyID(), ed2.KeyID()}},
		{"one of two signed", []string{ed1.KeyID(), ed2.KeyID()},
			[]metadata.Signature{sig(ed2)}, []string{ed2.KeyID()}},
		{"no signatures", []string{ed1.KeyID()}, nil, nil},
		{"empty role", nil, []metadata.Signature{sig(ed1)}, nil},
		{"key id listed twice", []string{ed1.KeyID(), ed1.KeyID()},
			[]metadata.Signature{sig(ed1)}, []string{ed1.KeyID()}},
		{"signature given twice", []string{ed1.KeyID()},
			[]metadata.Signature{sig(ed1), sig(ed1)}, []string{ed1.KeyID()}},
		{"two good ecdsa signatures by one key", []string{ec.KeyID()},
			[]metadata.Signature{sig(ec), sig(ec)}, []string{ec.KeyID()}},
		{"good then bad by one key", []string{ed1.KeyID(), ed2.KeyID()},
			[]metadata.Signature{sig(ed1), bad(ed1), sig(ed2)}, []string{ed2.KeyID()}},
		{"bad then good by one key", []string{ed1.KeyID(), ed2.KeyID()},
			[]metadata.Signature{bad(ed1), sig(ed1), sig(ed2)}, []string{ed2.KeyID()}},
		{"bad signature", []string{ed1.KeyID(), ec.KeyID()},
			[]metadata.Signature{bad(ed1), bad(ec)}, nil},
		{"signature under another listed key's id", []string{ed1.KeyID(), ed2.KeyID()},
			[]metadata.Signature{as(ed2.KeyID(), sig(ed1))}, nil},
		{"signer not in role", []string{ed1.KeyID()},
			[]metadata.Signature{sig(outsider), sig(ed2)}, nil},
		{"role id missing from keys", []string{outsider.KeyID(), ed1.KeyID()},
			[]metadata.Signature{sig(outsider), sig(ed1)}, []string{ed1.KeyID()}},
		{"malformed key skipped", []string{"short", "nil", ed1.KeyID()},
			[]metadata.Signature{as("short", sig(ed1)), as("nil", sig(ed1)), sig(ed1)}, []string{ed1.KeyID()}},
		{"one public key under two ids", []string{ec.KeyID(), ecCompatID},
			[]metadata.Signature{sig(ec), as(ecCompatID, sig(ec))}, []string{ec.KeyID()}},
		{"garbage signatures", []string{ed1.KeyID(), ec.KeyID()},
			[]metadata.Signature{{KeyID: ed1.KeyID()}, {KeyID: ec.KeyID(), Signature: []byte{0x30}}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := CountValid(keys, Threshold{KeyIDs: tc.keyIDs, Threshold: 1}, payload, tc.sigs)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	if got := CountValid(nil, Threshold{KeyIDs: []string{ed1.KeyID()}}, payload, []metadata.Signature{sig(ed1)}); got != nil {
		t.Errorf("nil keys: got %v, want none", got)
	}
}

func TestCanonicalSigned(t *testing.T) {
	k := seededKey(t, "engineer-1")
	tg := metadata.Targets(fixedExpire)
	tg.Signed.Version = 3
	tg.Signed.Targets["patch.bin"] = &metadata.TargetFiles{
		Length: 42,
		Hashes: metadata.Hashes{"sha256": bytes.Repeat([]byte{0xab}, 32)},
		Path:   "patch.bin",
	}
	sig, err := tg.Sign(k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	payload, err := CanonicalSigned(tg.Signed)
	if err != nil {
		t.Fatal(err)
	}
	// The bytes go-tuf signed are exactly these.
	if err := VerifySignature(k.Public(), payload, sig.Signature); err != nil {
		t.Errorf("go-tuf's signature does not verify over CanonicalSigned: %v", err)
	}
	fromMeta, err := CanonicalSigned(tg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fromMeta, payload) {
		t.Errorf("CanonicalSigned(md) = %s, want %s", fromMeta, payload)
	}
	// A client or the server decodes the "signed" object generically.
	raw, err := tg.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	var env struct{ Signed any }
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	fromMap, err := CanonicalSigned(env.Signed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fromMap, payload) {
		t.Errorf("CanonicalSigned(decoded map) = %s, want %s", fromMap, payload)
	}
	if bytes.ContainsAny(payload, " \n") {
		t.Errorf("canonical JSON has white space: %s", payload)
	}

	for name, v := range map[string]any{
		"nil":                nil,
		"typed nil metadata": (*metadata.Metadata[metadata.RootType])(nil),
		"typed nil pointer":  (*metadata.TargetsType)(nil),
		"float":              map[string]any{"x": 1.5},
		"channel":            make(chan int),
	} {
		if b, err := CanonicalSigned(v); err == nil {
			t.Errorf("%s: got %s, want an error", name, b)
		}
	}
}

// TestSignatureHashes pins the signing schemes other clients expect:
// Ed25519 over the message itself, ECDSA over its SHA-256 in ASN.1 DER.
func TestSignatureHashes(t *testing.T) {
	payload := []byte("pinned")
	ed := mustGenerate(t, AlgEd25519)
	if !ed25519.Verify(ed.priv.(ed25519.PrivateKey).Public().(ed25519.PublicKey), payload, mustSign(t, ed, payload)) {
		t.Errorf("ed25519 signature is not plain Ed25519 over the payload")
	}
	ec := mustGenerate(t, AlgECDSAP256)
	digest := sha256.Sum256(payload)
	if !ecdsa.VerifyASN1(&ec.priv.(*ecdsa.PrivateKey).PublicKey, digest[:], mustSign(t, ec, payload)) {
		t.Errorf("ecdsa signature is not ASN.1 ECDSA over SHA-256(payload)")
	}
}
