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
// holds one for the second or so between its attest and its completion;
// a fleet of 10,000 rebooting together, each node retrying (backoff 1 s,
// doubling) a handful of times within one TTL after completions lost on
// the way, holds about 60,000 at the very worst. At about 700 bytes each
// (an RSA AK public area is most of it) the table stays under 50 MiB.
const DefaultMaxChallenges = 1 << 16

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
