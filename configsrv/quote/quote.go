// Package quote checks a node's boot evidence: a TPM2_Quote by the AK the
// credential was activated for, over the SHA-256 boot PCRs, with the
// server's nonce, and the firmware event log, replayed against the quoted
// PCRs with github.com/google/go-eventlog.
//
// The quote is the evidence: its signature proves the PCR values, its
// nonce that it is fresh. The event log is not trusted; it explains the
// values (which component measured what), and whether it replays to them
// is recorded, never used to decide.
package quote

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-eventlog/register"
	"github.com/google/go-eventlog/tcg"
	"github.com/google/go-tpm/tpm2"

	"patela/internal/api"
	"patela/internal/pcr"
)

// ErrBad is wrapped by every reason a quote is refused.
var ErrBad = errors.New("bad quote")

// Required are the PCRs every quote must cover (issue 14: the firmware's,
// the boot loader's and the OS's; PCR 10 is IMA, unused here).
var Required = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15}

// LogStatus says what became of the event log.
type LogStatus string

// Event log outcomes.
const (
	LogReplayed LogStatus = "replayed" // every quoted PCR it has events for replays to the quoted value
	LogFailed   LogStatus = "failed"   // unparsable, or some PCR does not replay
	LogAbsent   LogStatus = "absent"   // the node sent none (no firmware log, e.g. no TPM driver)
)

// Evidence is what a verified quote proves, and what its log says.
type Evidence struct {
	// PCRs are the quoted SHA-256 values, proven by the signature.
	PCRs map[int]pcr.Value
	Log  LogStatus
	// LogDetail says why the log failed, or which PCRs it covers.
	LogDetail string
	// ResetCount is the TPM's count of resets (boots) at the quote.
	ResetCount uint32
}

// Key is an AK public area ready to verify signatures with.
type Key struct {
	pub  crypto.PublicKey
	hash crypto.Hash // of the AK's signing scheme
	sig  tpm2.TPMAlgID
}

// NewKey prepares the AK public area akPublic (marshalled TPMT_PUBLIC, as
// configsrv/attest.ParseAK accepted it) for Verify.
func NewKey(akPublic []byte) (*Key, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](akPublic)
	if err != nil {
		return nil, fmt.Errorf("AK public area: %w", err)
	}
	return KeyOf(pub)
}

// KeyOf is NewKey for an AK public area already unmarshalled (by
// configsrv/attest.ParseAK, during the same handshake).
func KeyOf(pub *tpm2.TPMTPublic) (*Key, error) {
	k := &Key{}
	var scheme tpm2.TPMAlgID
	var hashAlg tpm2.TPMIAlgHash
	switch pub.Type {
	case tpm2.TPMAlgECC:
		p, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, err
		}
		scheme = p.Scheme.Scheme
		if scheme != tpm2.TPMAlgECDSA {
			return nil, fmt.Errorf("AK scheme %v: only ECDSA is supported", scheme)
		}
		d, err := p.Scheme.Details.ECDSA()
		if err != nil {
			return nil, err
		}
		hashAlg = d.HashAlg
	case tpm2.TPMAlgRSA:
		p, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		scheme = p.Scheme.Scheme
		switch scheme {
		case tpm2.TPMAlgRSASSA:
			d, err := p.Scheme.Details.RSASSA()
			if err != nil {
				return nil, err
			}
			hashAlg = d.HashAlg
		case tpm2.TPMAlgRSAPSS:
			d, err := p.Scheme.Details.RSAPSS()
			if err != nil {
				return nil, err
			}
			hashAlg = d.HashAlg
		default:
			return nil, fmt.Errorf("AK scheme %v: only RSASSA and RSAPSS are supported", scheme)
		}
	default:
		return nil, fmt.Errorf("AK type %v is neither RSA nor ECC", pub.Type)
	}
	h, err := hashAlg.Hash()
	if err != nil {
		return nil, fmt.Errorf("AK scheme hash: %w", err)
	}
	if k.pub, err = tpm2.Pub(*pub); err != nil {
		return nil, err
	}
	k.hash, k.sig = h, scheme
	return k, nil
}

// verify checks sig (a marshalled TPMT_SIGNATURE) over msg.
func (k *Key) verify(msg, sig []byte) error {
	s, err := parseSignature(sig)
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	if s.alg != k.sig {
		return fmt.Errorf("signature algorithm %v, the AK signs with %v", s.alg, k.sig)
	}
	if s.hash != hashID(k.hash) {
		return errors.New("signature hash is not the AK's")
	}
	h := k.hash.New()
	h.Write(msg)
	digest := h.Sum(nil)
	switch k.sig {
	case tpm2.TPMAlgECDSA:
		r, ss := new(big.Int).SetBytes(s.r), new(big.Int).SetBytes(s.s)
		if !ecdsa.Verify(k.pub.(*ecdsa.PublicKey), digest, r, ss) {
			return errors.New("signature does not verify with the AK")
		}
	case tpm2.TPMAlgRSASSA:
		if rsa.VerifyPKCS1v15(k.pub.(*rsa.PublicKey), k.hash, digest, s.sig) != nil {
			return errors.New("signature does not verify with the AK")
		}
	case tpm2.TPMAlgRSAPSS:
		if rsa.VerifyPSS(k.pub.(*rsa.PublicKey), k.hash, digest, s.sig, nil) != nil {
			return errors.New("signature does not verify with the AK")
		}
	}
	return nil
}

func hashID(h crypto.Hash) tpm2.TPMIAlgHash {
	switch h {
	case crypto.SHA1:
		return tpm2.TPMAlgSHA1
	case crypto.SHA384:
		return tpm2.TPMAlgSHA384
	case crypto.SHA512:
		return tpm2.TPMAlgSHA512
	}
	return tpm2.TPMAlgSHA256
}

// Verify checks q: signed by ak, over a TPMS_ATTEST made by a TPM for a
// quote, carrying nonce, over a SHA-256 selection covering Required whose
// digest is that of q.PCRs. Any failure wraps ErrBad. The event log is
// then replayed against the quoted PCRs; its outcome is in the Evidence.
func Verify(ak *Key, nonce []byte, q *api.Quote) (*Evidence, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBad, fmt.Sprintf(format, a...))
	}
	if len(nonce) == 0 {
		return nil, bad("no nonce to check against")
	}
	// The signature first: nothing of an unsigned structure is worth
	// parsing.
	if err := ak.verify(q.Quoted, q.Signature); err != nil {
		return nil, bad("%v", err)
	}
	att, err := parseAttest(q.Quoted)
	if err != nil {
		return nil, bad("quoted structure: %v", err)
	}
	if att.magic != tpm2.TPMGeneratedValue {
		return nil, bad("not made by a TPM (magic %#x)", uint32(att.magic))
	}
	if att.typ != tpm2.TPMSTAttestQuote {
		return nil, bad("attestation type %#x is not a quote", uint16(att.typ))
	}
	if subtle.ConstantTimeCompare(att.extraData, nonce) != 1 {
		return nil, bad("nonce differs from this challenge's (a replayed or foreign quote)")
	}
	sel, err := selected(att.sel)
	if err != nil {
		return nil, bad("%v", err)
	}
	for _, n := range Required {
		if !slices.Contains(sel, n) {
			return nil, bad("PCR %d is not quoted (want SHA-256 PCRs %v)", n, Required)
		}
	}
	if len(q.PCRs) != len(sel) {
		return nil, bad("%d PCR values for %d quoted PCRs", len(q.PCRs), len(sel))
	}
	// The quote digest uses the AK's scheme hash over the values in
	// selection order (ascending).
	h := ak.hash.New()
	for _, n := range sel {
		v, ok := q.PCRs[n]
		if !ok {
			return nil, bad("no value for quoted PCR %d", n)
		}
		h.Write(v[:])
	}
	if !bytes.Equal(h.Sum(nil), att.pcrDigest) {
		return nil, bad("the PCR values do not match the quoted digest")
	}
	ev := &Evidence{PCRs: q.PCRs, ResetCount: att.resetCount}
	ev.Log, ev.LogDetail = logs.replay(q.EventLog, q.PCRs)
	return ev, nil
}

// selected lists the PCRs of a SHA-256-only selection, ascending.
func selected(s tpm2.TPMLPCRSelection) ([]int, error) {
	if len(s.PCRSelections) != 1 || s.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return nil, errors.New("the quote must select the SHA-256 bank alone")
	}
	var out []int
	for i, b := range s.PCRSelections[0].PCRSelect {
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				out = append(out, i*8+bit)
			}
		}
	}
	return out, nil
}

// logs remembers replay outcomes: a fleet booting one release on one
// kind of machine sends the same log and PCRs at every attestation.
var logs = &replayCache{m: map[[32]byte]replayed{}}

type replayed struct {
	status LogStatus
	detail string
}

type replayCache struct {
	mu sync.Mutex
	m  map[[32]byte]replayed
}

func (c *replayCache) replay(raw []byte, pcrs map[int]pcr.Value) (LogStatus, string) {
	if len(raw) == 0 {
		return LogAbsent, ""
	}
	h := sha256.New()
	for _, n := range sortedKeys(pcrs) {
		v := pcrs[n]
		h.Write([]byte{byte(n)})
		h.Write(v[:])
	}
	h.Write(raw)
	var key [32]byte
	h.Sum(key[:0])
	c.mu.Lock()
	r, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return r.status, r.detail
	}
	r.status, r.detail = Replay(raw, pcrs)
	c.mu.Lock()
	if len(c.m) >= 4096 {
		clear(c.m)
	}
	c.m[key] = r
	c.mu.Unlock()
	return r.status, r.detail
}

func sortedKeys(m map[int]pcr.Value) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// Replay parses a TCG event log and replays it against the SHA-256 PCR
// values pcrs: LogReplayed, with the PCRs it has events for, or LogFailed
// with why.
func Replay(raw []byte, pcrs map[int]pcr.Value) (status LogStatus, detail string) {
	defer func() {
		// The log is the client's bytes: a parser bug must not take the
		// server down.
		if r := recover(); r != nil {
			status, detail = LogFailed, fmt.Sprintf("unparsable (parser panic: %v)", r)
		}
	}()
	el, err := tcg.ParseEventLog(raw, tcg.ParseOpts{})
	if err != nil {
		return LogFailed, "unparsable: " + err.Error()
	}
	mrs := make([]register.MR, 0, len(pcrs))
	for _, n := range sortedKeys(pcrs) {
		v := pcrs[n]
		mrs = append(mrs, register.PCR{Index: n, Digest: v[:], DigestAlg: crypto.SHA256})
	}
	events, err := el.Verify(mrs)
	var re tcg.ReplayError
	if errors.As(err, &re) {
		bad := slices.Clone(re.InvalidMRs)
		sort.Ints(bad)
		return LogFailed, "PCRs " + joinInts(bad) + " do not replay"
	}
	if err != nil {
		return LogFailed, err.Error()
	}
	covered := map[int]bool{}
	for _, e := range events {
		covered[int(e.MRIndex())] = true
	}
	var cov []int
	for n := range covered {
		cov = append(cov, n)
	}
	sort.Ints(cov)
	return LogReplayed, fmt.Sprintf("%d events, PCRs %s", len(events), joinInts(cov))
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}
