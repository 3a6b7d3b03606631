// Package familykey reads and writes tor's Happy Families keys (tor
// 0.4.9): the secret family key file `tor --keygen-family` writes and the
// family id relays name in `FamilyId`. The config server stores the key,
// the agent writes it into each relay's key directory; both check here
// that a key and an id belong together, since tor refuses to start (it
// does not say so at --verify-config) with a FamilyId whose key is not in
// its key directory.
package familykey

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"filippo.io/edwards25519"
)

const (
	// Header starts a secret family key file: 32 bytes, NUL-padded.
	Header     = "== ed25519v1-secret: fmly-id =="
	headerSize = 32
	// SecretSize is the expanded ed25519 secret key tor keeps: the
	// clamped scalar, then the nonce prefix.
	SecretSize = 64
	// FileSuffix ends every secret family key file tor considers.
	FileSuffix = ".secret_family_key"
	// IDLen is the length of a family id: the ed25519 public key in
	// base64 without padding.
	IDLen = 43
)

// Parse reads a secret family key file and returns the secret.
func Parse(file []byte) ([]byte, error) {
	if len(file) != headerSize+SecretSize {
		return nil, fmt.Errorf("a secret family key file is %d bytes, this is %d", headerSize+SecretSize, len(file))
	}
	h := file[:headerSize]
	if !bytes.HasPrefix(h, []byte(Header)) || strings.Trim(string(h[len(Header):]), "\x00") != "" {
		return nil, fmt.Errorf("not a secret family key file (header %q, want %q)", bytes.TrimRight(h, "\x00"), Header)
	}
	secret := bytes.Clone(file[headerSize:])
	if _, err := ID(secret); err != nil {
		return nil, err
	}
	return secret, nil
}

// File renders secret as tor's secret family key file.
func File(secret []byte) []byte {
	out := make([]byte, headerSize, headerSize+len(secret))
	copy(out, Header)
	return append(out, secret...)
}

// ID is the family id of secret, as `FamilyId` names it: the public key
// of the expanded secret's scalar.
func ID(secret []byte) (string, error) {
	if len(secret) != SecretSize {
		return "", fmt.Errorf("a secret family key is %d bytes, this is %d", SecretSize, len(secret))
	}
	s, err := edwards25519.NewScalar().SetBytesWithClamping(secret[:32])
	if err != nil {
		return "", err
	}
	return base64.RawStdEncoding.EncodeToString(edwards25519.NewIdentityPoint().ScalarBaseMult(s).Bytes()), nil
}

// CheckID reports whether id is well-formed: 43 characters of base64
// encoding 32 bytes, as tor prints it.
func CheckID(id string) error {
	b, err := base64.RawStdEncoding.Strict().DecodeString(id)
	if len(id) != IDLen || err != nil || len(b) != 32 {
		return fmt.Errorf("%q is not a family id (43 characters of base64, as `tor --keygen-family` prints after FamilyId)", id)
	}
	return nil
}

// ValidName reports whether name can name a key file (name + FileSuffix)
// in a key directory: 1-64 of [A-Za-z0-9._-], not "." or "..".
func ValidName(name string) bool {
	if name == "" || len(name) > 64 || name == "." || name == ".." {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// ErrMismatch means a secret is not the key of the id it came with.
var ErrMismatch = errors.New("the family key does not match its family id")
