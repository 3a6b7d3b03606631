package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/quote/quotetest"
	"patela/configsrv/testsrv"
	"patela/init/tpmdev/tpmdevtest"
	"patela/internal/pcr"
	"patela/internal/release"
	"patela/internal/testutil"
)

// TestQuoteAgainstConfigsrv: the agent's session quotes a swtpm whose
// PCRs a boot of release A extended, sends its event log, and the real
// server records the node as booted A with a log that replayed; the quote
// costs three TPM commands per attestation.
func TestQuoteAgainstConfigsrv(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	dir := t.TempDir()
	boot := quotetest.Boot("A")
	if err := boot.Extend(m.Dev); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "binary_bios_measurements")
	os.WriteFile(logPath, boot.Bytes(), 0o444)
	rel, err := release.New("rel-A", release.KindUKI, map[int]pcr.Value{4: boot.PCRs[4], 11: boot.PCRs[11], 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ef", 32)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rel.Approve(key)
	b, _ := rel.Marshal()
	relPath := filepath.Join(dir, "rel-A.json")
	os.WriteFile(relPath, b, 0o644)
	srv.Admin(t, "release", "add", relPath)

	s, err := NewSession(m.Cnt, srv.Client(t), nil, fast, WithEventLog(logPath))
	if err != nil {
		t.Fatal(err)
	}
	var log testutil.SyncBuffer
	tok := enrollSession(t, s, srv, &log)
	var shown struct {
		Attestation struct {
			Status   string `json:"status"`
			Release  string `json:"release"`
			EventLog string `json:"event_log"`
		} `json:"attestation"`
	}
	show := func() {
		t.Helper()
		out := srv.Admin(t, "node", "show", strconv.FormatInt(tok.NodeID, 10), "--json")
		if err := json.Unmarshal([]byte(out), &shown); err != nil {
			t.Fatalf("node show: %v\n%s", err, out)
		}
	}
	show()
	if a := shown.Attestation; a.Status != "release" || a.Release != "rel-A" || a.EventLog != "replayed" {
		t.Fatalf("the server recorded %+v, want release rel-A with the log replayed", a)
	}

	// Another attestation, counted: what remote attestation adds.
	s.Invalidate(tok.Value)
	m.Cnt.Reset()
	if _, err := s.Token(context.Background()); err != nil {
		t.Fatal(err)
	}
	q, rd := m.Cnt.Count(tpm2.TPMCCQuote), m.Cnt.Count(tpm2.TPMCCPCRRead)
	if q != 1 || rd != 2 {
		t.Errorf("TPM2_Quote %d, TPM2_PCR_Read %d per attestation; want 1 and 2", q, rd)
	}
	t.Logf("one attestation: %d TPM commands (%d quote, %d PCR reads), %v in the TPM", m.Cnt.Total(), q, rd, m.Cnt.Elapsed())
}
