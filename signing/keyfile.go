package signing

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/scrypt"
)

// Key file format, version 1. A private key file is one JSON object:
//
//	{
//	  "type": "ota-signing-key",
//	  "version": 1,
//	  "keyid": "<hex TUF key id of public>",
//	  "public": {"keytype": ..., "scheme": ..., "keyval": {"public": ...}},
//	  "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64>"},
//	  "cipher": {"name": "xchacha20poly1305", "nonce": "<base64>"},
//	  "ciphertext": "<base64>"
//	}
//
// The plaintext is the private key as PKCS#8 DER. The AEAD's additional data
// is the canonical JSON of every field but "ciphertext", so changing the key
// id, the public key or the KDF parameters makes decryption fail; because it
// is recomputed from the parsed values, re-indenting the file is harmless.
// The public half stays readable without the passphrase so that
// `otactl key show` and ceremonies can use the file as a public key.
//
// The unencrypted form, for the server's online key, has "private":
// "<base64 PKCS#8 DER>" instead of "kdf", "cipher" and "ciphertext".
//
// Why scrypt rather than argon2id: both are memory-hard and either would do
// at these parameters. scrypt's three parameters fully describe the cost,
// and it ships in Python's hashlib, Node's crypto and OpenSSL, while argon2id
// needs a third-party library in each; with libsodium (which has
// XChaCha20-Poly1305) a key file can be recovered without this program.
// N=32768, r=8 costs 32 MiB and about 0.1 s per passphrase attempt, once
// per signing session. XChaCha20-Poly1305's 24-byte nonce is safe to pick at
// random; the key is fresh per file anyway (random 32-byte salt).
const (
	keyFileType    = "ota-signing-key"
	keyFileVersion = 1
	kdfScrypt      = "scrypt"
	cipherXChaCha  = "xchacha20poly1305"

	// maxKeyFileSize bounds what the parsers read; a real file is < 1 KiB.
	maxKeyFileSize = 64 << 10
	saltSize       = 32
	minSaltSize    = 16
	maxSaltSize    = 64
)

// Errors about key files and passphrases.
var (
	// ErrWrongPassphrase means decryption failed: the passphrase is wrong
	// or the file was modified (an AEAD cannot tell the two apart).
	ErrWrongPassphrase = errors.New("wrong passphrase (or the key file was modified)")
	// ErrPassphraseRequired means an encrypted key file was read without a
	// passphrase, or a key was to be encrypted with an empty one.
	ErrPassphraseRequired = errors.New("passphrase required")
	// ErrMalformedKeyFile means the data is not a well-formed key file;
	// the wrapping error says what is wrong.
	ErrMalformedKeyFile = errors.New("malformed key file")
)

// scryptParams are the cost parameters written into new key files.
type scryptParams struct{ N, R, P int }

// defaultScrypt is the cost of new key files. Tests pass smaller values to
// encryptKey directly, so the default is never changed at run time.
var defaultScrypt = scryptParams{N: 1 << 15, R: 8, P: 1}

// kdfLimits bound the scrypt cost a file may ask for: a hostile file with
// n=2^30 would otherwise allocate a terabyte.
type kdfLimits struct {
	maxMem  int // N*r, in 128-byte blocks
	maxWork int // N*r*p
}

// defaultLimits allow 8 times the default memory (256 MiB) and 16 times its
// work, room for stronger files written by a later version.
var defaultLimits = kdfLimits{maxMem: 1 << 21, maxWork: 1 << 22}

type keyFile struct {
	Type       string        `json:"type"`
	Version    int           `json:"version"`
	KeyID      string        `json:"keyid"`
	Public     *metadata.Key `json:"public"`
	KDF        *kdfField     `json:"kdf,omitempty"`
	Cipher     *cipherField  `json:"cipher,omitempty"`
	Ciphertext []byte        `json:"ciphertext,omitempty"`
	Private    []byte        `json:"private,omitempty"`
}

type kdfField struct {
	Name string `json:"name"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
	Salt []byte `json:"salt"`
}

type cipherField struct {
	Name  string `json:"name"`
	Nonce []byte `json:"nonce"`
}

// additionalData is what the AEAD authenticates besides the ciphertext:
// the canonical JSON of the file's other fields.
func (f *keyFile) additionalData() ([]byte, error) {
	h := struct {
		Type    string        `json:"type"`
		Version int           `json:"version"`
		KeyID   string        `json:"keyid"`
		Public  *metadata.Key `json:"public"`
		KDF     *kdfField     `json:"kdf"`
		Cipher  *cipherField  `json:"cipher"`
	}{f.Type, f.Version, f.KeyID, f.Public, f.KDF, f.Cipher}
	return cjson.EncodeCanonical(h)
}

// EncryptKey returns k as an encrypted key file, sealed with passphrase.
// It refuses an empty passphrase.
func EncryptKey(k *PrivateKey, passphrase []byte) ([]byte, error) {
	return encryptKey(k, passphrase, defaultScrypt)
}

func encryptKey(k *PrivateKey, passphrase []byte, p scryptParams) ([]byte, error) {
	if k == nil {
		return nil, errors.New("encrypt key: no key")
	}
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("encrypt key: %w: empty passphrase", ErrPassphraseRequired)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	defer clear(der)
	f := &keyFile{
		Type:    keyFileType,
		Version: keyFileVersion,
		KeyID:   k.id,
		Public:  k.Public(),
		KDF:     &kdfField{Name: kdfScrypt, N: p.N, R: p.R, P: p.P, Salt: make([]byte, saltSize)},
		Cipher:  &cipherField{Name: cipherXChaCha, Nonce: make([]byte, chacha20poly1305.NonceSizeX)},
	}
	if _, err := rand.Read(f.KDF.Salt); err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	if _, err := rand.Read(f.Cipher.Nonce); err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	aead, err := f.aead(passphrase)
	if err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	ad, err := f.additionalData()
	if err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	f.Ciphertext = aead.Seal(nil, f.Cipher.Nonce, der, ad)
	return marshalKeyFile(f)
}

// aead derives the file key from passphrase with the file's KDF.
func (f *keyFile) aead(passphrase []byte) (cipher.AEAD, error) {
	key, err := scrypt.Key(passphrase, f.KDF.Salt, f.KDF.N, f.KDF.R, f.KDF.P, chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(key) // NewX copies the key
	return chacha20poly1305.NewX(key)
}

// MarshalUnencrypted returns k as an unencrypted key file. It is for the
// server's online timestamp/snapshot key, which must load without a person
// present; offline root and targets keys belong in EncryptKey files.
func MarshalUnencrypted(k *PrivateKey) ([]byte, error) {
	if k == nil {
		return nil, errors.New("marshal key: no key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return marshalKeyFile(&keyFile{Type: keyFileType, Version: keyFileVersion, KeyID: k.id, Public: k.Public(), Private: der})
}

func marshalKeyFile(f *keyFile) ([]byte, error) {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal key file: %w", err)
	}
	return append(b, '\n'), nil
}

// DecryptKey opens an encrypted key file made by EncryptKey. A wrong
// passphrase (or a modified file) yields ErrWrongPassphrase; a malformed
// file an error wrapping ErrMalformedKeyFile that says what is wrong.
func DecryptKey(data, passphrase []byte) (*PrivateKey, error) {
	f, err := decodeKeyFile(data)
	if err != nil {
		return nil, err
	}
	if f.Private != nil {
		return nil, fmt.Errorf("%w: the key is not encrypted", ErrMalformedKeyFile)
	}
	return f.privateKey(passphrase, defaultLimits)
}

// ParsePrivateKey reads a key file in either form: an encrypted one needs
// passphrase, an unencrypted one ignores it (so a server configured with a
// passphrase can still load an unencrypted key).
func ParsePrivateKey(data, passphrase []byte) (*PrivateKey, error) {
	return parsePrivateKey(data, passphrase, defaultLimits)
}

func parsePrivateKey(data, passphrase []byte, lim kdfLimits) (*PrivateKey, error) {
	f, err := decodeKeyFile(data)
	if err != nil {
		return nil, err
	}
	return f.privateKey(passphrase, lim)
}

// privateKey decrypts or decodes the private key of a decoded file and
// checks it against the stored public key.
func (f *keyFile) privateKey(passphrase []byte, lim kdfLimits) (*PrivateKey, error) {
	var der []byte
	if f.Private != nil {
		der = f.Private
	} else {
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("key %s is encrypted: %w", f.KeyID, ErrPassphraseRequired)
		}
		if err := f.checkCrypto(lim); err != nil {
			return nil, err
		}
		aead, err := f.aead(passphrase)
		if err != nil {
			return nil, fmt.Errorf("%w: kdf: %w", ErrMalformedKeyFile, err)
		}
		ad, err := f.additionalData()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedKeyFile, err)
		}
		der, err = aead.Open(nil, f.Cipher.Nonce, f.Ciphertext, ad)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", f.KeyID, ErrWrongPassphrase)
		}
		defer clear(der)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %w", ErrMalformedKeyFile, err)
	}
	k, err := NewPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %w", ErrMalformedKeyFile, err)
	}
	if k.id != f.KeyID {
		return nil, fmt.Errorf("%w: file says key %s, private key is %s", ErrKeyMismatch, f.KeyID, k.id)
	}
	return k, nil
}

// checkCrypto validates the KDF and cipher fields before any work is done.
func (f *keyFile) checkCrypto(lim kdfLimits) error {
	k, c := f.KDF, f.Cipher
	switch {
	case k == nil:
		return fmt.Errorf("%w: no kdf", ErrMalformedKeyFile)
	case c == nil:
		return fmt.Errorf("%w: no cipher", ErrMalformedKeyFile)
	case f.Ciphertext == nil:
		return fmt.Errorf("%w: no ciphertext", ErrMalformedKeyFile)
	case k.Name != kdfScrypt:
		return fmt.Errorf("%w: unsupported kdf %q (want %q)", ErrMalformedKeyFile, k.Name, kdfScrypt)
	case k.N < 2 || k.N&(k.N-1) != 0:
		return fmt.Errorf("%w: scrypt n %d is not a power of two above 1", ErrMalformedKeyFile, k.N)
	case k.R < 1 || k.P < 1:
		return fmt.Errorf("%w: scrypt r %d and p %d must be positive", ErrMalformedKeyFile, k.R, k.P)
	// Divisions, not products, so that huge values cannot overflow.
	case k.R > lim.maxMem/k.N || k.P > lim.maxWork/(k.N*k.R):
		return fmt.Errorf("%w: scrypt n=%d r=%d p=%d costs more than this program allows", ErrMalformedKeyFile, k.N, k.R, k.P)
	case len(k.Salt) < minSaltSize || len(k.Salt) > maxSaltSize:
		return fmt.Errorf("%w: salt is %d bytes, want %d to %d", ErrMalformedKeyFile, len(k.Salt), minSaltSize, maxSaltSize)
	case c.Name != cipherXChaCha:
		return fmt.Errorf("%w: unsupported cipher %q (want %q)", ErrMalformedKeyFile, c.Name, cipherXChaCha)
	case len(c.Nonce) != chacha20poly1305.NonceSizeX:
		return fmt.Errorf("%w: nonce is %d bytes, want %d", ErrMalformedKeyFile, len(c.Nonce), chacha20poly1305.NonceSizeX)
	case len(f.Ciphertext) <= chacha20poly1305.Overhead:
		return fmt.Errorf("%w: ciphertext is %d bytes, too short", ErrMalformedKeyFile, len(f.Ciphertext))
	}
	return nil
}

// decodeKeyFile parses and checks everything in a key file that needs no
// passphrase: the header, the public key and which form it is in.
func decodeKeyFile(data []byte) (*keyFile, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformedKeyFile, len(data), maxKeyFileSize)
	}
	var f keyFile
	// Unknown fields are refused: a typo such as "ciphertxt" should say so,
	// not end as "no ciphertext"; new fields come with a new version.
	if err := decodeStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedKeyFile, err)
	}
	switch {
	case f.Type != keyFileType:
		return nil, fmt.Errorf("%w: type %q, want %q", ErrMalformedKeyFile, f.Type, keyFileType)
	case f.Version != keyFileVersion:
		return nil, fmt.Errorf("%w: unsupported version %d (this program reads %d)", ErrMalformedKeyFile, f.Version, keyFileVersion)
	case f.Public == nil:
		return nil, fmt.Errorf("%w: no public key", ErrMalformedKeyFile)
	}
	if err := ValidateKey(f.Public); err != nil {
		return nil, fmt.Errorf("%w: public key: %w", ErrMalformedKeyFile, err)
	}
	id, err := f.Public.ID()
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %w", ErrMalformedKeyFile, err)
	}
	if f.KeyID != id {
		return nil, fmt.Errorf("%w: keyid %q does not match the public key (%s)", ErrMalformedKeyFile, f.KeyID, id)
	}
	encrypted := f.KDF != nil || f.Cipher != nil || f.Ciphertext != nil
	switch {
	case encrypted && f.Private != nil:
		return nil, fmt.Errorf("%w: both a private key and a ciphertext", ErrMalformedKeyFile)
	case !encrypted && f.Private == nil:
		return nil, fmt.Errorf("%w: no private key (neither \"ciphertext\" nor \"private\")", ErrMalformedKeyFile)
	}
	return &f, nil
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields and trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if err == io.EOF {
			return errors.New("empty input")
		}
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// MarshalPublicKey returns k as an indented TUF key object, the public key
// file handed to whoever runs the ceremony (no trailing newline).
func MarshalPublicKey(k *metadata.Key) ([]byte, error) {
	if err := ValidateKey(k); err != nil {
		return nil, err
	}
	return json.MarshalIndent(k, "", "  ")
}

// ParsePublicKey reads a public key: a TUF key object (as MarshalPublicKey
// writes it) or a private key file of either form, of which it reads only
// the public half, so no passphrase is needed. The key passes ValidateKey.
func ParsePublicKey(data []byte) (*metadata.Key, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("public key: %d bytes, more than %d", len(data), maxKeyFileSize)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("public key: not a JSON object: %w", err)
	}
	if _, ok := probe["type"]; ok {
		f, err := decodeKeyFile(data)
		if err != nil {
			return nil, err
		}
		return f.Public, nil
	}
	var k metadata.Key
	if err := decodeStrict(data, &k); err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	if err := ValidateKey(&k); err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	return &k, nil
}

// WriteKeyFile encrypts k with passphrase and writes it to path with mode
// 0600. It never replaces an existing file: losing an offline key to a
// mistyped path is worse than an error.
func WriteKeyFile(path string, k *PrivateKey, passphrase []byte) error {
	return writeKeyFile(path, k, passphrase, defaultScrypt)
}

func writeKeyFile(path string, k *PrivateKey, passphrase []byte, p scryptParams) error {
	data, err := encryptKey(k, passphrase, p)
	if err != nil {
		return err
	}
	return writeNewFile(path, data)
}

// WriteUnencryptedKeyFile writes k unencrypted to path with mode 0600,
// never replacing an existing file. It is for the server's online key.
func WriteUnencryptedKeyFile(path string, k *PrivateKey) error {
	data, err := MarshalUnencrypted(k)
	if err != nil {
		return err
	}
	return writeNewFile(path, data)
}

// ReadKeyFile reads and decrypts (when encrypted) the key file at path.
//
// It does not check the file's mode: an encrypted key is safe to read at
// any mode, and a check would refuse keys copied by tools that do not keep
// modes. Callers may warn when an unencrypted key is group or world
// readable. It follows symlinks, as any tool reading a file the user named.
func ReadKeyFile(path string, passphrase []byte) (*PrivateKey, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	return ParsePrivateKey(data, passphrase)
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrMalformedKeyFile, path, maxKeyFileSize)
	}
	return data, nil
}

// writeNewFile creates path with O_EXCL, so an existing file (or symlink)
// is never replaced, writes data and syncs it. A failed write removes the
// partial file; the caller still holds the key and can try again.
func writeNewFile(path string, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	// The umask can only clear bits, but a umask such as 0277 would leave
	// 0400; set the mode the doc promises.
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	// A key whose public half is already in a root must survive a crash.
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir makes the new directory entry durable. It is best effort: some
// systems (Windows, some network file systems) cannot sync a directory, and
// the file itself is already synced.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
