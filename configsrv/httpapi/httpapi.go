// Package httpapi serves the v1 wire protocol (shared/API.md) over the
// store: the public attestation endpoints and the token-guarded node
// endpoints.
package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"patela/configsrv/attest"
	"patela/configsrv/challenge"
	"patela/configsrv/longpoll"
	"patela/configsrv/quote"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
)

// ChallengeTTL is how long a credential challenge may be answered.
const ChallengeTTL = 60 * time.Second

// Server answers the API.
type Server struct {
	Store   *store.Store
	Tokens  *token.Authority
	Trust   *attest.Trust // nil: any template EK may start (nodes begin pending)
	Limiter *Limiter      // on /v1/attest*, per client address; nil: unlimited
	// Enroll limits the pending nodes each client address may create (a
	// first contact writes a row; other attestations do not); nil:
	// unlimited. Pending bounds them in all.
	Enroll  *Limiter
	Pending store.PendingLimits
	// NodeLimiter limits the node endpoints per node (all its tokens), so
	// one node cannot keep the database busy for the fleet; nil: unlimited.
	NodeLimiter *Limiter
	Log         *slog.Logger
	Now         func() time.Time // nil: time.Now
	// RequireRelease refuses tokens to nodes whose quote matches no
	// active release (serve --require-release).
	RequireRelease bool
	// MaxChallenges bounds the challenges pending at once; beyond, attests
	// get 429 rate_limited. 0: DefaultMaxChallenges.
	MaxChallenges int

	// MaxWait bounds how long a config request is held (its wait
	// parameter); default DefaultMaxWait. WatchEvery is how often the
	// database is polled for config changes; default DefaultWatchEvery.
	MaxWait, WatchEvery time.Duration

	keys     attest.Cache
	configs  configCache
	fleet    fleetCache
	akKeys   akKeyCache
	releases releaseCache
	stored   evidenceCache
	enabled  enabledNodes

	chOnce sync.Once
	chal   *challenge.Table // challenges()

	lpOnce    sync.Once
	hub       *longpoll.Hub
	stopWatch context.CancelFunc
	refused   refusals
}

// PendingRetry is the Retry-After of a 429 pending_full: waiting for an
// administrator takes minutes at least.
const PendingRetry = 5 * time.Minute

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// Handler routes the API. Every answer, 404 and 405 included, is JSON.
func (s *Server) Handler() http.Handler {
	s.startLongPoll()
	m := http.NewServeMux()
	m.Handle(api.PathAttest, methods{"POST": s.limited(s.attest)})
	m.Handle(api.PathAttestComplete, methods{"POST": s.limited(s.complete)})
	m.Handle(api.PathSpecs, methods{"POST": s.node(s.specs)})
	m.Handle(api.PathConfig, methods{"GET": s.node(s.config)})
	m.Handle(api.PathKeys, methods{"GET": s.node(s.getKeys), "PUT": s.node(s.putKeys)})
	m.Handle(api.PathStatus, methods{"POST": s.node(s.status)})
	m.Handle(api.PathRelease, methods{"POST": s.node(s.release)})
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no such endpoint: "+r.URL.Path)
	})
	return m
}

// methods dispatches one path by method.
type methods map[string]http.HandlerFunc

func (ms methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h, ok := ms[r.Method]; ok {
		h(w, r)
		return
	}
	allow := make([]string, 0, len(ms))
	for m := range ms {
		allow = append(allow, m)
	}
	sort.Strings(allow)
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeErr(w, http.StatusMethodNotAllowed, api.CodeBadRequest, r.Method+" not allowed on "+r.URL.Path)
}

// NewHTTPServer wraps h in an HTTPS server speaking TLS 1.3 only, with
// timeouts so slow clients cannot hold connections forever.
func NewHTTPServer(h http.Handler, cert tls.Certificate) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code api.ErrorCode, msg string) {
	writeJSON(w, status, &api.Error{Message: msg, Code: code})
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log().Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeErr(w, http.StatusInternalServerError, api.CodeInternal, "internal error")
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limitKey is the rate-limit bucket of a client: its IPv4 address, or its
// IPv6 /64 (one host usually holds a whole /64, so per-address buckets
// would cost an attacker nothing).
func limitKey(r *http.Request) string {
	a, err := netip.ParseAddr(clientAddr(r))
	if err != nil {
		return clientAddr(r)
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

func (s *Server) limited(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.Limiter != nil {
			if ok, wait := s.Limiter.Allow(limitKey(r), s.now()); !ok {
				s.log().Debug("rate limited", "client", clientAddr(r), "path", r.URL.Path)
				s.refuseClient(r, "attest.rate_limited", "-", r.URL.Path)
				tooMany(w, api.CodeRateLimited, wait, "too many attestation requests; retry later")
				return
			}
		}
		h(w, r)
	}
}

// refusalActions are the audited actions that turn a client away: the
// server log shows them at warn, the rest of the audit trail at info.
// (They are audited in aggregate: refusals.go.)
var refusalActions = map[string]bool{"attest.bad_ek": true, "attest.bad_ak": true, "attest.ek_untrusted": true,
	"attest.banned": true, "attest.disabled": true, "attest.unknown_challenge": true, "attest.challenge_expired": true,
	"attest.bad_secret": true, "attest.refused": true, "attest.bad_quote": true, "attest.unknown_release": true,
	"attest.rate_limited": true, "attest.enroll_limited": true, "attest.pending_full": true, "attest.challenges_full": true,
	"node.rate_limited": true,
	// Not a refusal, an alarm: two relays reported one key.
	"relay.duplicate_key": true}

// tooMany answers 429 with Retry-After (whole seconds, at least one).
func tooMany(w http.ResponseWriter, code api.ErrorCode, wait time.Duration, msg string) {
	secs := int((wait + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	writeErr(w, http.StatusTooManyRequests, code, msg)
}

// refuseClient audits, in aggregate, a refused request on a public
// endpoint, per client address (IPv6 per /64).
func (s *Server) refuseClient(r *http.Request, action, target, details string) {
	s.refuse(limitKey(r), "client:"+clientAddr(r), action, target, details)
}

func (s *Server) audit(ctx context.Context, actor, action, target, details string) {
	s.logAudit(ctx, store.AuditRow{Actor: actor, Action: action, Target: target, Details: details})
	if err := s.Store.Audit(ctx, actor, action, target, details); err != nil {
		s.log().Error("audit", "action", action, "target", target, "err", err)
	}
}

// logAudit puts an audit row in the server log (audit writes it too; a
// row written with the change it records is logged with this alone).
func (s *Server) logAudit(ctx context.Context, a store.AuditRow) {
	level := slog.LevelInfo
	if refusalActions[a.Action] {
		level = slog.LevelWarn
	}
	s.log().Log(ctx, level, a.Action, "actor", a.Actor, "target", a.Target, "details", a.Details)
}

func nodeActor(id int64) string { return "node:" + strconv.FormatInt(id, 10) }

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	req, err := decodeAttest(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	ek, err := s.keys.EK(req.EKPublic)
	if err != nil {
		s.refuseClient(r, "attest.bad_ek", "-", err.Error())
		writeErr(w, http.StatusBadRequest, api.CodeBadEK, err.Error())
		return
	}
	ekTarget := "ek:" + ek.ID.String()
	akName, akPub, err := s.keys.AK(req.AKPublic)
	if err != nil {
		s.refuseClient(r, "attest.bad_ak", ekTarget, err.Error())
		writeErr(w, http.StatusBadRequest, api.CodeBadAK, err.Error())
		return
	}
	if err := s.Trust.Admit(ek, req.EKCertificate); err != nil {
		if errors.Is(err, attest.ErrBadEK) {
			s.refuseClient(r, "attest.bad_ek", ekTarget, err.Error())
			writeErr(w, http.StatusBadRequest, api.CodeBadEK, err.Error())
			return
		}
		s.refuseClient(r, "attest.ek_untrusted", ekTarget, err.Error())
		writeErr(w, http.StatusForbidden, api.CodeEKUntrusted, err.Error())
		return
	}
	now := s.now()
	n, err := s.nodeOf(ctx, ek.ID)
	if errors.Is(err, store.ErrNotFound) {
		if n = s.firstContact(w, r, ek, req.EKPublic, now); n == nil {
			return
		}
	} else if err != nil {
		s.internal(w, r, err)
		return
	}
	target := nodeActor(n.ID)
	switch n.State {
	case api.NodePending:
		s.refuseClient(r, "attest.pending", target, "")
		writeJSON(w, http.StatusForbidden, &api.Error{Code: api.CodePending, NodeID: n.ID,
			Message: fmt.Sprintf("node %d is pending; an administrator must run `configsrv node enable %d`", n.ID, n.ID)})
		return
	case api.NodeBanned:
		s.refuseClient(r, "attest.banned", target, "")
		writeJSON(w, http.StatusForbidden, &api.Error{Code: api.CodeBanned, NodeID: n.ID, Message: fmt.Sprintf("node %d is banned", n.ID)})
		return
	case api.NodeDisabled:
		s.refuseClient(r, "attest.disabled", target, "")
		writeJSON(w, http.StatusForbidden, &api.Error{Code: api.CodeDisabled, NodeID: n.ID, Message: fmt.Sprintf("node %d is disabled", n.ID)})
		return
	}
	secret := make([]byte, attest.SecretSize)
	nonce := make([]byte, api.NonceSize)
	rand.Read(secret)
	rand.Read(nonce)
	h := sha256.Sum256(secret)
	// The challenge is held in memory (a place in the table before the
	// credential's work); its audit row is written when it is spent.
	c, expired, retry, err := s.challenges().Add(challenge.Challenge{NodeID: n.ID, EK: ek.ID, SecretHash: h[:], AKName: akName,
		Nonce: nonce, AKPublic: req.AKPublic}, now)
	s.auditChallenges(ctx, expired, "expired unanswered")
	if errors.Is(err, challenge.ErrFull) {
		s.refuseClient(r, "attest.challenges_full", target, "")
		tooMany(w, api.CodeRateLimited, retry, "too many attestations in progress on this server; retry later")
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	blob, enc, err := ek.MakeCredential(akName, secret)
	if err != nil {
		s.challenges().Take(c.ID, now)
		s.internal(w, r, err)
		return
	}
	s.logAudit(ctx, challengeRow(c, ""))
	s.akKeys.prime(akName, akPub)
	writeJSON(w, http.StatusOK, &api.AttestResponse{NodeID: n.ID, ChallengeID: c.ID, CredentialBlob: blob, EncryptedSecret: enc, Nonce: nonce})
}

// firstContact creates the pending node of an EK never seen, within the
// client's creation limit and the pending cap; otherwise it answers 429
// and writes nothing. It returns nil when it answered.
func (s *Server) firstContact(w http.ResponseWriter, r *http.Request, ek *attest.EK, ekPublic []byte, now time.Time) *store.Node {
	// The per-address limit is spent only on a creation the cap allows.
	var limited time.Duration
	may := func() error {
		if s.Enroll != nil {
			if ok, wait := s.Enroll.Allow(limitKey(r), now); !ok {
				limited = wait
				return errEnrollLimited
			}
		}
		return nil
	}
	n, created, err := s.Store.AddPending(r.Context(), ek.ID, ekPublic, now, s.Pending, may)
	switch {
	case errors.Is(err, errEnrollLimited):
		s.refuseClient(r, "attest.enroll_limited", "ek:"+ek.ID.String(), "")
		tooMany(w, api.CodeRateLimited, limited, "too many new nodes from this address; retry later")
		return nil
	case errors.Is(err, store.ErrPendingFull):
		s.refuseClient(r, "attest.pending_full", "ek:"+ek.ID.String(), err.Error())
		tooMany(w, api.CodePendingFull, PendingRetry, fmt.Sprintf(
			"%v waiting for an administrator (at most %d; `configsrv serve --max-pending`): retry later", err, s.Pending.Max))
		return nil
	case err != nil:
		s.internal(w, r, err)
		return nil
	}
	if created {
		target := nodeActor(n.ID)
		s.audit(r.Context(), target, "node.first_contact", target, "ek "+ek.ID.String()+" ("+ek.Template+") from "+clientAddr(r))
	}
	return n
}

var errEnrollLimited = errors.New("enrollment rate limited")

func (s *Server) complete(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	req, err := decodeComplete(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	now := s.now()
	c, err := s.challenges().Take(req.ChallengeID, now)
	if errors.Is(err, challenge.ErrUnknown) {
		s.refuseClient(r, "attest.unknown_challenge", "-", "")
		writeErr(w, http.StatusGone, api.CodeChallengeExpired, "unknown, spent or expired challenge; attest again")
		return
	}
	// The challenge is spent: its audit row says how, unless the
	// attestation's transaction writes it.
	outcome := "not completed"
	defer func() {
		if outcome != "" {
			s.auditChallenges(ctx, []*challenge.Challenge{c}, outcome)
		}
	}()
	target := nodeActor(c.NodeID)
	if errors.Is(err, challenge.ErrExpired) {
		outcome = "answered after its expiry"
		s.refuseClient(r, "attest.challenge_expired", target, "")
		writeErr(w, http.StatusGone, api.CodeChallengeExpired, "challenge expired; attest again")
		return
	}
	h := sha256.Sum256(req.Secret)
	if subtle.ConstantTimeCompare(h[:], c.SecretHash) != 1 {
		outcome = "wrong secret"
		s.refuseClient(r, "attest.bad_secret", target, "")
		writeErr(w, http.StatusUnauthorized, api.CodeBadSecret, "wrong secret")
		return
	}
	// A node removed since its challenge (ids are never reused), or one
	// whose EK identity changed, answers as its challenge would have when
	// it was a row removed with the node; one disabled or pending is
	// refused with its state. The transaction that records the
	// attestation reads the node first; a refusal before it reads the
	// node to answer so too (refusedNode).
	gone := func() {
		outcome = "node removed"
		s.refuseClient(r, "attest.unknown_challenge", target, "node removed")
		writeErr(w, http.StatusGone, api.CodeChallengeExpired, "unknown, spent or expired challenge; attest again")
	}
	refused := func(st api.NodeState, err error) bool {
		if err != nil || st != api.NodeEnabled {
			s.enabled.forget(c.EK)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			gone()
		case err != nil:
			s.internal(w, r, err)
		case st != api.NodeEnabled:
			outcome = "node " + string(st)
			s.refuseClient(r, "attest.refused", target, "state "+string(st))
			writeJSON(w, http.StatusForbidden, &api.Error{Code: st.RefusalCode(), NodeID: c.NodeID,
				Message: fmt.Sprintf("node %d is %s", c.NodeID, st)})
		default:
			return false
		}
		return true
	}
	refusedNode := func() bool {
		au, err := s.Store.NodeAuth(ctx, c.NodeID)
		if err == nil && au.EK != c.EK {
			err = store.ErrNotFound
		}
		return refused(au.State, err)
	}
	ev, err := s.evidence(c, req.Quote, now)
	if errors.Is(err, quote.ErrBad) {
		if refusedNode() {
			return
		}
		outcome = "bad quote"
		s.audit(ctx, target, "attest.bad_quote", target, err.Error())
		writeErr(w, http.StatusUnauthorized, api.CodeBadQuote, err.Error())
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	// The quote is matched against the releases this server last read;
	// the transaction checks that none was added or retired since, and
	// if one was, the match is made again. A refusal is decided on the
	// releases as they are now: read again, if the first match was not.
	var done store.Attested
	var okRow, relRow store.AuditRow
	for try := 0; ; try++ {
		rel, version, err := s.matchRelease(ctx, ev, try > 0)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		if !s.releaseAdmits(ev, rel) {
			if try == 0 {
				continue
			}
			if refusedNode() {
				return
			}
			s.refuseRelease(w, r, ev, rel)
			outcome = "no token (--require-release)"
			return
		}
		// The activation, the evidence and the audit rows are one write
		// transaction.
		fp, write := s.evidenceToWrite(ev)
		done, err = s.Store.CompleteAttestation(ctx, store.Completion{
			NodeID: c.NodeID, EK: c.EK, AKName: c.AKName, At: now, Evidence: write, Releases: version,
			Audit: func(a store.Attested) []store.AuditRow {
				okRow = store.AuditRow{Actor: target, Action: "attest.ok", Target: target, Details: fmt.Sprintf("first_boot=%v", a.FirstBoot)}
				rows := []store.AuditRow{challengeRow(c, "")}
				if write != nil {
					if row, changed := releaseRow(write, a.Before); changed {
						relRow = row
						rows = append(rows, row)
					}
				}
				return append(rows, okRow)
			}})
		if errors.Is(err, store.ErrReleasesChanged) && try < 3 {
			continue
		}
		if refused(done.State, err) {
			return
		}
		if write != nil {
			s.stored.set(c.NodeID, fp)
		}
		break
	}
	outcome = ""
	tok, exp, err := s.Tokens.Issue(token.Claims{Node: c.NodeID, EK: done.Auth.EK, Epoch: done.Auth.Epoch}, now)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	if relRow.Action != "" {
		s.logAudit(ctx, relRow)
	}
	s.logAudit(ctx, okRow)
	writeJSON(w, http.StatusOK, &api.CompleteResponse{Token: tok, ExpiresAt: exp, FirstBoot: done.FirstBoot})
}

// node guards a node endpoint: a valid token, the node's request rate,
// then the node's current state and what its tokens must name, before
// any other work.
func (s *Server) node(h func(http.ResponseWriter, *http.Request, int64)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "missing bearer token")
			return
		}
		now := s.now()
		claims, err := s.Tokens.Verify(tok, now)
		if err != nil {
			writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, err.Error())
			return
		}
		actor := nodeActor(claims.Node)
		if s.NodeLimiter != nil {
			if ok, wait := s.NodeLimiter.Allow(actor, now); !ok {
				s.refuse(actor, actor, "node.rate_limited", actor, r.Method+" "+r.URL.Path)
				tooMany(w, api.CodeRateLimited, wait, "too many requests from this node; retry later")
				return
			}
		}
		if a := s.admit(r.Context(), claims); a != nil {
			if a.status == http.StatusInternalServerError {
				s.log().Error("request failed", "method", r.Method, "path", r.URL.Path)
			}
			a.write(w)
			return
		}
		h(w, r, claims.Node)
	}
}

// authorize checks a bearer token and its node (admit): the node's id, or
// the refusal to answer.
func (s *Server) authorize(ctx context.Context, tok string) (int64, *answer) {
	claims, err := s.Tokens.Verify(tok, s.now())
	if err != nil {
		return 0, errAnswer(http.StatusUnauthorized, api.CodeUnauthorized, err.Error())
	}
	if a := s.admit(ctx, claims); a != nil {
		return 0, a
	}
	return claims.Node, nil
}

// admit checks a verified token's claims against its node's row: the
// node exists and is enabled, and the token names its EK and its current
// token epoch (every state change moves it). The state comes first, so a
// disabled node's agent learns it is disabled.
func (s *Server) admit(ctx context.Context, c token.Claims) *answer {
	au, err := s.Store.NodeAuth(ctx, c.Node)
	if errors.Is(err, store.ErrNotFound) {
		return errAnswer(http.StatusUnauthorized, api.CodeUnauthorized, "the token's node no longer exists")
	}
	if err != nil {
		s.log().Error("node state", "node", c.Node, "err", err)
		return errAnswer(http.StatusInternalServerError, api.CodeInternal, "internal error")
	}
	if au.State != api.NodeEnabled {
		b, _ := json.Marshal(&api.Error{Code: au.State.RefusalCode(), NodeID: c.Node,
			Message: fmt.Sprintf("node %d is %s", c.Node, au.State)})
		return &answer{status: http.StatusForbidden, body: append(b, '\n')}
	}
	if au.EK != c.EK || au.Epoch != c.Epoch {
		return errAnswer(http.StatusUnauthorized, api.CodeUnauthorized, "the token predates a change of the node's state; attest again")
	}
	return nil
}

func (s *Server) specs(w http.ResponseWriter, r *http.Request, id int64) {
	sp, err := decodeSpecs(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	a, err := s.Store.Allocate(r.Context(), id, sp, s.now())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	resp := &api.SpecsResponse{RelayCount: a.After}
	if a.After < a.Wanted {
		resp.RelaysWanted, resp.Unplaced, resp.UnplacedReason = a.Wanted, a.Wanted-a.After, a.Short.Error()
	}
	if a.Before != a.After {
		d := fmt.Sprintf("%d -> %d relays", a.Before, a.After)
		if resp.Unplaced > 0 {
			d += fmt.Sprintf(" (wants %d: %s)", a.Wanted, resp.UnplacedReason)
		}
		s.audit(r.Context(), nodeActor(id), "relays.resize", nodeActor(id), d)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) getKeys(w http.ResponseWriter, r *http.Request, id int64) {
	b, err := s.Store.KeyBundle(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no key bundle stored")
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) putKeys(w http.ResponseWriter, r *http.Request, id int64) {
	b, err := decodeKeyBundle(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	err = s.Store.PutKeyBundle(r.Context(), id, b, s.now())
	if errors.Is(err, store.ErrStale) {
		writeErr(w, http.StatusConflict, api.CodeConflict, err.Error())
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	s.audit(r.Context(), nodeActor(id), "keys.put", nodeActor(id), fmt.Sprintf("version %d, %d bytes", b.Version, len(b.Bundle)))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, id int64) {
	ctx := r.Context()
	st, err := decodeStatus(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	// What each relay should run, to flag one that runs something else.
	// A node the server serves no config (refused as unsafe, say) runs
	// something else than that, whatever it runs: the heartbeat is taken.
	served, err := s.served(ctx, id)
	if err != nil {
		s.log().Warn("heartbeat: no served config to compare with", "node", id, "err", err)
	}
	dups, err := s.Store.RecordStatus(ctx, id, st, served, s.now())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	for _, d := range dups {
		s.audit(ctx, nodeActor(id), "relay.duplicate_key", "relay:"+d.Relay, d.String())
	}
	w.WriteHeader(http.StatusNoContent)
}
