package httpapi

import (
	"context"
	"encoding/hex"
	"time"

	"patela/configsrv/challenge"
	"patela/configsrv/store"
)

// DefaultMaxChallenges bounds the challenges pending at once (issued,
// neither answered nor expired) when Server.MaxChallenges is 0. A node
// holds one for the second or so its TPM takes to activate and quote; a
// fleet of 10,000 booting at once holds at most 10,000, twice that if
// every node lost one completion on the way and retried (its agent waits
// 1 s, then 2 s, ...) while the first waits out its minute: 32,768 is over
// three times the fleet. An entry takes 550 bytes with a P-256 AK, 740
// with an RSA-2048 one (measured), so a full table is at most 23 MiB.
const DefaultMaxChallenges = 1 << 15

// challenges is the server's table of pending challenges.
func (s *Server) challenges() *challenge.Table {
	s.chOnce.Do(func() {
		n := s.MaxChallenges
		if n <= 0 {
			n = DefaultMaxChallenges
		}
		s.chal = challenge.New(ChallengeTTL, n)
	})
	return s.chal
}

// PendingChallenges is the number of challenges held: issued, neither
// answered nor swept.
func (s *Server) PendingChallenges() int { return s.challenges().Len() }

// challengeRow is the audit row of challenge c: written when it is spent
// (in the completion's transaction when that records an attestation) or
// forgotten, with what became of it, outcome ("" for a completion).
func challengeRow(c *challenge.Challenge, outcome string) store.AuditRow {
	target := nodeActor(c.NodeID)
	d := "ak " + hex.EncodeToString(c.AKName) + ", issued " + c.Issued.UTC().Format(time.RFC3339Nano)
	if outcome != "" {
		d += ", " + outcome
	}
	return store.AuditRow{Actor: target, Action: "attest.challenge", Target: target, Details: d}
}

// auditChallenges writes the audit rows of challenges that ended without
// a recorded attestation, in one transaction. They were logged when
// issued.
func (s *Server) auditChallenges(ctx context.Context, cs []*challenge.Challenge, outcome string) {
	if len(cs) == 0 {
		return
	}
	rows := make([]store.AuditRow, len(cs))
	for i, c := range cs {
		rows[i] = challengeRow(c, outcome)
	}
	if err := s.Store.AuditRows(context.WithoutCancel(ctx), rows...); err != nil {
		s.log().Error("audit", "action", "attest.challenge", "rows", len(rows), "err", err)
	}
}
