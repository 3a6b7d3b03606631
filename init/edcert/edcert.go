// Package edcert issues a relay's medium-term ed25519 signing key and its
// certificate from the relay's master identity key, as `tor --keygen`
// would, so tor can run with OfflineMasterKey 1 and never hold the
// master secret. The certificate is tor's cert-spec format (section 2.1):
//
//	VERSION 0x01 | CERT_TYPE 0x04 (signing key, by the identity key) |
//	EXPIRATION_DATE u32 hours since the epoch | CERT_KEY_TYPE 0x01 |
//	CERTIFIED_KEY [32] | N_EXTENSIONS u8 = 1 |
//	  extension: len u16 = 32 | type 0x04 (signed-with-ed25519-key) |
//	  flags 0x01 (affects validation) | the master public key [32] |
//	SIGNATURE [64] by the master key over everything before it
//
// tor keeps ed25519 secret keys "expanded" (the 32-byte clamped scalar and
// the 32-byte nonce prefix, 64 bytes), not as seeds, so signing is done
// here on that form with filippo.io/edwards25519.
package edcert

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"filippo.io/edwards25519"
)

// Key file headers (32 bytes, NUL-padded) of tor's key files.
const (
	HeaderSecret = "== ed25519v1-secret: type0 ==" // the master's
	// HeaderSigningSecret is the signing key's: tor tags it with the
	// certificate type that certifies it.
	HeaderSigningSecret = "== ed25519v1-secret: type4 =="
	HeaderPublic        = "== ed25519v1-public: type0 =="
	HeaderCert          = "== ed25519v1-cert: type4 =="
	headerSize          = 32
	certSize            = 140
	// SecretSize is an expanded secret key.
	SecretSize = 64
)

// tor's files in the key directory.
const (
	FileMasterSecret = "ed25519_master_id_secret_key"
	FileMasterPublic = "ed25519_master_id_public_key"
	FileSigningKey   = "ed25519_signing_secret_key"
	FileSigningCert  = "ed25519_signing_cert"
)

// NewSecret is a fresh expanded secret key.
func NewSecret() ([]byte, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	defer clear(seed)
	h := sha512.Sum512(seed)
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	return h[:], nil
}

func scalar(secret []byte) (*edwards25519.Scalar, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("expanded ed25519 secret is %d bytes, want %d", len(secret), SecretSize)
	}
	return edwards25519.NewScalar().SetBytesWithClamping(secret[:32])
}

// Public is the public key of an expanded secret.
func Public(secret []byte) ([]byte, error) {
	a, err := scalar(secret)
	if err != nil {
		return nil, err
	}
	return new(edwards25519.Point).ScalarBaseMult(a).Bytes(), nil
}

// sign is Ed25519 (RFC 8032) with an expanded secret.
func sign(secret, msg []byte) ([]byte, error) {
	a, err := scalar(secret)
	if err != nil {
		return nil, err
	}
	pub := new(edwards25519.Point).ScalarBaseMult(a).Bytes()
	h := sha512.New()
	h.Write(secret[32:])
	h.Write(msg)
	r, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	if err != nil {
		return nil, err
	}
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
	h.Reset()
	h.Write(R)
	h.Write(pub)
	h.Write(msg)
	k, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	if err != nil {
		return nil, err
	}
	S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
	return append(R, S.Bytes()...), nil
}

// Tagged is a key file: its 32-byte header, then the key.
func Tagged(header string, key []byte) []byte {
	out := make([]byte, headerSize, headerSize+len(key))
	copy(out, header)
	return append(out, key...)
}

// Signing is a signing key with its certificate, as tor's files.
type Signing struct {
	SecretFile []byte // ed25519_signing_secret_key
	CertFile   []byte // ed25519_signing_cert
	PublicFile []byte // ed25519_master_id_public_key
	Expires    time.Time
}

// Issue makes a new signing key and certifies it with master (expanded)
// until expires, rounded down to the hour as the format keeps it.
func Issue(master []byte, expires time.Time) (*Signing, error) {
	mpub, err := Public(master)
	if err != nil {
		return nil, err
	}
	sk, err := NewSecret()
	if err != nil {
		return nil, err
	}
	spub, err := Public(sk)
	if err != nil {
		return nil, err
	}
	hours := expires.Unix() / 3600
	if hours <= 0 || hours > 1<<32-1 {
		return nil, fmt.Errorf("expiry %v out of range", expires)
	}
	c := []byte{1, 4}
	c = binary.BigEndian.AppendUint32(c, uint32(hours))
	c = append(c, 1)
	c = append(c, spub...)
	c = append(c, 1)                         // one extension
	c = binary.BigEndian.AppendUint16(c, 32) // its data length
	c = append(c, 4, 1)                      // signed-with-ed25519-key, affects validation
	c = append(c, mpub...)
	sig, err := sign(master, c)
	if err != nil {
		return nil, err
	}
	c = append(c, sig...)
	return &Signing{
		SecretFile: Tagged(HeaderSigningSecret, sk),
		CertFile:   Tagged(HeaderCert, c),
		PublicFile: Tagged(HeaderPublic, mpub),
		Expires:    time.Unix(hours*3600, 0).UTC(),
	}, nil
}

// Cert is what a signing certificate file says.
type Cert struct {
	SigningKey []byte // the certified key
	Master     []byte // the key that signed it
	Expires    time.Time
}

// ParseCert reads an ed25519_signing_cert file and checks its signature.
func ParseCert(file []byte) (*Cert, error) {
	if len(file) != headerSize+certSize || !bytes.HasPrefix(file, []byte(HeaderCert)) ||
		len(bytes.Trim(file[len(HeaderCert):headerSize], "\x00")) != 0 {
		return nil, errors.New("not a tor ed25519 signing certificate file")
	}
	c := file[headerSize:]
	if c[0] != 1 || c[1] != 4 || c[6] != 1 || c[39] != 1 ||
		binary.BigEndian.Uint16(c[40:]) != 32 || c[42] != 4 {
		return nil, errors.New("signing certificate: unexpected version, type or extension")
	}
	out := &Cert{
		SigningKey: bytes.Clone(c[7:39]),
		Master:     bytes.Clone(c[44:76]),
		Expires:    time.Unix(int64(binary.BigEndian.Uint32(c[2:]))*3600, 0).UTC(),
	}
	if !ed25519.Verify(out.Master, c[:76], c[76:]) {
		return nil, errors.New("signing certificate: bad signature")
	}
	return out, nil
}
