package attest

import (
	"encoding/json"
	"testing"

	"github.com/google/go-tpm/tpm2"

	srvattest "patela/configsrv/attest"
	"patela/configsrv/testsrv"
	"patela/init/tpmdev/tpmdevtest"
	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/swtpmtest"
	"patela/internal/testutil"
)

// TestEKCertificateSent: on a TPM whose manufacturer certified only an RSA
// EK (swtpm_setup), the agent picks that EK and sends its certificate, and
// the config server's own certificate check accepts them.
func TestEKCertificateSent(t *testing.T) {
	state, caDir := swtpmtest.Manufacture(t)
	m := tpmdevtest.At(t, state)
	srv := testsrv.Start(t)
	c, rec := srv.Proxy(t, nil)

	var log testutil.SyncBuffer
	s, err := NewSession(m.Cnt, c, nil, fast)
	if err != nil {
		t.Fatal(err)
	}
	if s.o.alg != tpm2.TPMAlgRSA || len(s.ekCert) == 0 {
		t.Fatalf("EK %v with a %d-byte certificate; want the certified RSA EK", s.o.alg, len(s.ekCert))
	}
	enrollSession(t, s, srv, &log)

	got := rec.Bodies("POST " + api.PathAttest)
	if len(got) == 0 {
		t.Fatal("no attest request recorded")
	}
	var req api.AttestRequest
	if err := json.Unmarshal(got[len(got)-1], &req); err != nil {
		t.Fatal(err)
	}
	if len(req.EKCertificate) == 0 {
		t.Fatal("the EK certificate was not sent")
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	trust := &srvattest.Trust{}
	if err := trust.LoadCADir(caDir); err != nil {
		t.Fatal(err)
	}
	parsed, err := srvattest.NewEK(req.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Admit(parsed, req.EKCertificate); err != nil {
		t.Fatalf("the server would refuse this EK: %v", err)
	}
	// And `tpm ek`'s identity is the server's node identity.
	if id, err := tpmkeys.Identity(*ek); err != nil || id != parsed.ID {
		t.Fatalf("EK identity %v %v differs from the server's %v", id, err, parsed.ID)
	}
}
