package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/pcr"
)

// completion is node id's successful activation with boot evidence, as
// the server records it, matched at the releases' current version.
func completion(t *testing.T, s *Store, id int64) Completion {
	t.Helper()
	au, err := s.NodeAuth(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.ReleasesVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return Completion{NodeID: id, EK: au.EK, AKName: []byte("ak"), At: time.Now(), Releases: v,
		Evidence: &Attestation{NodeID: id, Status: AttestRelease, Release: "rel-A", PCRs: map[int]pcr.Value{4: {4}},
			EventLog: "replayed", HasReset: true, ResetCount: 7, At: time.Now()},
		Audit: func(a Attested) []AuditRow {
			return []AuditRow{{Actor: "node:x", Action: "attest.challenge"}, {Actor: "node:x", Action: "attest.ok", Details: a.Before}}
		}}
}

// CompleteAttestation records the activation, the evidence and the audit
// rows together, and says what the evidence replaced.
func TestCompleteAttestation(t *testing.T) {
	s := open(t)
	addRelease(t, s, "rel-A")
	id := fleetNode(t, s)
	ctx := context.Background()
	c := completion(t, s, id)
	a, err := s.CompleteAttestation(ctx, c)
	if err != nil || a.State != api.NodeEnabled || a.Auth.EK != c.EK || !a.FirstBoot || a.Before != AttestUnattested {
		t.Fatalf("first: %+v, %v", a, err)
	}
	got, err := s.Attestation(ctx, id)
	if err != nil || got.Release != "rel-A" || got.ResetCount != 7 || got.PCRs[4] != (pcr.Value{4}) {
		t.Fatalf("evidence: %+v, %v", got, err)
	}
	c.Evidence.ResetCount = 8
	if a, err = s.CompleteAttestation(ctx, c); err != nil || a.FirstBoot || a.Before != "rel-A" {
		t.Fatalf("second: %+v, %v", a, err)
	}
	if rows := dump(t, s.DB(), `SELECT action || ' ' || details FROM audit WHERE actor = 'node:x'`); strings.Join(rows, "|") !=
		"attest.challenge |attest.challenge |attest.ok rel-A|attest.ok unattested" {
		t.Errorf("audit rows: %q", rows)
	}
}

// A completion is refused with nothing written when its node was
// re-keyed or removed since the challenge (ErrNotFound), or when a
// release was added or retired since the quote was matched
// (ErrReleasesChanged); a node not enabled gets its state, nothing
// recorded.
func TestCompleteAttestationRefused(t *testing.T) {
	s := open(t)
	addRelease(t, s, "rel-A")
	id := fleetNode(t, s)
	ctx := context.Background()
	snapshot := func() string {
		return strings.Join(append(append(dump(t, s.DB(), `SELECT id || ' ' || coalesce(attested_at, '-') || ' ' || coalesce(ak_name, '-') FROM nodes`),
			dump(t, s.DB(), `SELECT node_id || ' ' || reset_count FROM attestations`)...),
			dump(t, s.DB(), `SELECT count(*) FROM audit`)...), "|")
	}
	before := snapshot()
	for _, tc := range []struct {
		name string
		edit func(*Completion)
		want error
	}{
		{"re-keyed", func(c *Completion) { c.EK = ekid.ID{1} }, ErrNotFound},
		{"removed", func(c *Completion) { c.NodeID = 1 << 40 }, ErrNotFound},
		{"releases changed", func(c *Completion) { c.Releases = "0/0/0" }, ErrReleasesChanged},
	} {
		c := completion(t, s, id)
		tc.edit(&c)
		if _, err := s.CompleteAttestation(ctx, c); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if now := snapshot(); now != before {
			t.Errorf("%s: the database changed:\n%s\n%s", tc.name, before, now)
		}
	}
	c := completion(t, s, id)
	if err := s.SetNodeState(ctx, id, api.NodeDisabled); err != nil {
		t.Fatal(err)
	}
	before = snapshot()
	if a, err := s.CompleteAttestation(ctx, c); err != nil || a.State != api.NodeDisabled {
		t.Errorf("disabled: %+v, %v", a, err)
	}
	if now := snapshot(); now != before {
		t.Errorf("disabled: the database changed:\n%s\n%s", before, now)
	}
}

// The pcrs column is JSON that decodes to the PCRs, in index order.
func TestPCRsJSON(t *testing.T) {
	if got := pcrsJSON(nil); got != "" {
		t.Errorf("no PCRs: %q", got)
	}
	p := map[int]pcr.Value{}
	for n := range 24 {
		p[n] = pcr.Value{byte(n), 0xff}
	}
	got := pcrsJSON(p)
	var back map[int]pcr.Value
	if err := json.Unmarshal([]byte(got), &back); err != nil || len(back) != len(p) {
		t.Fatalf("%s: %v %v", got, back, err)
	}
	for n, v := range p {
		if back[n] != v {
			t.Errorf("PCR %d: %v, want %v", n, back[n], v)
		}
	}
	if !strings.HasPrefix(got, `{"0":"00ff`) || !strings.Contains(got, `"9":"09ff`+strings.Repeat("0", 60)+`","10":`) {
		t.Errorf("not in index order: %s", got)
	}
}

// AuditRows writes any number of rows, in order, a statement per
// auditChunk.
func TestAuditRowsChunks(t *testing.T) {
	s := open(t)
	var rows []AuditRow
	for i := range 2*auditChunk + 3 {
		rows = append(rows, AuditRow{Actor: "test", Action: "chunk", Details: fmt.Sprint(i)})
	}
	if err := s.AuditRows(context.Background(), rows...); err != nil {
		t.Fatal(err)
	}
	r, err := s.DB().Query(`SELECT details FROM audit WHERE action = 'chunk' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	i := 0
	for ; r.Next(); i++ {
		var d string
		if err := r.Scan(&d); err != nil || d != fmt.Sprint(i) {
			t.Fatalf("row %d: %q %v", i, d, err)
		}
	}
	if i != len(rows) {
		t.Errorf("%d rows, want %d", i, len(rows))
	}
}

// ReleasesVersion moves with every release added or retired, and is what
// CompleteAttestation compares.
func TestReleasesVersion(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	version := func() string {
		t.Helper()
		v, err := s.ReleasesVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	seen := map[string]bool{version(): true}
	for _, change := range []func(){
		func() { addRelease(t, s, "rel-A") },
		func() { addRelease(t, s, "rel-B") },
		func() {
			if err := s.RetireRelease(ctx, "rel-A", time.Now()); err != nil {
				t.Fatal(err)
			}
		},
	} {
		change()
		v := version()
		if seen[v] {
			t.Fatalf("version %s again after a change", v)
		}
		seen[v] = true
	}
	id := fleetNode(t, s)
	c := completion(t, s, id)
	addRelease(t, s, "rel-C")
	if _, err := s.CompleteAttestation(ctx, c); !errors.Is(err, ErrReleasesChanged) {
		t.Errorf("completion matched before rel-C was added: %v, want ErrReleasesChanged", err)
	}
}
