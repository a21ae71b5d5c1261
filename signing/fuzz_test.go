package signing

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// fuzzLimits keep scrypt cheap while fuzzing: a mutated n within the real
// limits would cost seconds per input. The seeds use n=1024, r=8, p=1.
var fuzzLimits = kdfLimits{maxMem: 1 << 13, maxWork: 1 << 13}

// realKeyFiles returns the files in testdata/keys.
func realKeyFiles(tb testing.TB) [][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "keys", "*"))
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	for _, p := range paths {
		if strings.HasSuffix(p, ".id") {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// malformedKeyFiles are hand-made broken variants of a real key file.
func malformedKeyFiles(tb testing.TB, enc []byte) [][]byte {
	tb.Helper()
	kdf := func(field string, v any) []byte {
		return editJSON(tb, enc, func(m map[string]any) { m["kdf"].(map[string]any)[field] = v })
	}
	pub := func(keytype, scheme, public string) []byte {
		return editJSON(tb, enc, func(m map[string]any) {
			m["public"] = map[string]any{"keytype": keytype, "scheme": scheme, "keyval": map[string]any{"public": public}}
		})
	}
	return [][]byte{
		nil, []byte("{}"), []byte("null"), []byte("[]"), []byte(`"x"`),
		[]byte(`{"type":"ota-signing-key","version":1}`),
		[]byte(`{"type":"ota-signing-key","version":1,"keyid":"","public":{}}`),
		kdf("n", 0), kdf("n", 1<<62), kdf("r", -1), kdf("p", 1<<40), kdf("salt", ""),
		editJSON(tb, enc, func(m map[string]any) { m["cipher"].(map[string]any)["nonce"] = "" }),
		editJSON(tb, enc, func(m map[string]any) { m["ciphertext"] = "" }),
		editJSON(tb, enc, func(m map[string]any) { m["private"] = "MC4CAQAwBQYDK2VwBCIEIA==" }),
		pub("ed25519", "ed25519", strings.Repeat("ab", 31)),
		pub("ecdsa", "ecdsa-sha2-nistp256", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
		pub("rsa", "rsassa-pss-sha256", ""),
	}
}

func FuzzParsePrivateKey(f *testing.F) {
	ed, ec := seededKey(f, "fuzz"), mustGenerate(f, AlgECDSAP256)
	enc := mustEncrypt(f, ed, testPass)
	for _, data := range [][]byte{enc, mustEncrypt(f, ec, testPass), mustUnencrypted(f, ed), mustUnencrypted(f, ec)} {
		f.Add(data, testPass)
		f.Add(data, []byte(nil))
	}
	f.Add(enc, []byte("wrong"))
	for _, data := range realKeyFiles(f) {
		f.Add(data, testPass)
	}
	for _, data := range malformedKeyFiles(f, enc) {
		f.Add(data, testPass)
	}
	f.Fuzz(func(t *testing.T, data, pass []byte) {
		k, err := parsePrivateKey(data, pass, fuzzLimits)
		if err != nil {
			if k != nil {
				t.Fatalf("got a key and error %v", err)
			}
			return
		}
		id, err := k.Public().ID()
		if err != nil || id != k.KeyID() {
			t.Fatalf("key id %s, Public().ID() = %s, %v", k.KeyID(), id, err)
		}
		// Whatever parses as a private key also gives its public half.
		pub, err := ParsePublicKey(data)
		if err != nil {
			t.Fatalf("ParsePrivateKey accepts the file, ParsePublicKey says %v", err)
		}
		if pid, _ := pub.ID(); pid != id {
			t.Fatalf("public half %s, private key %s", pid, id)
		}
		if err := VerifySignature(pub, data, mustSign(t, k, data)); err != nil {
			t.Fatalf("parsed key cannot sign: %v", err)
		}
		again, err := ParsePrivateKey(mustUnencrypted(t, k), nil)
		if err != nil || again.KeyID() != id {
			t.Fatalf("re-marshalled key: %v", err)
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	ed, ec := seededKey(f, "fuzz"), mustGenerate(f, AlgECDSAP256)
	enc := mustEncrypt(f, ed, testPass)
	for _, k := range []*PrivateKey{ed, ec} {
		pub, err := MarshalPublicKey(k.Public())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pub)
		f.Add(mustUnencrypted(f, k))
	}
	f.Add(enc)
	for _, data := range realKeyFiles(f) {
		f.Add(data)
	}
	for _, data := range malformedKeyFiles(f, enc) {
		f.Add(data)
	}
	for _, k := range malformedKeys(f) {
		if k == nil {
			continue
		}
		b, err := k.MarshalJSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePublicKey(data)
		if err != nil {
			if k != nil {
				t.Fatalf("got a key and error %v", err)
			}
			return
		}
		if err := ValidateKey(k); err != nil {
			t.Fatalf("ParsePublicKey returned a key ValidateKey refuses: %v", err)
		}
		id, err := k.ID()
		if err != nil {
			t.Fatal(err)
		}
		out, err := MarshalPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParsePublicKey(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if aid, _ := again.ID(); aid != id {
			t.Fatalf("round trip changed the key id from %s to %s", id, aid)
		}
		_ = VerifySignature(k, data, data)
	})
}

// FuzzVerifySignature feeds arbitrary key fields and signatures. Nothing
// may panic; a signature VerifySignature accepts must also pass go-tuf's
// own verification path, and CountValid must agree with VerifySignature.
func FuzzVerifySignature(f *testing.F) {
	ed, ec := seededKey(f, "fuzz"), mustGenerate(f, AlgECDSAP256)
	payload := []byte(`{"_type":"targets","version":1}`)
	edSig, ecSig := mustSign(f, ed, payload), mustSign(f, ec, payload)
	edPub, ecPub := ed.Public().Value.PublicKey, ec.Public().Value.PublicKey
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	seeds := []struct {
		keytype, scheme, public string
		sig                     []byte
	}{
		{"ed25519", "ed25519", edPub, edSig},
		{"ed25519", "ed25519", strings.ToUpper(edPub), edSig},
		{"ecdsa", "ecdsa-sha2-nistp256", ecPub, ecSig},
		{"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", ecPub, ecSig},
		{"ecdsa", "ecdsa-sha2-nistp256", ecPub, p1363(f, ecSig)},
		{"ecdsa", "ecdsa-sha2-nistp256", ecPub, append(bytes.Clone(ecSig), 0)},
		{"ed25519", "ed25519", edPub[:62], edSig},
		{"ed25519", "ed25519", edPub + "00", edSig},
		{"ed25519", "ed25519", "", nil},
		{"ed25519", "ed448", edPub, edSig},
		{"ed25519", "ecdsa-sha2-nistp256", edPub, edSig},
		{"ecdsa", "ecdsa-sha2-nistp256", "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n", ecSig},
		{"ecdsa", "ecdsa-sha2-nistp256", pemPublic(f, &p384.PublicKey), ecSig},
		{"ecdsa", "ecdsa-sha2-nistp384", pemPublic(f, &p384.PublicKey), ecSig},
		{"ecdsa", "ecdsa-sha2-nistp256", pemPublic(f, ed.priv.(ed25519.PrivateKey).Public()), ecSig},
		{"rsa", "rsassa-pss-sha256", ecPub, ecSig},
		{"", "", "", nil},
	}
	for _, s := range seeds {
		f.Add(s.keytype, s.scheme, s.public, payload, s.sig)
	}
	f.Fuzz(func(t *testing.T, keytype, scheme, public string, payload, sig []byte) {
		k := &metadata.Key{Type: keytype, Scheme: scheme, Value: metadata.KeyVal{PublicKey: public}}
		err := VerifySignature(k, payload, sig)
		if err == nil {
			pub, err := k.ToPublicKey()
			if err != nil {
				t.Fatalf("accepted a key go-tuf cannot load: %v", err)
			}
			hash := crypto.SHA256
			if keytype == metadata.KeyTypeEd25519 {
				hash = crypto.Hash(0)
			}
			v, err := signature.LoadVerifier(pub, hash)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)); err != nil {
				t.Fatalf("accepted a signature go-tuf rejects: %v", err)
			}
		}
		id, idErr := copyKey(k).ID()
		if idErr != nil {
			return
		}
		valid := CountValid(map[string]*metadata.Key{id: k}, Threshold{KeyIDs: []string{id, id}, Threshold: 1},
			payload, []metadata.Signature{{KeyID: id, Signature: sig}})
		if (len(valid) == 1) != (err == nil) || len(valid) > 1 {
			t.Fatalf("CountValid = %v, VerifySignature = %v", valid, err)
		}
	})
}
