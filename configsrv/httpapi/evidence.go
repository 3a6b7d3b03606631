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

// evidence checks the completion's quote, if any, and says what it
// proves; matchRelease then says which release that is. A quote that does
// not verify is an error wrapping quote.ErrBad.
func (s *Server) evidence(c *challenge.Challenge, q *api.Quote, now time.Time) (*store.Attestation, error) {
	a := &store.Attestation{NodeID: c.NodeID, Status: store.AttestUnattested, At: now}
	if q == nil {
		return a, nil
	}
	if len(c.Nonce) == 0 || len(c.AKPublic) == 0 {
		return nil, fmt.Errorf("%w: the challenge was issued without a nonce; attest again", quote.ErrBad)
	}
	key, err := s.akKeys.get(c.AKName, c.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", quote.ErrBad, err)
	}
	ev, err := quote.Verify(key, c.Nonce, q)
	if err != nil {
		return nil, err
	}
	a.Status = store.AttestUnknown
	a.PCRs, a.PCRDigest = ev.PCRs, quote.Digest(ev.PCRs)
	a.EventLog, a.LogDetail = string(ev.Log), ev.LogDetail
	a.ResetCount, a.HasReset = int64(ev.ResetCount), true
	return a, nil
}

// matchRelease sets a's status to the registered release (active or
// retired) its quoted PCRs are of, and returns it with the releases'
// version it was matched against ("" for evidence without a quote). It
// reads the releases' version first only when reread, else matches
// against the releases this server last read: CompleteAttestation checks
// that version.
func (s *Server) matchRelease(ctx context.Context, a *store.Attestation, reread bool) (*store.Release, string, error) {
	if a.Status == store.AttestUnattested {
		return nil, "", nil
	}
	rels, version, err := s.releases.current(ctx, s.Store, reread)
	if err != nil {
		return nil, "", err
	}
	recs := make([]*release.Release, len(rels))
	for i := range rels {
		recs[i] = rels[i].Record
	}
	a.Status, a.Release = store.AttestUnknown, ""
	m := quote.Match(recs, a.PCRs)
	for i := range rels {
		if rels[i].Record == m {
			a.Status, a.Release = store.AttestRelease, rels[i].Name
			return &rels[i], version, nil
		}
	}
	return nil, version, nil
}

// releaseAdmits says whether the node's boot gets a token: with
// --require-release, only the boot of an active release does.
func (s *Server) releaseAdmits(a *store.Attestation, rel *store.Release) bool {
	return !s.RequireRelease || (rel != nil && rel.Active())
}

// refuseRelease answers a node releaseAdmits refuses. The evidence is
// recorded first, so `node show` says what the node booted.
func (s *Server) refuseRelease(w http.ResponseWriter, r *http.Request, a *store.Attestation, rel *store.Release) {
	ctx := r.Context()
	target := nodeActor(a.NodeID)
	if err := s.recordEvidence(ctx, a); err != nil {
		s.internal(w, r, err)
		return
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
	if row, changed := releaseRow(a, before); changed {
		s.audit(ctx, row.Actor, row.Action, row.Target, row.Details)
	}
}

// releaseRow is the audit row of a change of what the node booted, from
// the evidence summary before to a; changed is false if it is the same.
func releaseRow(a *store.Attestation, before string) (row store.AuditRow, changed bool) {
	now := a.Summary()
	if now == before {
		return row, false
	}
	target := nodeActor(a.NodeID)
	return store.AuditRow{Actor: target, Action: "attest.release", Target: target,
		Details: fmt.Sprintf("%s -> %s (PCR digest %s, event log %s)", before, now, orDash(a.PCRDigest), orDash(a.EventLog))}, true
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

// current returns the releases and the version they were read at:
// those last read unless reread or none were, else as they are now.
func (c *releaseCache) current(ctx context.Context, st *store.Store, reread bool) ([]store.Release, string, error) {
	c.mu.Lock()
	rels, v := c.rels, c.version
	c.mu.Unlock()
	if v != "" && !reread {
		return rels, v, nil
	}
	now, err := st.ReleasesVersion(ctx)
	if err != nil {
		return nil, "", err
	}
	if now == v {
		return rels, v, nil
	}
	if rels, err = st.Releases(ctx); err != nil {
		return nil, "", err
	}
	c.mu.Lock()
	c.version, c.rels = now, rels
	c.mu.Unlock()
	return rels, now, nil
}

// cached is the last list read (for messages).
func (c *releaseCache) cached() []store.Release {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rels
}
