package signing

import (
	"crypto/x509"
	"testing"

	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
)

// BenchmarkKeyFile seals and opens an ed25519 key with this package's
// key file (scrypt N=2^15, r=8, p=1; XChaCha20-Poly1305 over PKCS#8,
// the header authenticated) and with go-securesystemslib/encrypted
// (scrypt, NaCl secretbox over the same PKCS#8) at its Legacy
// (N=2^15, the same cost) and default Standard (N=2^16) strengths, to
// decide whether the hand-written format is worth keeping (README, key
// files). Run with a short -benchtime: each operation is one scrypt.
func BenchmarkKeyFile(b *testing.B) {
	k, err := Generate(AlgEd25519)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		b.Fatal(err)
	}
	pass := []byte("correct horse battery staple")
	file, err := EncryptKey(k, pass)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("keyfile/seal", func(b *testing.B) {
		for b.Loop() {
			if _, err := EncryptKey(k, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keyfile/open", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecryptKey(file, pass); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, level := range []struct {
		name string
		kdf  encrypted.KDFParameterStrength
	}{{"legacy", encrypted.Legacy}, {"standard", encrypted.Standard}} {
		sealed, err := encrypted.EncryptWithCustomKDFParameters(der, pass, level.kdf)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("encrypted-"+level.name+"/seal", func(b *testing.B) {
			for b.Loop() {
				if _, err := encrypted.EncryptWithCustomKDFParameters(der, pass, level.kdf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("encrypted-"+level.name+"/open", func(b *testing.B) {
			for b.Loop() {
				if _, err := encrypted.Decrypt(sealed, pass); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
