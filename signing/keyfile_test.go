package signing

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// testScrypt keeps key files cheap in tests (N=32768 costs seconds under
// -race); one test checks that the exported functions use the default.
var testScrypt = scryptParams{N: 1 << 10, R: 8, P: 1}

var update = flag.Bool("update", false, "rewrite the key files in testdata/keys")

var testPass = []byte("correct horse battery staple")

// mustEncrypt returns k encrypted with passphrase at test cost.
func mustEncrypt(tb testing.TB, k *PrivateKey, passphrase []byte) []byte {
	tb.Helper()
	data, err := encryptKey(k, passphrase, testScrypt)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// mustUnencrypted returns k as an unencrypted key file.
func mustUnencrypted(tb testing.TB, k *PrivateKey) []byte {
	tb.Helper()
	data, err := MarshalUnencrypted(k)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// editJSON decodes data, lets edit change the object and encodes it again.
func editJSON(tb testing.TB, data []byte, edit func(m map[string]any)) []byte {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		tb.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// flipB64 flips one bit of the base64 value at m[k1][k2] (or m[k1]).
func flipB64(tb testing.TB, m map[string]any, path ...string) {
	tb.Helper()
	obj := m
	for _, p := range path[:len(path)-1] {
		obj = obj[p].(map[string]any)
	}
	last := path[len(path)-1]
	b, err := base64.StdEncoding.DecodeString(obj[last].(string))
	if err != nil {
		tb.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	obj[last] = base64.StdEncoding.EncodeToString(b)
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	for _, alg := range algs {
		t.Run(string(alg), func(t *testing.T) {
			k := mustGenerate(t, alg)
			data := mustEncrypt(t, k, testPass)
			if bytes.Contains(data, []byte("private")) {
				t.Errorf("encrypted file mentions \"private\":\n%s", data)
			}
			for name, parse := range map[string]func([]byte, []byte) (*PrivateKey, error){
				"DecryptKey": DecryptKey, "ParsePrivateKey": ParsePrivateKey,
			} {
				got, err := parse(data, testPass)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if got.KeyID() != k.KeyID() || got.Alg() != alg {
					t.Errorf("%s: got key %s (%s), want %s (%s)", name, got.KeyID(), got.Alg(), k.KeyID(), alg)
				}
				payload := []byte("round trip")
				if err := VerifySignature(k.Public(), payload, mustSign(t, got, payload)); err != nil {
					t.Errorf("%s: decrypted key signs badly: %v", name, err)
				}
			}
			// Re-indenting the file is harmless: the AEAD binds values, not bytes.
			var compact bytes.Buffer
			if err := json.Compact(&compact, data); err != nil {
				t.Fatal(err)
			}
			if _, err := DecryptKey(compact.Bytes(), testPass); err != nil {
				t.Errorf("compacted file: %v, want it to decrypt", err)
			}
		})
	}
}

func TestEncryptKeyDefaults(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("scrypt at full cost")
	}
	k := mustGenerate(t, AlgEd25519)
	data, err := EncryptKey(k, testPass)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Type    string `json:"type"`
		Version int    `json:"version"`
		KeyID   string `json:"keyid"`
		KDF     struct {
			Name    string `json:"name"`
			N, R, P int
			Salt    []byte `json:"salt"`
		} `json:"kdf"`
		Cipher struct {
			Name  string `json:"name"`
			Nonce []byte `json:"nonce"`
		} `json:"cipher"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	got := []any{f.Type, f.Version, f.KeyID, f.KDF.Name, f.KDF.N, f.KDF.R, f.KDF.P, len(f.KDF.Salt), f.Cipher.Name, len(f.Cipher.Nonce)}
	want := []any{"ota-signing-key", 1, k.KeyID(), "scrypt", 32768, 8, 1, 32, "xchacha20poly1305", 24}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("field %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if _, err := DecryptKey(data, testPass); err != nil {
		t.Errorf("DecryptKey: %v", err)
	}
	// Two encryptions of one key share neither salt nor nonce.
	data2, err := EncryptKey(k, testPass)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(data, data2) {
		t.Errorf("two encryptions gave the same file")
	}
}

func TestEncryptKeyRefusesEmptyPassphrase(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	for _, pass := range [][]byte{nil, {}} {
		if _, err := EncryptKey(k, pass); !errors.Is(err, ErrPassphraseRequired) {
			t.Errorf("EncryptKey(%q) error = %v, want ErrPassphraseRequired", pass, err)
		}
	}
	if _, err := EncryptKey(nil, testPass); err == nil {
		t.Errorf("EncryptKey(nil key) = nil error, want one")
	}
}

func TestDecryptWrongPassphrase(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	data := mustEncrypt(t, k, testPass)
	for _, pass := range []string{"correct horse battery stapl", "Correct horse battery staple", "x"} {
		_, err := DecryptKey(data, []byte(pass))
		if !errors.Is(err, ErrWrongPassphrase) {
			t.Errorf("passphrase %q: got %v, want ErrWrongPassphrase", pass, err)
		}
	}
	if _, err := DecryptKey(data, nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Errorf("no passphrase: got %v, want ErrPassphraseRequired", err)
	}
}

// TestDecryptTampered changes each part of the header: every change must
// stop decryption, and none may yield a key.
func TestDecryptTampered(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	other := mustGenerate(t, AlgEd25519)
	otherEC := mustGenerate(t, AlgECDSAP256)
	data := mustEncrypt(t, k, testPass)
	tests := []struct {
		name    string
		edit    func(m map[string]any)
		wantErr error
		wantMsg string
	}{
		{"ciphertext bit", func(m map[string]any) { flipB64(t, m, "ciphertext") }, ErrWrongPassphrase, ""},
		{"keyid", func(m map[string]any) { m["keyid"] = other.KeyID() }, ErrMalformedKeyFile, "does not match the public key"},
		// Public key and keyid swapped together pass the header checks; only
		// the AEAD's additional data catches the swap.
		{"public key and keyid", func(m map[string]any) {
			m["public"] = other.Public()
			m["keyid"] = other.KeyID()
		}, ErrWrongPassphrase, ""},
		{"public key to ecdsa and keyid", func(m map[string]any) {
			m["public"] = otherEC.Public()
			m["keyid"] = otherEC.KeyID()
		}, ErrWrongPassphrase, ""},
		{"public key only", func(m map[string]any) { m["public"] = other.Public() }, ErrMalformedKeyFile, "does not match the public key"},
		{"kdf n", func(m map[string]any) { m["kdf"].(map[string]any)["n"] = 2048 }, ErrWrongPassphrase, ""},
		{"kdf r", func(m map[string]any) { m["kdf"].(map[string]any)["r"] = 4 }, ErrWrongPassphrase, ""},
		{"kdf p", func(m map[string]any) { m["kdf"].(map[string]any)["p"] = 2 }, ErrWrongPassphrase, ""},
		{"kdf salt", func(m map[string]any) { flipB64(t, m, "kdf", "salt") }, ErrWrongPassphrase, ""},
		{"cipher nonce", func(m map[string]any) { flipB64(t, m, "cipher", "nonce") }, ErrWrongPassphrase, ""},
		{"version", func(m map[string]any) { m["version"] = 2 }, ErrMalformedKeyFile, "unsupported version 2"},
		{"type", func(m map[string]any) { m["type"] = "other" }, ErrMalformedKeyFile, `type "other"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bad := editJSON(t, data, tc.edit)
			got, err := DecryptKey(bad, testPass)
			if got != nil {
				t.Fatalf("got key %s from a tampered file, want none", got.KeyID())
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got error %v, want %v", err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestParsePrivateKeyMalformed(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	enc := mustEncrypt(t, k, testPass)
	plain := mustUnencrypted(t, k)
	kdf := func(field string, v any) func(m map[string]any) {
		return func(m map[string]any) { m["kdf"].(map[string]any)[field] = v }
	}
	tests := []struct {
		name    string
		data    []byte
		wantMsg string
	}{
		{"empty", nil, "malformed key file: empty input"},
		{"not json", []byte("-----BEGIN PRIVATE KEY-----"), "malformed key file: invalid character"},
		{"array", []byte("[]"), "malformed key file: json: cannot unmarshal array"},
		{"trailing data", append(bytes.Clone(enc), "{}"...), "data after the JSON object"},
		{"unknown field", editJSON(t, enc, func(m map[string]any) { m["ciphertxt"] = "" }), `unknown field "ciphertxt"`},
		{"no public", editJSON(t, enc, func(m map[string]any) { delete(m, "public") }), "no public key"},
		{"bad public", editJSON(t, enc, func(m map[string]any) {
			m["public"].(map[string]any)["keyval"] = map[string]any{"public": "abcd"}
		}), "ed25519 public key is 2 bytes"},
		{"public with private", editJSON(t, enc, func(m map[string]any) {
			m["public"].(map[string]any)["keyval"].(map[string]any)["private"] = "00"
		}), `unexpected field "private" in keyval`},
		{"no private part", editJSON(t, enc, func(m map[string]any) {
			delete(m, "kdf")
			delete(m, "cipher")
			delete(m, "ciphertext")
		}), "no private key"},
		{"both forms", editJSON(t, enc, func(m map[string]any) { m["private"] = "AAAA" }), "both a private key and a ciphertext"},
		{"no kdf", editJSON(t, enc, func(m map[string]any) { delete(m, "kdf") }), "no kdf"},
		{"no cipher", editJSON(t, enc, func(m map[string]any) { delete(m, "cipher") }), "no cipher"},
		{"no ciphertext", editJSON(t, enc, func(m map[string]any) { delete(m, "ciphertext") }), "no ciphertext"},
		{"kdf argon2", editJSON(t, enc, kdf("name", "argon2id")), `unsupported kdf "argon2id"`},
		{"n not power of two", editJSON(t, enc, kdf("n", 1000)), "scrypt n 1000 is not a power of two"},
		{"n one", editJSON(t, enc, kdf("n", 1)), "scrypt n 1 is not a power of two"},
		{"n negative", editJSON(t, enc, kdf("n", -1024)), "scrypt n -1024"},
		{"n huge", editJSON(t, enc, kdf("n", 1<<30)), "costs more than this program allows"},
		{"n overflow", editJSON(t, enc, kdf("n", 1<<62)), "costs more than this program allows"},
		{"r zero", editJSON(t, enc, kdf("r", 0)), "scrypt r 0 and p 1 must be positive"},
		{"r huge", editJSON(t, enc, kdf("r", 1<<40)), "costs more than this program allows"},
		{"p huge", editJSON(t, enc, kdf("p", 1<<20)), "costs more than this program allows"},
		{"n float", editJSON(t, enc, kdf("n", 1024.5)), "cannot unmarshal number 1024.5"},
		{"short salt", editJSON(t, enc, kdf("salt", "AAAA")), "salt is 3 bytes"},
		{"salt not base64", editJSON(t, enc, kdf("salt", "!!")), "illegal base64"},
		{"cipher aes", editJSON(t, enc, func(m map[string]any) { m["cipher"].(map[string]any)["name"] = "aes-256-gcm" }), `unsupported cipher "aes-256-gcm"`},
		{"short nonce", editJSON(t, enc, func(m map[string]any) { m["cipher"].(map[string]any)["nonce"] = "AAAAAAAAAAAAAAAA" }), "nonce is 12 bytes"},
		{"short ciphertext", editJSON(t, enc, func(m map[string]any) { m["ciphertext"] = "AAAA" }), "ciphertext is 3 bytes"},
		{"private not pkcs8", editJSON(t, plain, func(m map[string]any) { m["private"] = "AAAA" }), "malformed key file: private key:"},
		{"too large", append(bytes.Clone(enc), bytes.Repeat([]byte(" "), maxKeyFileSize)...), "more than 65536"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePrivateKey(tc.data, testPass)
			if got != nil {
				t.Fatalf("got key %s, want an error", got.KeyID())
			}
			if !errors.Is(err, ErrMalformedKeyFile) {
				t.Errorf("got error %v, want ErrMalformedKeyFile", err)
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestUnencrypted(t *testing.T) {
	for _, alg := range algs {
		t.Run(string(alg), func(t *testing.T) {
			k := mustGenerate(t, alg)
			data := mustUnencrypted(t, k)
			for _, pass := range [][]byte{nil, testPass} {
				got, err := ParsePrivateKey(data, pass)
				if err != nil {
					t.Fatalf("ParsePrivateKey(passphrase %q): %v", pass, err)
				}
				if got.KeyID() != k.KeyID() {
					t.Errorf("got key %s, want %s", got.KeyID(), k.KeyID())
				}
			}
			if _, err := DecryptKey(data, testPass); !errors.Is(err, ErrMalformedKeyFile) {
				t.Errorf("DecryptKey(unencrypted) error = %v, want ErrMalformedKeyFile", err)
			}
		})
	}
}

func TestEncryptedNeedsPassphrase(t *testing.T) {
	data := mustEncrypt(t, mustGenerate(t, AlgECDSAP256), testPass)
	for _, pass := range [][]byte{nil, {}} {
		if _, err := ParsePrivateKey(data, pass); !errors.Is(err, ErrPassphraseRequired) {
			t.Errorf("ParsePrivateKey(passphrase %q) error = %v, want ErrPassphraseRequired", pass, err)
		}
	}
}

// TestKeyMismatch builds files whose private key belongs to another public
// key, with a consistent header, as a buggy or hostile writer could.
func TestKeyMismatch(t *testing.T) {
	k, other := mustGenerate(t, AlgEd25519), mustGenerate(t, AlgEd25519)
	t.Run("unencrypted", func(t *testing.T) {
		otherPriv := editJSON(t, mustUnencrypted(t, other), func(map[string]any) {})
		var o map[string]any
		if err := json.Unmarshal(otherPriv, &o); err != nil {
			t.Fatal(err)
		}
		data := editJSON(t, mustUnencrypted(t, k), func(m map[string]any) { m["private"] = o["private"] })
		if _, err := ParsePrivateKey(data, nil); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("got %v, want ErrKeyMismatch", err)
		}
	})
	t.Run("encrypted", func(t *testing.T) {
		// Encrypt other's private key under k's header.
		swapped := *other
		swapped.id, swapped.pub = k.id, k.pub
		data := mustEncrypt(t, &swapped, testPass)
		if _, err := DecryptKey(data, testPass); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("got %v, want ErrKeyMismatch", err)
		}
	})
}

func TestPublicKeyFiles(t *testing.T) {
	for _, alg := range algs {
		t.Run(string(alg), func(t *testing.T) {
			k := mustGenerate(t, alg)
			pub, err := MarshalPublicKey(k.Public())
			if err != nil {
				t.Fatal(err)
			}
			if bytes.HasSuffix(pub, []byte("\n")) {
				t.Errorf("MarshalPublicKey ends in a newline; otactl adds its own")
			}
			inputs := map[string][]byte{
				"public key":      pub,
				"encrypted file":  mustEncrypt(t, k, testPass), // no passphrase needed
				"unencrypted key": mustUnencrypted(t, k),
			}
			for name, data := range inputs {
				got, err := ParsePublicKey(data)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				id, err := got.ID()
				if err != nil {
					t.Fatal(err)
				}
				if id != k.KeyID() {
					t.Errorf("%s: got key %s, want %s", name, id, k.KeyID())
				}
			}
		})
	}
}

func TestParsePublicKeyMalformed(t *testing.T) {
	k := mustGenerate(t, AlgEd25519)
	enc := mustEncrypt(t, k, testPass)
	tests := []struct {
		name    string
		data    string
		wantMsg string
	}{
		{"empty", "", "not a JSON object"},
		{"array", "[]", "not a JSON object"},
		{"string", `"ed25519"`, "not a JSON object"},
		{"short ed25519", `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"00"}}`, "ed25519 public key is 1 bytes"},
		{"unknown scheme", `{"keytype":"ed25519","scheme":"ed448","keyval":{"public":"00"}}`, `unsupported keytype/scheme "ed25519"/"ed448"`},
		{"extra field", `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"` + strings.Repeat("00", 32) + `"},"keyid":"x"}`, `unexpected field "keyid"`},
		{"trailing", `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"` + strings.Repeat("00", 32) + `"}} x`, "not a JSON object"},
		{"key file with bad keyid", string(editJSON(t, enc, func(m map[string]any) { m["keyid"] = "00" })), "does not match the public key"},
		{"key file v2", string(editJSON(t, enc, func(m map[string]any) { m["version"] = 2 })), "unsupported version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePublicKey([]byte(tc.data))
			if got != nil || err == nil {
				t.Fatalf("got key %+v, error %v, want an error", got, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("got error %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
	if _, err := MarshalPublicKey(nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("MarshalPublicKey(nil) error = %v, want ErrInvalidKey", err)
	}
}

func TestWriteKeyFile(t *testing.T) {
	dir := t.TempDir()
	k := mustGenerate(t, AlgEd25519)
	enc := filepath.Join(dir, "engineer.key")
	if err := writeKeyFile(enc, k, testPass, testScrypt); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "online-key.json")
	if err := WriteUnencryptedKeyFile(plain, k); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{enc, plain} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: got mode %v, want 0600", filepath.Base(path), fi.Mode().Perm())
		}
	}
	got, err := ReadKeyFile(enc, testPass)
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyID() != k.KeyID() {
		t.Errorf("ReadKeyFile: got key %s, want %s", got.KeyID(), k.KeyID())
	}
	if got, err := ReadKeyFile(plain, nil); err != nil || got.KeyID() != k.KeyID() {
		t.Errorf("ReadKeyFile(unencrypted) = %v, %v, want key %s", got, err, k.KeyID())
	}
	if _, err := ReadKeyFile(enc, []byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
		t.Errorf("ReadKeyFile(wrong passphrase) error = %v, want ErrWrongPassphrase", err)
	}
	if _, err := ReadKeyFile(filepath.Join(dir, "missing"), testPass); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadKeyFile(missing) error = %v, want os.ErrNotExist", err)
	}
}

func TestWriteKeyFileDefaultCost(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("scrypt at full cost")
	}
	path := filepath.Join(t.TempDir(), "k")
	k := mustGenerate(t, AlgECDSAP256)
	if err := WriteKeyFile(path, k, testPass); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(`"n": 32768`)) {
		t.Errorf("WriteKeyFile did not use n=32768:\n%s", data)
	}
}

func TestWriteKeyFileRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	k := mustGenerate(t, AlgEd25519)
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("old key"), 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("not mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	dangling := filepath.Join(dir, "dangling")
	if runtime.GOOS != "windows" {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(dir, "nowhere"), dangling); err != nil {
			t.Fatal(err)
		}
	}
	write := map[string]func(path string) error{
		"WriteKeyFile":            func(p string) error { return writeKeyFile(p, k, testPass, testScrypt) },
		"WriteUnencryptedKeyFile": func(p string) error { return WriteUnencryptedKeyFile(p, k) },
	}
	for name, fn := range write {
		for _, path := range []string{existing, link, dangling} {
			if runtime.GOOS == "windows" && path != existing {
				continue
			}
			if err := fn(path); !errors.Is(err, os.ErrExist) {
				t.Errorf("%s(%s) error = %v, want os.ErrExist", name, filepath.Base(path), err)
			}
		}
	}
	for path, want := range map[string]string{existing: "old key", target: "not mine"} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: got %q, want it untouched (%q)", filepath.Base(path), got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "nowhere")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writing through a dangling symlink created its target (stat error %v)", err)
	}
}

func TestWriteKeyFileRefusesEmptyPassphrase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	if err := WriteKeyFile(path, mustGenerate(t, AlgEd25519), nil); !errors.Is(err, ErrPassphraseRequired) {
		t.Errorf("got %v, want ErrPassphraseRequired", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file was left behind (stat error %v)", err)
	}
}

func TestReadKeyFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(path, bytes.Repeat([]byte(" "), maxKeyFileSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeyFile(path, testPass); !errors.Is(err, ErrMalformedKeyFile) {
		t.Errorf("got %v, want ErrMalformedKeyFile", err)
	}
}

// TestKeyFileCompat reads key files written by an earlier build: a format
// change that breaks engineers' existing keys fails here. -update rewrites
// them (only when the format version changes).
func TestKeyFileCompat(t *testing.T) {
	files := []struct {
		name  string
		alg   Algorithm
		plain bool
	}{
		{"ed25519.key", AlgEd25519, false},
		{"ecdsa-p256.key", AlgECDSAP256, false},
		{"online-ed25519.json", AlgEd25519, true},
	}
	dir := filepath.Join("testdata", "keys")
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			k := mustGenerate(t, f.alg)
			data := mustUnencrypted(t, k)
			if !f.plain {
				data = mustEncrypt(t, k, testPass)
			}
			if err := os.WriteFile(filepath.Join(dir, f.name), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f.name+".id"), []byte(k.KeyID()+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range files {
		t.Run(f.name, func(t *testing.T) {
			wantID, err := os.ReadFile(filepath.Join(dir, f.name+".id"))
			if err != nil {
				t.Fatal(err)
			}
			k, err := ReadKeyFile(filepath.Join(dir, f.name), testPass)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := k.KeyID(), strings.TrimSpace(string(wantID)); got != want || k.Alg() != f.alg {
				t.Errorf("got key %s (%s), want %s (%s)", got, k.Alg(), want, f.alg)
			}
		})
	}
}
