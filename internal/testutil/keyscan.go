package testutil

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
)

// KeyLeak reports how body contains the private key keyPEM (a PEM file
// such as tor's secret_id_key): as PEM, as its DER bytes, or as base64
// of them (any 32-character run, so line breaks or a partial copy still
// count). It returns "" when body holds none of it. Attack tests scan
// whatever a node serves with it.
func KeyLeak(body, keyPEM []byte) string {
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		panic("KeyLeak: no PEM key given")
	}
	switch {
	case bytes.Contains(body, []byte("PRIVATE KEY")):
		return "a PEM private key header"
	case bytes.Contains(body, blk.Bytes[:min(64, len(blk.Bytes))]), bytes.Contains(body, blk.Bytes[len(blk.Bytes)/2:]):
		return "the key's DER bytes"
	}
	flat := bytes.Join(bytes.Fields(body), nil)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		// Three encodings of the DER, one per byte alignment.
		for off := range 3 {
			b64 := enc.EncodeToString(blk.Bytes[off:])
			for i := 4; i+32 <= len(b64)-4; i += 32 {
				if bytes.Contains(flat, []byte(b64[i:i+32])) {
					return "the key's DER in base64"
				}
			}
		}
	}
	return ""
}
