// Package quotetest makes boot evidence without a booted machine: a TCG
// crypto-agile event log written as firmware writes one (with the PCR
// values it leads to, which a test extends into swtpm), and a software
// attestation key whose quotes have a TPM's layout, for load generators.
// A software AK proves nothing about a machine.
package quotetest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/configsrv/attest/softek"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/tpmwire"
)

// TCG event types the builder uses (PC Client PFP spec).
const (
	EvPostCode          = 0x00000001
	EvNoAction          = 0x00000003
	EvSeparator         = 0x00000004
	EvAction            = 0x00000005
	EvSCRTMVersion      = 0x00000008
	EvIPL               = 0x0000000D
	EvEFIVariableDriver = 0x80000001
	EvEFIBootServices   = 0x80000003
	EvEFIAction         = 0x80000007
)

// Event is one measurement.
type Event struct {
	PCR    int
	Type   uint32
	Data   []byte
	Digest [sha256.Size]byte
}

// Log is an event log under construction and the SHA-256 PCR values its
// events extend to.
type Log struct {
	Events []Event
	PCRs   map[int]pcr.Value
}

// NewLog starts an empty log.
func NewLog() *Log { return &Log{PCRs: map[int]pcr.Value{}} }

// Measure logs data measured into PCR n (digest: SHA-256 of data).
func (l *Log) Measure(n int, typ uint32, data []byte) {
	l.MeasureDigest(n, typ, data, sha256.Sum256(data))
}

// MeasureDigest logs an event whose digest is not the hash of its data
// (an EFI application: the Authenticode hash; a separator: the hash of 4
// zero bytes while the data holds them).
func (l *Log) MeasureDigest(n int, typ uint32, data []byte, d [sha256.Size]byte) {
	l.Events = append(l.Events, Event{PCR: n, Type: typ, Data: data, Digest: d})
	v := l.PCRs[n]
	v.Extend(d[:])
	l.PCRs[n] = v
}

// Boot is the log of a UEFI boot much like OVMF's booting a UKI: the
// firmware version and drivers (PCR 0, 2), configuration (1, 3, 5, 7),
// separators into 0-7, the UKI and its kernel (4), systemd-stub's
// sections (11) and the kernel stub's initrd (9). seed makes the images
// (and so PCR 4, 9, 11) differ from one "release" to another.
func Boot(seed string) *Log {
	l := NewLog()
	l.Measure(0, EvSCRTMVersion, utf16("patela test firmware 1.0"))
	l.Measure(0, EvPostCode, []byte("POST CODE"))
	for _, v := range []string{"SecureBoot", "PK", "KEK", "db", "dbx"} {
		l.Measure(7, EvEFIVariableDriver, []byte("efi variable "+v))
	}
	l.Measure(1, EvEFIVariableDriver, []byte("BootOrder 0000"))
	l.Measure(1, EvEFIVariableDriver, []byte("Boot0000 UEFI patela"))
	l.Measure(2, EvEFIBootServices, []byte("option ROM driver"))
	l.Measure(4, EvEFIAction, []byte("Calling EFI Application from Boot Option"))
	sep := []byte{0, 0, 0, 0}
	for n := 0; n < 8; n++ {
		l.Measure(n, EvSeparator, sep)
	}
	l.MeasureDigest(4, EvEFIBootServices, []byte("\\EFI\\BOOT\\BOOTX64.EFI"), sha256.Sum256([]byte("uki "+seed)))
	l.MeasureDigest(4, EvEFIBootServices, []byte("linux"), sha256.Sum256([]byte("kernel "+seed)))
	for _, s := range []string{".linux", ".osrel", ".cmdline", ".initrd"} {
		l.Measure(11, EvIPL, []byte(s+"\x00"))
		l.MeasureDigest(11, EvIPL, []byte(s), sha256.Sum256([]byte(s+" "+seed)))
	}
	l.MeasureDigest(9, EvIPL, []byte("Linux initrd"), sha256.Sum256([]byte("initrd "+seed)))
	l.Measure(5, EvEFIAction, []byte("Exit Boot Services Invocation"))
	l.Measure(5, EvEFIAction, []byte("Exit Boot Services Returned with Success"))
	return l
}

func utf16(s string) []byte {
	out := make([]byte, 0, 2*len(s)+2)
	for _, r := range s {
		out = append(out, byte(r), 0)
	}
	return append(out, 0, 0)
}

// Bytes is the log in the crypto-agile format with a SHA-256 bank only:
// the Spec ID event (in the SHA-1 format, as the spec demands), then one
// TCG_PCR_EVENT2 per event.
func (l *Log) Bytes() []byte {
	var b bytes.Buffer
	le := func(v any) { binary.Write(&b, binary.LittleEndian, v) }
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	binary.Write(&spec, binary.LittleEndian, struct {
		PlatformClass                   uint32
		Minor, Major, Errata, UintnSize uint8
		NumAlgs                         uint32
		Alg, Size                       uint16
		VendorInfoSize                  uint8
	}{0, 0, 2, 2, 2, 1, uint16(tpm2.TPMAlgSHA256), sha256.Size, 0})
	le(uint32(0))
	le(uint32(EvNoAction))
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())
	for _, e := range l.Events {
		le(uint32(e.PCR))
		le(e.Type)
		le(uint32(1))
		le(uint16(tpm2.TPMAlgSHA256))
		b.Write(e.Digest[:])
		le(uint32(len(e.Data)))
		b.Write(e.Data)
	}
	return b.Bytes()
}

// Extend replays the log's events into a TPM (swtpm started without
// firmware), so its PCRs hold l.PCRs.
func (l *Log) Extend(t transport.TPM) error {
	for _, e := range l.Events {
		if err := ExtendPCR(t, e.PCR, e.Digest[:]); err != nil {
			return err
		}
	}
	return nil
}

// ExtendPCR extends SHA-256 PCR n with digest.
func ExtendPCR(t transport.TPM, n int, digest []byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(n), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("extending PCR %d: %w", n, err)
	}
	return nil
}

// AllPCRs fills in the PCRs a quote covers that l never extended (zero).
func (l *Log) AllPCRs() map[int]pcr.Value {
	out := map[int]pcr.Value{}
	for _, n := range api.QuotePCRs {
		out[n] = l.PCRs[n]
	}
	return out
}

// AK is a software attestation key: the AK template's attributes, a key
// in memory.
type AK struct {
	key *ecdsa.PrivateKey
	// Public is the marshalled TPMT_PUBLIC a node sends as ak_public.
	Public []byte
	name   []byte
	resets atomic.Uint32 // the TPM's resetCount: Reboot adds one
}

// NewAK generates a software AK.
func NewAK() (*AK, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	b, _ := k.PublicKey.Bytes()
	pub := softek.AKTemplate(b[1:33], b[33:])
	n, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, err
	}
	a := &AK{key: k, Public: tpm2.Marshal(pub), name: n.Buffer}
	a.resets.Store(resetCount)
	return a, nil
}

// Reboot is a TPM reset: the quotes after it carry the next resetCount,
// so the server sees new boot evidence, as it does when a node reboots.
func (a *AK) Reboot() { a.resets.Add(1) }

// Quote signs a TPMS_ATTEST of a quote over pcrs (every PCR of
// api.QuotePCRs) with nonce, as TPM2_Quote lays it out, and attaches
// the log.
func (a *AK) Quote(nonce []byte, pcrs map[int]pcr.Value, log []byte) (*api.Quote, error) {
	keys := make([]int, 0, len(pcrs))
	for n := range pcrs {
		keys = append(keys, n)
	}
	sort.Ints(keys)
	u := make([]uint, len(keys))
	h := sha256.New()
	for i, n := range keys {
		u[i] = uint(n)
		v := pcrs[n]
		h.Write(v[:])
	}
	quoted := quoteInfo(a.name, nonce, a.resets.Load(), tpm2.PCClientCompatible.PCRs(u...), h.Sum(nil))
	d := sha256.Sum256(quoted)
	r, s, err := ecdsa.Sign(rand.Reader, a.key, d[:])
	if err != nil {
		return nil, err
	}
	return &api.Quote{Quoted: quoted, Signature: ecdsaSignature(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))),
		PCRs: pcrs, EventLog: log}, nil
}

// The quote's structures are written by hand, as a TPM writes them: go-tpm's
// reflective Marshal cost a load generator as much as the signature.
// TestEncodingAgrees holds them to tpm2.Marshal.

// quoteInfo is the TPMS_ATTEST of TPM2_Quote by the AK named name, with
// nonce, after resets TPM resets, over the SHA-256 PCRs in sel whose
// values hash to digest.
func quoteInfo(name, nonce []byte, resets uint32, sel, digest []byte) []byte {
	b := make([]byte, 0, 64+len(name)+len(nonce)+len(sel)+len(digest))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMGeneratedValue))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTAttestQuote))
	b = tpmwire.Append2B(b, name)               // qualifiedSigner
	b = tpmwire.Append2B(b, nonce)              // extraData
	b = binary.BigEndian.AppendUint64(b, clock) // clockInfo: clock,
	b = binary.BigEndian.AppendUint32(b, resets)
	b = binary.BigEndian.AppendUint32(b, 0) // restartCount,
	b = append(b, 1)                        // safe
	b = binary.BigEndian.AppendUint64(b, 0) // firmwareVersion
	b = binary.BigEndian.AppendUint32(b, 1) // one TPMS_PCR_SELECTION
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgSHA256))
	b = append(b, byte(len(sel)))
	b = append(b, sel...)
	return tpmwire.Append2B(b, digest) // pcrDigest
}

// The software AK's clock when made: a TPM that has just booted once.
const (
	clock      = 1000
	resetCount = 1
)

// ecdsaSignature is the TPMT_SIGNATURE of an ECDSA-SHA256 signature (r, s).
func ecdsaSignature(r, s []byte) []byte {
	b := make([]byte, 0, 8+len(r)+len(s))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgECDSA))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgSHA256))
	return tpmwire.Append2B(tpmwire.Append2B(b, r), s)
}
