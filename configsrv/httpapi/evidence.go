package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/challenge"
	"patela/configsrv/quote"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
)

// Remote attestation in the handshake: the challenge carries a nonce and
// the AK public area; the completion's quote is checked against them
// (configsrv/quote) and matched against the registered releases.

// evidence checks the completion's quote, if any, and says what it proves
// and which registered release (active or retired) it matched. A quote
// that does not verify is an error wrapping quote.ErrBad.
func (s *Server) evidence(ctx context.Context, c *challenge.Challenge, q *api.Quote, now time.Time) (*store.Attestation, *store.Release, error) {
	a := &store.Attestation{NodeID: c.NodeID, Status: store.AttestUnattested, At: now}
	if q == nil {
		return a, nil, nil
	}
	if len(c.Nonce) == 0 || len(c.AKPublic) == 0 {
		return nil, nil, fmt.Errorf("%w: the challenge was issued without a nonce; attest again", quote.ErrBad)
	}
	key, err := s.akKeys.get(c.AKName, c.AKPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", quote.ErrBad, err)
	}
	ev, err := quote.Verify(key, c.Nonce, q)
	if err != nil {
		return nil, nil, err
	}
	a.PCRs, a.PCRDigest = ev.PCRs, quote.Digest(ev.PCRs)
	a.EventLog, a.LogDetail = string(ev.Log), ev.LogDetail
	a.ResetCount, a.HasReset = int64(ev.ResetCount), true
	rels, err := s.releases.get(ctx, s.Store)
	if err != nil {
		return nil, nil, err
	}
	recs := make([]*release.Release, len(rels))
	for i := range rels {
		recs[i] = rels[i].Record
	}
	a.Status = store.AttestUnknown
	m := quote.Match(recs, ev.PCRs)
	for i := range rels {
		if rels[i].Record == m {
			a.Status, a.Release = store.AttestRelease, rels[i].Name
			return a, &rels[i], nil
		}
	}
	return a, nil, nil
}

// requireRelease refuses a node whose evidence names no active release
// when the server runs with --require-release; it answers and returns
// false. The evidence is recorded first, so `node show` says what the
// node booted.
func (s *Server) requireRelease(w http.ResponseWriter, r *http.Request, a *store.Attestation, rel *store.Release) bool {
	if !s.RequireRelease || (rel != nil && rel.Active()) {
		return true
	}
	ctx := r.Context()
	target := nodeActor(a.NodeID)
	if err := s.recordEvidence(ctx, a); err != nil {
		s.internal(w, r, err)
		return false
	}
	why := "its quote matches no registered release"
	switch {
	case a.Status == store.AttestUnattested:
		why = "it sent no quote (an agent older than remote attestation)"
	case rel != nil:
		why = "its quote matches release " + rel.Name + ", which is retired"
	}
	s.log().Warn("refused: node's boot is no active release", "node", a.NodeID, "why", why,
		"pcr_digest", a.PCRDigest, "pcrs", pcrSummary(a.PCRs))
	s.audit(ctx, target, "attest.unknown_release", target, why+" (PCR digest "+orDash(a.PCRDigest)+")")
	writeErr(w, http.StatusForbidden, api.CodeUnknownRelease,
		"this server gives tokens only to nodes that booted an active release, and "+why+": boot "+activeNames(s.releases.cached(), ""))
	return false
}

// recordEvidence stores the node's boot evidence and audits a change of
// what it booted. Evidence equal to what this server last stored for the
// node (a token refresh in the same boot) is not written again: the
// attestation's time is the node's attested_at.
func (s *Server) recordEvidence(ctx context.Context, a *store.Attestation) error {
	fp, write := s.evidenceToWrite(a)
	if write == nil {
		return nil
	}
	before, err := s.Store.RecordAttestation(ctx, a)
	if err != nil {
		return err
	}
	s.evidenceStored(ctx, a, fp, before)
	return nil
}

// evidenceToWrite returns a's fingerprint, and a unless this server last
// stored the same evidence for the node.
func (s *Server) evidenceToWrite(a *store.Attestation) (string, *store.Attestation) {
	fp := fmt.Sprintf("%s|%s|%s|%s|%s|%v|%d", a.Status, a.Release, a.PCRDigest, a.EventLog, a.LogDetail, a.HasReset, a.ResetCount)
	if s.stored.same(a.NodeID, fp) {
		return fp, nil
	}
	return fp, a
}

// evidenceStored remembers what was written for the node and audits a
// change from before (the summary it replaced).
func (s *Server) evidenceStored(ctx context.Context, a *store.Attestation, fp, before string) {
	s.stored.set(a.NodeID, fp)
	if now := a.Summary(); now != before {
		target := nodeActor(a.NodeID)
		s.audit(ctx, target, "attest.release", target, fmt.Sprintf("%s -> %s (PCR digest %s, event log %s)",
			before, now, orDash(a.PCRDigest), orDash(a.EventLog)))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// pcrSummary names the PCRs releases are told apart by, shortened.
func pcrSummary(p map[int]pcr.Value) string {
	if len(p) == 0 {
		return "-"
	}
	var b strings.Builder
	for _, n := range []int{4, 7, 9, 11, 12, 13, 15} {
		if v, ok := p[n]; ok {
			fmt.Fprintf(&b, "%d=%s ", n, v.String()[:16])
		}
	}
	return strings.TrimSpace(b.String())
}

// evidenceCache remembers the evidence this server last stored per node
// (only the server writes it).
type evidenceCache struct {
	mu sync.Mutex
	m  map[int64]string
}

func (c *evidenceCache) same(id int64, fp string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id] == fp
}

func (c *evidenceCache) set(id int64, fp string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= 1<<20 {
		c.m = map[int64]string{}
	}
	c.m[id] = fp
}

// akKeyCache keeps AK public areas parsed for quote checks, by AK Name
// (which is the hash of the public area: a Name has one key).
type akKeyCache struct {
	mu sync.Mutex
	m  map[string]*quote.Key
}

// prime keeps the quote key of an AK this handshake has just parsed (the
// challenge names it), so the completion need not parse it again. A key
// quote cannot use is not kept: get then refuses it as before.
func (c *akKeyCache) prime(name []byte, pub *tpm2.TPMTPublic) {
	c.mu.Lock()
	_, ok := c.m[string(name)]
	c.mu.Unlock()
	if ok {
		return
	}
	k, err := quote.KeyOf(pub)
	if err != nil {
		return
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= 1<<16 {
		c.m = map[string]*quote.Key{}
	}
	c.m[string(name)] = k
	c.mu.Unlock()
}

func (c *akKeyCache) get(name, public []byte) (*quote.Key, error) {
	c.mu.Lock()
	k, ok := c.m[string(name)]
	c.mu.Unlock()
	if ok {
		return k, nil
	}
	k, err := quote.NewKey(public)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= 1<<16 {
		c.m = map[string]*quote.Key{}
	}
	c.m[string(name)] = k
	c.mu.Unlock()
	return k, nil
}

// releaseCache keeps the parsed releases until one is added or retired
// (store.ReleasesVersion): parsing checks each approval's signature.
type releaseCache struct {
	mu      sync.Mutex
	version string
	rels    []store.Release
}

func (c *releaseCache) get(ctx context.Context, st *store.Store) ([]store.Release, error) {
	v, err := st.ReleasesVersion(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.version == v {
		rels := c.rels
		c.mu.Unlock()
		return rels, nil
	}
	c.mu.Unlock()
	rels, err := st.Releases(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.version, c.rels = v, rels
	c.mu.Unlock()
	return rels, nil
}

// cached is the last list read (for messages).
func (c *releaseCache) cached() []store.Release {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rels
}
