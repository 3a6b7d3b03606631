// Package attest proves the node's identity to the config server with TPM2
// credential activation (API.md) and keeps the bearer token it earns fresh.
//
// The identity is the endorsement key; the attestation key is created once
// and persisted, so later boots present the same AK and create no key.
package attest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/ekid"
)

// Token is a bearer token issued by the server.
type Token struct {
	Value     string
	ExpiresAt time.Time
	NodeID    int64
	FirstBoot bool
}

// Session holds the node's EK and AK and a cached token, re-attesting when
// the token nears its expiry. It is safe for concurrent use.
type Session struct {
	tpm transport.TPM
	c   *api.Client
	log *slog.Logger
	o   options

	ekPub   tpm2.TPMTPublic
	ekID    ekid.ID
	ekName  tpm2.TPM2BName
	ekCert  []byte
	ak      *tpmkeys.Key
	bootLog []byte // the firmware event log, sent with quotes

	mu        sync.Mutex // held through an attestation
	tok       Token
	refreshAt time.Time
	nodeID    atomic.Int64 // readable while an attestation waits
}

type options struct {
	alg        tpm2.TPMAlgID
	minBackoff time.Duration
	maxBackoff time.Duration
	margin     time.Duration
	eventLog   string
}

// Option tunes a Session.
type Option func(*options)

// WithRSAEK uses the RSA-2048 EK.
func WithRSAEK() Option { return func(o *options) { o.alg = tpm2.TPMAlgRSA } }

// WithECCEK uses the ECC P-256 EK.
func WithECCEK() Option { return func(o *options) { o.alg = tpm2.TPMAlgECC } }

// WithBackoff sets Wait's first and largest delay between attempts while
// the server is unreachable or the node is pending or disabled (banned
// nodes wait ten times the largest).
func WithBackoff(first, max time.Duration) Option {
	return func(o *options) { o.minBackoff, o.maxBackoff = first, max }
}

// WithEventLog names the firmware event log sent with each quote
// (EventLogPath on a machine; a missing file sends none).
func WithEventLog(path string) Option { return func(o *options) { o.eventLog = path } }

// WithRefreshMargin re-attests when the token has less than d left (the
// default is a fifth of its lifetime, at most 5 minutes).
func WithRefreshMargin(d time.Duration) Option { return func(o *options) { o.margin = d } }

// NewSession loads the EK (and its certificate, if the TPM has one) and the
// AK, creating and persisting the AK on first use. It does not contact the
// server; Token does. Without WithRSAEK or WithECCEK the EK is the one
// tpmkeys.ChooseEK picks: ECC P-256 unless only an RSA EK is certified.
func NewSession(tpm transport.TPM, c *api.Client, log *slog.Logger, opts ...Option) (*Session, error) {
	o := options{minBackoff: time.Second, maxBackoff: time.Minute}
	for _, f := range opts {
		f(&o)
	}
	if o.alg == 0 {
		alg, err := tpmkeys.ChooseEK(tpm)
		if err != nil {
			return nil, fmt.Errorf("choosing the EK: %w", err)
		}
		o.alg = alg
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Session{tpm: tpm, c: c, log: log, o: o}
	ek, err := tpmkeys.PersistEK(tpm, o.alg)
	if err != nil {
		return nil, fmt.Errorf("loading EK: %w", err)
	}
	ek.Close(tpm)
	s.ekPub, s.ekName = ek.Public, ek.Name
	if s.ekCert, err = tpmkeys.EKCertificate(tpm, o.alg); err != nil {
		// A vendor certificate we cannot read is not fatal: the server may
		// trust the EK by its hash instead.
		log.Warn("cannot read the EK certificate; attesting without it", "err", err)
	}
	ak, created, err := tpmkeys.AK(tpm)
	if err != nil {
		return nil, fmt.Errorf("loading AK: %w", err)
	}
	s.ak = ak
	if s.ekID, err = tpmkeys.Identity(s.ekPub); err != nil {
		return nil, fmt.Errorf("EK: %w", err)
	}
	if s.bootLog, err = ReadEventLog(o.eventLog); err != nil {
		// The log only explains the quote, which is the evidence.
		log.Warn("cannot read the firmware event log; quoting without it", "err", err)
	}
	log.Info("TPM identity", "ek", map[tpm2.TPMAlgID]string{tpm2.TPMAlgECC: "ECC P-256", tpm2.TPMAlgRSA: "RSA-2048"}[o.alg],
		"ek_id", s.ekID, "ek_cert", len(s.ekCert) > 0,
		"ak_handle", fmt.Sprintf("0x%08x", uint32(ak.Handle)), "ak_created", created, "event_log_bytes", len(s.bootLog))
	return s, nil
}

// NodeID is the node's id at the server, known after the first attempt.
func (s *Session) NodeID() int64 { return s.nodeID.Load() }

// EKName is the TPM Name of the endorsement key (nameAlg ‖ digest).
func (s *Session) EKName() []byte { return append([]byte(nil), s.ekName.Buffer...) }

// EKPublic is the marshalled TPMT_PUBLIC of the EK, as sent to the server.
func (s *Session) EKPublic() []byte { return tpm2.Marshal(s.ekPub) }

// Token returns a valid bearer token: the cached one, or what one
// attestation earns when there is none or it is about to expire. It does
// not wait: a refusal (an *api.Error: pending, disabled, banned, ...) or
// an unreachable server is returned, for callers with a retry of their
// own (the reconcile loop, the key mirror). Wait is the boot's.
func (s *Session) Token(ctx context.Context) (string, error) {
	t, err := s.Current(ctx)
	return t.Value, err
}

// RefreshAt is when Token attests again rather than hand out the cached
// token (zero before the first token): a long-polled request asks to be
// held no longer, so a change is not answered to an expired token.
func (s *Session) RefreshAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshAt
}

// Current is Token with the token's details.
func (s *Session) Current(ctx context.Context) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok.Value != "" && time.Now().Before(s.refreshAt) {
		return s.tok, nil
	}
	tok, err := s.attestOnce(ctx)
	if err != nil {
		return Token{}, err
	}
	s.log.Info("attested", "node_id", tok.NodeID, "first_boot", tok.FirstBoot, "expires_at", tok.ExpiresAt)
	s.tok = tok
	life := time.Until(tok.ExpiresAt)
	margin := s.o.margin
	if margin == 0 {
		margin = min(5*time.Minute, life/5)
	}
	s.refreshAt = tok.ExpiresAt.Add(-margin)
	if life <= 0 {
		// Expired by our clock but just issued: the clock is off. Use the
		// token and attest again in a minute rather than on every call.
		s.log.Warn("the new token is already expired by the local clock; is the clock wrong?", "expires_at", tok.ExpiresAt)
		s.refreshAt = time.Now().Add(time.Minute)
	}
	return tok, nil
}

// Wait returns a token once the server hands one out, however long that
// takes, or ctx's error when it ends first. Every refusal is waited out
// with a console line saying what an administrator can do; none is fatal,
// as rebooting changes none of them: pending and disabled nodes ask again
// with backoff up to the largest delay, banned nodes and machines whose
// keys the server refuses ten times less often, and a 429 after the
// server's Retry-After (and up to a quarter more).
func (s *Session) Wait(ctx context.Context) (Token, error) {
	delay := s.o.minBackoff
	for attempt := 1; ; attempt++ {
		tok, err := s.Current(ctx)
		if err == nil {
			return tok, nil
		}
		if ctx.Err() != nil {
			return Token{}, fmt.Errorf("attestation: %w (last error: %v)", ctx.Err(), err)
		}
		wait := jitter(delay)
		delay = min(delay*2, s.o.maxBackoff)
		id := s.NodeID()
		ae, _ := api.AsError(err)
		switch {
		case ae == nil:
			s.log.Warn("attestation failed, retrying", "attempt", attempt, "err", err, "retry_in", wait.Round(time.Millisecond))
		case ae.Code == api.CodePending:
			msg := fmt.Sprintf("waiting for an administrator: configsrv node enable %d", id)
			if id == 0 {
				msg = "waiting for an administrator to enable this node"
			}
			s.log.Warn(msg, "node_id", id, "ek_id", s.ekID, "retry_in", wait.Round(time.Millisecond))
		case ae.Code == api.CodeDisabled:
			s.log.Warn(fmt.Sprintf("this node is disabled by the config server: no relays run until an administrator runs `configsrv node enable %d`", id),
				"node_id", id, "retry_in", wait.Round(time.Millisecond))
		case ae.Code == api.CodeBanned:
			wait = jitter(10 * s.o.maxBackoff)
			s.log.Error(fmt.Sprintf("this node is BANNED by the config server: it runs no relays and does not reboot; `configsrv node enable %d` lifts the ban", id),
				"node_id", id, "ek_id", s.ekID, "retry_in", wait.Round(time.Millisecond))
		case ae.Permanent():
			wait = jitter(10 * s.o.maxBackoff)
			s.log.Error("the config server refuses this machine's keys; a reboot would not change that", "err", err,
				"ek_id", s.ekID, "retry_in", wait.Round(time.Millisecond))
		case ae.Code == api.CodeEKUntrusted:
			s.log.Warn("the config server does not trust this EK: add its certificate's CA or allowlist its identity",
				"ek_id", s.ekID, "retry_in", wait.Round(time.Millisecond))
		case ae.Code == api.CodeUnknownRelease:
			s.log.Warn("the config server gives tokens only to nodes that booted an active release; this boot is none",
				"server", ae.Message, "retry_in", wait.Round(time.Millisecond))
		case ae.Status == http.StatusTooManyRequests:
			if ae.RetryAfter > 0 {
				// Never sooner than asked; up to a quarter later, so that
				// nodes refused together do not come back together.
				wait = ae.RetryAfter + rand.N(ae.RetryAfter/4+1)
			}
			msg := "rate limited by the config server"
			if ae.Code == api.CodePendingFull {
				msg = "the config server has as many nodes waiting for an administrator as it takes; asking again later"
			}
			s.log.Warn(msg, "retry_in", wait.Round(time.Millisecond))
		default:
			s.log.Warn("attestation refused, retrying", "attempt", attempt, "err", err, "retry_in", wait.Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Token{}, fmt.Errorf("attestation: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Invalidate drops token if it is the cached one, so the next Token call
// attests again (for a token the server refused before its expiry).
func (s *Session) Invalidate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok.Value == token {
		s.tok = Token{}
	}
}

// jitter spreads retries of a fleet that rebooted together: a uniform
// delay in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

func (s *Session) attestOnce(ctx context.Context) (Token, error) {
	ch, err := s.c.Attest(ctx, &api.AttestRequest{
		EKPublic:      tpm2.Marshal(s.ekPub),
		EKCertificate: s.ekCert,
		AKPublic:      tpm2.Marshal(s.ak.Public),
	})
	var ae *api.Error
	if errors.As(err, &ae) && ae.NodeID != 0 {
		s.setNodeID(ae.NodeID)
	}
	if err != nil {
		return Token{}, err
	}
	s.setNodeID(ch.NodeID)
	secret, err := s.activate(ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return Token{}, fmt.Errorf("activating the credential: %w", err)
	}
	req := &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}
	// A server that sends a nonce checks what this machine booted; an
	// older one would refuse the unknown field, so it gets no quote.
	if len(ch.Nonce) > 0 {
		if req.Quote, err = Quote(s.tpm, s.ak, ch.Nonce, s.bootLog); err != nil {
			clear(secret)
			return Token{}, fmt.Errorf("quoting the boot PCRs: %w", err)
		}
	}
	done, err := s.c.Complete(ctx, req)
	clear(secret)
	if err != nil {
		return Token{}, err
	}
	if done.Token == "" {
		return Token{}, errors.New("server answered without a token")
	}
	return Token{Value: done.Token, ExpiresAt: done.ExpiresAt, NodeID: ch.NodeID, FirstBoot: done.FirstBoot}, nil
}

func (s *Session) setNodeID(id int64) {
	if id != 0 {
		s.nodeID.Store(id)
	}
}

// activate recovers the server's secret: only this TPM's EK can decrypt it,
// and only for a credential bound to this AK's name.
func (s *Session) activate(blob, encSecret []byte) ([]byte, error) {
	ek, err := tpmkeys.EK(s.tpm, s.o.alg)
	if err != nil {
		return nil, err
	}
	defer ek.Close(s.tpm)
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: s.ak.Handle, Name: s.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle: tpm2.AuthHandle{Handle: ek.Handle, Name: ek.Name,
			Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, tpmkeys.EKPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}.Execute(s.tpm)
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}
