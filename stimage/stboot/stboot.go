// Package stboot predicts the PCRs stboot v0.2.2 extends before it kexecs
// an OS package: PCR 12 (the package) and PCR 13 (the authority that let it
// boot). PCR 14 holds the platform's identity, different on every machine,
// and is left out.
//
// stboot v0.2.2 (stboot.go, host/tpm.go) computes a SHA-256 digest per
// event and hands it to u-root's tss.Measure, which hashes its argument
// again before TPM2_PCR_Extend: each PCR is extended with SHA-256 of the
// digest, while the event log records the digest itself (so replaying
// stboot's own log does not reproduce its PCRs). Events, in order:
//
//	PCR 12  0xa0000000  SHA-256 of the archive (zip) bytes
//	PCR 12  0xa0000001  SHA-256 of the descriptor bytes as fetched
//	PCR 13  0xa0000002  SHA-256 of json.Marshal(trust policy): compact,
//	                    only ospkg_signature_threshold and ospkg_fetch_method
//	PCR 13  0xa0000003  SHA-256 of the signing root's DER (exactly one root)
//	PCR 13  0xa0000004  SHA-256 of the HTTPS roots' DER, concatenated in
//	                    file order (v0.2.2 reads /etc/ssl/certs/isrgrootx1.pem)
package stboot

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"

	"patela/internal/pcr"
)

// measure is tss.Measure(sha256(data)): the double hash stboot extends.
func measure(v *pcr.Value, data []byte) {
	d := sha256.Sum256(data)
	v.Measure(d[:])
}

// PCR12 is what stboot extends for the OS package it boots: the archive,
// then the descriptor, both as the bytes it fetched.
func PCR12(archive, descriptor []byte) pcr.Value {
	var v pcr.Value
	measure(&v, archive)
	measure(&v, descriptor)
	return v
}

// Policy is the part of trust_policy.json stboot v0.2.2 knows, in its
// field order (it marshals this struct for the measurement).
type Policy struct {
	SignatureThreshold int    `json:"ospkg_signature_threshold"`
	FetchMethod        string `json:"ospkg_fetch_method"`
}

// PCR13 is what stboot extends for its trust policy, its signing root and
// its HTTPS roots.
func PCR13(p Policy, signingRoots, httpsRoots []*x509.Certificate) (pcr.Value, error) {
	var v pcr.Value
	if len(signingRoots) != 1 {
		return v, errors.New("stboot v0.2.2 accepts exactly one certificate in ospkg_signing_root.pem")
	}
	if len(httpsRoots) == 0 {
		return v, errors.New("stboot v0.2.2 needs its HTTPS roots (it refuses to boot without them)")
	}
	pj, err := json.Marshal(p)
	if err != nil {
		return v, err
	}
	measure(&v, pj)
	measure(&v, signingRoots[0].Raw)
	var cat []byte
	for _, c := range httpsRoots {
		cat = append(cat, c.Raw...)
	}
	measure(&v, cat)
	return v, nil
}
