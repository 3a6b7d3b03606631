package httpapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/httpapi"
	"patela/configsrv/internal/tpmtest"
	"patela/configsrv/store"
	"patela/configsrv/testsrv"
	"patela/configsrv/token"
	"patela/internal/api"
)

// First contact → pending → enable → attest → token → specs → config, with
// a real TPM (swtpm) for RSA and ECC endorsement keys; every resolved
// torrc passes tor --verify-config.
func TestAttestationFlowSwtpm(t *testing.T) {
	for _, tc := range []struct {
		name string
		tmpl tpm2.TPMTPublic
	}{{"rsa", tpm2.RSAEKTemplate}, {"ecc", tpm2.ECCEKTemplate}} {
		t.Run(tc.name, func(t *testing.T) {
			s := testsrv.Start(t)
			node := tpmtest.New(t, tc.tmpl)
			c := s.Client(t)
			ctx := context.Background()
			req := &api.AttestRequest{EKPublic: node.EKPublic, AKPublic: node.AKPublic}

			_, err := c.Attest(ctx, req)
			var ae *api.Error
			if !api.IsCode(err, api.CodePending) || !errorAs(err, &ae) || ae.Status != 403 || ae.NodeID == 0 {
				t.Fatalf("first contact: want 403 pending with node id, got %v", err)
			}
			id := ae.NodeID
			if _, err := c.Attest(ctx, req); !api.IsCode(err, api.CodePending) {
				t.Fatalf("second contact before enable: %v", err)
			}
			if n := strings.Count(s.Admin(t, "node", "list"), "pending"); n != 1 {
				t.Fatalf("want one pending node, list shows %d", n)
			}
			s.Admin(t, "node", "enable", strconv.FormatInt(id, 10))

			var tok string
			for boot, wantFirst := range []bool{true, false} {
				ch, err := c.Attest(ctx, req)
				if err != nil {
					t.Fatalf("boot %d attest: %v", boot, err)
				}
				if ch.NodeID != id {
					t.Fatalf("node id %d, want %d", ch.NodeID, id)
				}
				secret, err := node.Activate(ch.CredentialBlob, ch.EncryptedSecret)
				if err != nil {
					t.Fatalf("ActivateCredential: %v", err)
				}
				done, err := c.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret})
				if err != nil {
					t.Fatalf("complete: %v", err)
				}
				if done.FirstBoot != wantFirst {
					t.Errorf("boot %d: first_boot = %v", boot, done.FirstBoot)
				}
				if d := time.Until(done.ExpiresAt); d < 59*time.Minute || d > 61*time.Minute {
					t.Errorf("token expires in %s, want 1h", d)
				}
				tok = done.Token
			}

			sp, err := c.Specs(ctx, tok, &api.Specs{CPUs: 3, MemoryBytes: 8 << 30, CPUModel: "swtpm box"})
			if err != nil || sp.RelayCount != 3 {
				t.Fatalf("specs: %+v %v", sp, err)
			}
			cfg, err := c.Config(ctx, tok)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NodeID != id || len(cfg.Relays) != 3 || cfg.PollIntervalS != 300 ||
				cfg.Network.IPv4Gateway != "192.0.2.1" || cfg.Network.IPv6Gateway != "2001:db8::1" {
				t.Fatalf("config: %+v", cfg)
			}
			for i, r := range cfg.Relays {
				sum := sha256.Sum256([]byte(r.Torrc))
				if r.TorrcSHA256 != hex.EncodeToString(sum[:]) {
					t.Errorf("%s: torrc_sha256 mismatch", r.Name)
				}
				if r.UID != 10001+i || r.ORPort != 9001 || !strings.HasSuffix(r.IPv4, "/24") || !strings.HasSuffix(r.IPv6, "/64") {
					t.Errorf("relay %d: %+v", i, r)
				}
				verifyTorrc(t, r.Torrc)
			}
			audit := s.Admin(t, "audit", "--limit", "100")
			// (Refusals such as attest.pending are audited in aggregate,
			// a minute later: TestRefusalsAuditedInAggregate.)
			for _, a := range []string{"node.first_contact", "node.enable", "attest.challenge", "attest.ok", "relays.resize"} {
				if !strings.Contains(audit, a) {
					t.Errorf("audit log lacks %s:\n%s", a, audit)
				}
			}
		})
	}
}

func errorAs(err error, target **api.Error) bool {
	e, ok := err.(*api.Error)
	if ok {
		*target = e
	}
	return ok
}

// A wrong secret is refused and spends the challenge; a replayed or
// expired challenge is gone.
func TestChallengeSecretReplayExpiry(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	id, ek, ak := l.enroll(t)
	_, akName, _ := attest.ParseAK(ak)
	req := &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak}

	// Wrong secret: 401, then the same challenge with the right one: 410.
	ch, err := l.client.Attest(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), secret...)
	bad[0] ^= 1
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: bad}); !api.IsCode(err, api.CodeBadSecret) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("challenge after a wrong secret: %v", err)
	}

	// Replay: a used challenge is gone.
	ch, _ = l.client.Attest(ctx, req)
	secret, _ = ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("replayed challenge: %v", err)
	}

	// Expiry: 60 s.
	ch, _ = l.client.Attest(ctx, req)
	secret, _ = ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	l.clock.Add(httpapi.ChallengeTTL + time.Second)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("expired challenge: %v", err)
	}
	// Within 60 s it works.
	ch, _ = l.client.Attest(ctx, req)
	secret, _ = ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	l.clock.Add(httpapi.ChallengeTTL - time.Second)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); err != nil {
		t.Fatalf("challenge within its lifetime: %v", err)
	}

	// A node disabled between challenge and answer gets no token.
	ch, _ = l.client.Attest(ctx, req)
	secret, _ = ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	l.st.SetNodeState(ctx, id, api.NodeDisabled)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeDisabled) {
		t.Fatalf("disabled during attestation: %v", err)
	}
	for _, st := range []api.NodeState{api.NodeDisabled, api.NodeBanned} {
		l.st.SetNodeState(ctx, id, st)
		if _, err := l.client.Attest(ctx, req); !api.IsCode(err, st.RefusalCode()) {
			t.Fatalf("attest while %s: %v", st, err)
		}
	}
	l.api.CloseAudit()
	got := l.api.Refusals()
	for action, n := range map[string]int64{"attest.bad_secret": 1, "attest.unknown_challenge": 2, "attest.challenge_expired": 1,
		"attest.refused": 1, "attest.disabled": 1, "attest.banned": 1} {
		if got[action] != n {
			t.Errorf("%s counted %d times, want %d", action, got[action], n)
		}
		if k := countRows(t, l.st, "audit WHERE action = '"+action+"'"); k != 1 {
			t.Errorf("%s: %d audit rows, want 1", action, k)
		}
	}
}

// Every node endpoint answers 401 for a missing, forged, expired or
// unknown-node token and 403 for a disabled or banned node, before any
// work; a valid token acts as its own node only.
func TestNodeEndpointAuthTable(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	if err := l.st.AddPool(ctx, mustPrefix("192.0.2.0/24"), mustAddr("192.0.2.1"), time.Now()); err != nil {
		t.Fatal(err)
	}
	a, _, _ := l.enroll(t)
	b, _, _ := l.enroll(t)
	gone, _, _ := l.enroll(t)
	now := l.clock.Now()
	issue := func(auth *token.Authority, id int64, at time.Time) string { return issueAt(t, auth, l.st, id, at) }
	goneTok := issue(l.auth, gone, now)
	if err := l.st.RemoveNode(ctx, gone); err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forger := token.New(otherKey, time.Hour)
	valid := issue(l.auth, a, now)
	au, _ := l.st.NodeAuth(ctx, a)
	claims := token.Claims{Node: a, EK: au.EK, Epoch: au.Epoch}
	mint := func(c token.Claims) string {
		tok, _, err := l.auth.Issue(c, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	otherEK, nextEpoch := claims, claims
	otherEK.EK[0] ^= 1
	nextEpoch.Epoch++
	// A valid token with one byte of its signature changed.
	rawTok, _ := base64.StdEncoding.DecodeString(valid)
	rawTok[len(rawTok)-10] ^= 0x01
	tampered := base64.StdEncoding.EncodeToString(rawTok)

	endpoints := []struct {
		method, path string
		body         []byte
		ok           int
	}{
		{"POST", api.PathSpecs, mustJSON(t, api.Specs{CPUs: 1, MemoryBytes: 2 << 30}), 200},
		{"GET", api.PathConfig, nil, 200},
		{"PUT", api.PathKeys, mustJSON(t, api.KeyBundle{Bundle: []byte("ciphertext"), Version: 0}), 0}, // version set per call
		{"GET", api.PathKeys, nil, 200},
		{"POST", api.PathStatus, mustJSON(t, api.Status{BootID: "b1", UptimeS: 5}), 204},
	}
	cases := []struct {
		name   string
		token  func() string
		status int
		code   api.ErrorCode
		setup  func()
	}{
		{"missing", func() string { return "" }, 401, api.CodeUnauthorized, nil},
		{"garbage", func() string { return "bm90IGEgYmlzY3VpdA==" }, 401, api.CodeUnauthorized, nil},
		{"forged", func() string { return issue(forger, a, now) }, 401, api.CodeUnauthorized, nil},
		{"tampered", func() string { return tampered }, 401, api.CodeUnauthorized, nil},
		{"expired", func() string { return issue(l.auth, a, now.Add(-61*time.Minute)) }, 401, api.CodeUnauthorized, nil},
		{"removed node", func() string { return goneTok }, 401, api.CodeUnauthorized, nil},
		{"another EK", func() string { return mint(otherEK) }, 401, api.CodeUnauthorized, nil},
		{"a later epoch", func() string { return mint(nextEpoch) }, 401, api.CodeUnauthorized, nil},
		// Another node's valid token works, as that node (checked below).
		{"other node", func() string { return issue(l.auth, b, now) }, 0, "", nil},
		{"disabled node", func() string { return valid }, 403, api.CodeDisabled, func() { l.st.SetNodeState(ctx, a, api.NodeDisabled) }},
		{"banned node", func() string { return valid }, 403, api.CodeBanned, func() { l.st.SetNodeState(ctx, a, api.NodeBanned) }},
		// Re-enabled: the tokens from before the ban are dead; a new one works.
		{"re-enabled node's old token", func() string { return valid }, 401, api.CodeUnauthorized, func() { l.st.SetNodeState(ctx, a, api.NodeEnabled) }},
		{"valid", func() string { return issue(l.auth, a, now) }, 0, "", nil},
	}
	version, otherVersion := uint64(0), uint64(0)
	for _, c := range cases {
		if c.setup != nil {
			c.setup()
		}
		for _, e := range endpoints {
			body := e.body
			want := c.status
			if e.method == "PUT" {
				version++
				body = mustJSON(t, api.KeyBundle{Bundle: []byte("ciphertext"), Version: version})
				if c.name == "other node" {
					otherVersion = version
				}
			}
			if want == 0 {
				want = e.ok
				if e.method == "PUT" {
					want = 204
				}
			}
			status, code, _ := raw(t, l.client, e.method, e.path, c.token(), body)
			if status != want || code != c.code {
				t.Errorf("%s %s with %s token: %d %q, want %d %q", e.method, e.path, c.name, status, code, want, c.code)
			}
		}
	}
	// Node b's token sees b, not a.
	tb := issue(l.auth, b, now)
	cfg, err := l.client.Config(ctx, tb)
	if err != nil || cfg.NodeID != b {
		t.Fatalf("other node's config: %+v %v", cfg, err)
	}
	if kb, err := l.client.GetKeys(ctx, tb); err != nil || kb.Version != otherVersion {
		t.Fatalf("node b's bundle: %+v %v, want the version it stored (%d)", kb, err, otherVersion)
	}
	// Nothing the refused requests carried was stored: a's bundle is the
	// one the valid PUT stored.
	kb, err := l.st.KeyBundle(ctx, a)
	if err != nil || kb.Version != version {
		t.Fatalf("bundle of a: %+v %v (want version %d)", kb, err, version)
	}
	for _, id := range []int64{a, b} {
		if n := countRows(t, l.st, "relays WHERE node_id = "+strconv.FormatInt(id, 10)); n != 1 {
			t.Errorf("node %d has %d relays, want 1 from its one accepted specs call", id, n)
		}
	}
}

// AK and EK public areas that are not what a TPM attestation key or
// endorsement key is are refused, and no node is created.
func TestBadKeys(t *testing.T) {
	l := newLocal(t, nil)
	ek, _ := softek.New()
	goodAK, _ := softek.AKPublic()
	akPub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](goodAK)
	mod := func(f func(*tpm2.TPMTPublic)) []byte {
		p := *akPub
		f(&p)
		return tpm2.Marshal(p)
	}
	signingEK := mod(func(p *tpm2.TPMTPublic) {}) // an AK offered as EK
	cases := []struct {
		name   string
		ek, ak []byte
		code   api.ErrorCode
	}{
		{"ak not fixedTPM", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }), api.CodeBadAK},
		{"ak not fixedParent", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }), api.CodeBadAK},
		{"ak not sensitiveDataOrigin", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }), api.CodeBadAK},
		{"ak not restricted", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }), api.CodeBadAK},
		{"ak decrypts", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }), api.CodeBadAK},
		{"ak does not sign", ek.Public, mod(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false }), api.CodeBadAK},
		{"ak garbage", ek.Public, []byte{1, 2, 3}, api.CodeBadAK},
		{"ak trailing bytes", ek.Public, append(append([]byte(nil), goodAK...), 0), api.CodeBadAK},
		{"ek garbage", []byte("not a key"), goodAK, api.CodeBadEK},
		{"ek is a signing key", signingEK, goodAK, api.CodeBadEK},
		{"ek trailing bytes", append(append([]byte(nil), ek.Public...), 0), goodAK, api.CodeBadEK},
	}
	for _, c := range cases {
		status, code, _ := raw(t, l.client, "POST", api.PathAttest, "", mustJSON(t, api.AttestRequest{EKPublic: c.ek, AKPublic: c.ak}))
		if status != 400 || code != c.code {
			t.Errorf("%s: %d %s, want 400 %s", c.name, status, code, c.code)
		}
	}
	if n := countRows(t, l.st, "nodes"); n != 0 {
		t.Errorf("%d nodes created by refused requests", n)
	}
	l.api.CloseAudit()
	if got := l.api.Refusals(); got["attest.bad_ak"]+got["attest.bad_ek"] != int64(len(cases)) {
		t.Errorf("refusals counted: %v, want %d", got, len(cases))
	}
	// From one address, in one minute: one row per kind.
	if n := countRows(t, l.st, "audit WHERE action IN ('attest.bad_ak', 'attest.bad_ek')"); n != 2 {
		t.Errorf("%d refusal rows audited, want 2", n)
	}
}

// Bodies that are too large, malformed, carry unknown fields, wrong types
// or trailing data are 400 bad_request on every endpoint and change nothing.
func TestMalformedBodies(t *testing.T) {
	l := newLocal(t, nil)
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	huge := []byte(`{"cpus": 1, "cpu_model": "` + strings.Repeat("x", api.MaxBody) + `"}`)
	bodies := map[string][]byte{
		"oversized":     huge,
		"malformed":     []byte(`{"cpus": `),
		"unknown field": []byte(`{"surprise": 1}`),
		"wrong type":    []byte(`{"cpus": "four", "ek_public": 7, "version": "x", "boot_id": 1, "challenge_id": 3}`),
		"trailing data": []byte(`{} {}`),
		"empty":         []byte(``),
		"not an object": []byte(`[1,2]`),
		"duplicate key": []byte(`{"cpus": 1, "memory_bytes": 1, "cpus": 2}`),
	}
	endpoints := []struct{ method, path, tok string }{
		{"POST", api.PathAttest, ""},
		{"POST", api.PathAttestComplete, ""},
		{"POST", api.PathSpecs, tok},
		{"PUT", api.PathKeys, tok},
		{"POST", api.PathStatus, tok},
	}
	before := countRows(t, l.st, "nodes") + countRows(t, l.st, "relays") + countRows(t, l.st, "key_bundles") + l.api.PendingChallenges()
	for name, body := range bodies {
		for _, e := range endpoints {
			status, code, _ := raw(t, l.client, e.method, e.path, e.tok, body)
			if status != 400 || code != api.CodeBadRequest {
				t.Errorf("%s %s, %s body: %d %q, want 400 bad_request", e.method, e.path, name, status, code)
			}
		}
	}
	after := countRows(t, l.st, "nodes") + countRows(t, l.st, "relays") + countRows(t, l.st, "key_bundles") + l.api.PendingChallenges()
	if before != after {
		t.Errorf("rows changed: %d -> %d", before, after)
	}
	n, _ := l.st.Node(context.Background(), id)
	if n.BootID != "" || n.CPUs != 0 {
		t.Errorf("node changed by refused bodies: %+v", n)
	}
}

// /v1/attest* is rate limited per client address with 429 and Retry-After.
func TestAttestRateLimit(t *testing.T) {
	l := newLocal(t, func(s *httpapi.Server) { s.Limiter = httpapi.NewLimiter(0.5, 2) })
	body := []byte(`{}`)
	var last *http.Response
	var status int
	for i := 0; i < 3; i++ {
		status, _, last = raw(t, l.client, "POST", api.PathAttest, "", body)
	}
	if status != 429 {
		t.Fatalf("third request in a burst of 2: %d, want 429", status)
	}
	if ra, err := strconv.Atoi(last.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
		t.Errorf("Retry-After %q, want 1-2 s", last.Header.Get("Retry-After"))
	}
	if s, _, _ := raw(t, l.client, "POST", api.PathAttestComplete, "", body); s != 429 {
		t.Errorf("complete shares the limit: %d", s)
	}
	l.clock.Add(2 * time.Second)
	if s, _, _ := raw(t, l.client, "POST", api.PathAttest, "", body); s != 400 {
		t.Errorf("after refill: %d, want 400 (the empty body)", s)
	}
	// Node endpoints are not limited.
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	for i := 0; i < 5; i++ {
		if s, _, _ := raw(t, l.client, "GET", api.PathConfig, tok, nil); s != 200 {
			t.Fatalf("config %d: %d", i, s)
		}
	}
}

// The key mirror holds ciphertext whose version only grows; the heartbeat
// lands in the relay rows.
func TestKeysAndStatus(t *testing.T) {
	s := testsrv.Start(t)
	id, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	ctx := context.Background()
	if _, err := c.GetKeys(ctx, tok); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("no bundle yet: %v", err)
	}
	if err := c.PutKeys(ctx, tok, &api.KeyBundle{Bundle: []byte("v3"), Version: 3}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{3, 2} {
		if err := c.PutKeys(ctx, tok, &api.KeyBundle{Bundle: []byte("old"), Version: v}); !api.IsCode(err, api.CodeConflict) {
			t.Fatalf("version %d after 3: %v", v, err)
		}
	}
	big := bytes.Repeat([]byte{7}, api.MaxBody)
	if err := c.PutKeys(ctx, tok, &api.KeyBundle{Bundle: big, Version: 9}); !api.IsCode(err, api.CodeBadRequest) {
		t.Fatalf("bundle over 64 KiB: %v", err)
	}
	if err := c.PutKeys(ctx, tok, &api.KeyBundle{Bundle: []byte("v4"), Version: 4}); err != nil {
		t.Fatal(err)
	}
	kb, err := c.GetKeys(ctx, tok)
	if err != nil || kb.Version != 4 || string(kb.Bundle) != "v4" {
		t.Fatalf("bundle: %+v %v", kb, err)
	}

	if _, err := c.Specs(ctx, tok, &api.Specs{CPUs: 2, MemoryBytes: 2 << 30}); err != nil {
		t.Fatal(err)
	}
	st := &api.Status{BootID: "boot-1", UptimeS: 42, Relays: []api.RelayStatus{
		{Name: "murazzano", Fingerprint: "ABCDEF0123456789ABCDEF0123456789ABCDEF01",
			Ed25519ID: "GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3VM", State: "running", Restarts: 2},
		{Name: "notmine", Fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567", State: "running"},
	}}
	// Fingerprints go into other relays' MyFamily lines: anything but
	// what tor writes is refused whole, before any row changes.
	for _, bad := range []api.RelayStatus{
		{Name: "murazzano", Fingerprint: "ABCDEF0123456789ABCDEF0123456789ABCDEF01\nExitPolicy accept *:*"},
		{Name: "murazzano", Fingerprint: "abcdef0123456789abcdef0123456789abcdef01"},
		{Name: "murazzano", Ed25519ID: "GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3VM\nX"},
		{Name: "murazzano", TorrcSHA256: "not-a-sha"},
	} {
		bad.State = "running"
		err := c.Status(ctx, tok, &api.Status{BootID: "bad", Relays: []api.RelayStatus{bad}})
		if !api.IsCode(err, api.CodeBadRequest) {
			t.Fatalf("heartbeat %+v: %v", bad, err)
		}
	}
	if out := s.Admin(t, "relay", "list", "--json"); strings.Contains(out, "running") || strings.Contains(out, "ExitPolicy") {
		t.Fatalf("a refused heartbeat changed relays:\n%s", out)
	}
	if err := c.Status(ctx, tok, st); err != nil {
		t.Fatal(err)
	}
	var relays []store.Relay
	if err := json.Unmarshal([]byte(s.Admin(t, "relay", "list", "--json")), &relays); err != nil {
		t.Fatal(err)
	}
	if len(relays) != 2 || relays[0].Fingerprint != st.Relays[0].Fingerprint || relays[0].State != "running" ||
		relays[0].Restarts != 2 || relays[1].Fingerprint != "" {
		t.Fatalf("relays after heartbeat: %+v", relays)
	}
	var n store.Node
	if err := json.Unmarshal([]byte(s.Admin(t, "node", "show", strconv.FormatInt(id, 10), "--json")), &n); err != nil {
		t.Fatal(err)
	}
	if n.BootID != "boot-1" || n.UptimeS != 42 || time.Since(n.LastSeen) > time.Minute {
		t.Fatalf("node after heartbeat: %+v", n)
	}
}

// GET /v1/node/config never allocates; POST specs does, and frees relays
// when the count drops; when the pools cannot hold all it wants a node
// gets what fits and is told how many are missing.
func TestSpecsAllocation(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	l.st.AddPool(ctx, mustPrefix("192.0.2.0/29"), mustAddr("192.0.2.1"), time.Now()) // .2-.6
	l.st.AddPool(ctx, mustPrefix("2001:db8::/64"), mustAddr("2001:db8::1"), time.Now())
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	cfg, err := l.client.Config(ctx, tok)
	if err != nil || len(cfg.Relays) != 0 || countRows(t, l.st, "relays") != 0 {
		t.Fatalf("config before specs allocated: %+v %v", cfg, err)
	}
	sp, err := l.client.Specs(ctx, tok, &api.Specs{CPUs: 8, MemoryBytes: 64 << 30})
	if err != nil || sp.RelayCount != 5 || sp.RelaysWanted != 8 || sp.Unplaced != 3 || !strings.Contains(sp.UnplacedReason, "IPv4") {
		t.Fatalf("8 relays from 5 addresses: %+v %v", sp, err)
	}
	if cfg, _ := l.client.Config(ctx, tok); len(cfg.Relays) != 5 {
		t.Fatalf("config after a partial allocation: %d relays", len(cfg.Relays))
	}
	sp, err = l.client.Specs(ctx, tok, &api.Specs{CPUs: 4, MemoryBytes: 64 << 30})
	if err != nil || sp.RelayCount != 4 || sp.Unplaced != 0 {
		t.Fatalf("specs: %+v %v", sp, err)
	}
	sp, err = l.client.Specs(ctx, tok, &api.Specs{CPUs: 4, MemoryBytes: 1 << 30})
	if err != nil || sp.RelayCount != 1 {
		t.Fatalf("specs with 1 GiB: %+v %v", sp, err)
	}
	cfg, _ = l.client.Config(ctx, tok)
	if len(cfg.Relays) != 1 || cfg.Relays[0].IPv4 != "192.0.2.2/29" || cfg.Relays[0].IPv6 != "2001:db8::2/64" {
		t.Fatalf("after shrinking: %+v", cfg.Relays)
	}
	for _, r := range cfg.Relays {
		verifyTorrc(t, r.Torrc)
	}
}

// With an EK policy configured, an EK that fails it gets 403 ek_untrusted
// and leaves no node behind; one that passes starts pending.
func TestEKUntrusted(t *testing.T) {
	good, _ := softek.New()
	bad, _ := softek.New()
	ak, _ := softek.AKPublic()
	l := newLocal(t, func(s *httpapi.Server) {
		s.Trust = &attest.Trust{Allow: map[[32]byte]bool{sha256.Sum256(good.Public): true}}
	})
	if status, code, _ := raw(t, l.client, "POST", api.PathAttest, "", mustJSON(t, api.AttestRequest{EKPublic: bad.Public, AKPublic: ak})); status != 403 || code != api.CodeEKUntrusted {
		t.Fatalf("untrusted EK: %d %s", status, code)
	}
	if n := countRows(t, l.st, "nodes"); n != 0 {
		t.Fatalf("untrusted EK created %d nodes", n)
	}
	if status, code, _ := raw(t, l.client, "POST", api.PathAttest, "", mustJSON(t, api.AttestRequest{EKPublic: good.Public, AKPublic: ak})); status != 403 || code != api.CodePending {
		t.Fatalf("allowlisted EK: %d %s", status, code)
	}
}

// Rendered configs are cached, but every admin change (made by the CLI, a
// separate process in production) shows at the next fetch; heartbeats do
// not invalidate the cache.
func TestConfigFollowsAdminChanges(t *testing.T) {
	s := testsrv.Start(t)
	id, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	ctx := context.Background()
	if _, err := c.Specs(ctx, tok, &api.Specs{CPUs: 2, MemoryBytes: 4 << 30}); err != nil {
		t.Fatal(err)
	}
	fetch := func() *api.NodeConfig {
		t.Helper()
		cfg, err := c.Config(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	first := fetch()
	if again := fetch(); again.Relays[0].TorrcSHA256 != first.Relays[0].TorrcSHA256 {
		t.Fatal("config changed with nothing changed")
	}
	ids := strconv.FormatInt(id, 10)
	s.Admin(t, "node", "set", ids, "poll_interval_s", "60")
	if cfg := fetch(); cfg.PollIntervalS != 60 {
		t.Fatalf("poll interval after node set: %d", cfg.PollIntervalS)
	}
	f := t.TempDir() + "/relay.torrc"
	os.WriteFile(f, []byte("MaxMemInQueues 256 MB\n"), 0o644)
	s.Admin(t, "torrc", "import", f, "--relay", first.Relays[1].Name)
	cfg := fetch()
	// The other relay keeps the managed value (4 GiB: 256 MiB reserved, 1920 MiB each, 3/4).
	if !strings.Contains(cfg.Relays[0].Torrc, "MaxMemInQueues 1440 MB\n") || !strings.Contains(cfg.Relays[1].Torrc, "MaxMemInQueues 256 MB\n") ||
		strings.Count(cfg.Relays[1].Torrc, "MaxMemInQueues") != 1 {
		t.Fatalf("relay torrc import not reflected:\n%s", cfg.Relays[1].Torrc)
	}
	verifyTorrc(t, cfg.Relays[1].Torrc)
	st, err := store.Open(s.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g0, _ := st.ConfigGeneration(ctx)
	hb := &api.Status{BootID: "x", Relays: []api.RelayStatus{{Name: cfg.Relays[0].Name, Fingerprint: strings.Repeat("F", 40), State: "running"}}}
	if err := c.Status(ctx, tok, hb); err != nil {
		t.Fatal(err)
	}
	// A new fingerprint changes the other relays' MyFamily; the same one
	// again changes nothing.
	g1, _ := st.ConfigGeneration(ctx)
	if g1 == g0 {
		t.Error("a relay's first fingerprint did not bump the config generation")
	}
	hb.Relays[0].State = "reloading"
	if err := c.Status(ctx, tok, hb); err != nil {
		t.Fatal(err)
	}
	if g, _ := st.ConfigGeneration(ctx); g != g1 {
		t.Errorf("a heartbeat repeating its fingerprint bumped the config generation %d -> %d", g1, g)
	}
	g0 = g1
	s.Admin(t, "pool", "add", "198.51.100.0/24", "--gateway", "198.51.100.1")
	if g2, _ := st.ConfigGeneration(ctx); g2 == g0 {
		t.Error("adding a pool did not bump the config generation")
	}
}

// Wrong methods and unknown paths answer JSON errors too.
func TestRouting(t *testing.T) {
	l := newLocal(t, nil)
	for _, c := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", api.PathAttest, 405, "POST"},
		{"DELETE", api.PathKeys, 405, "GET, PUT"},
		{"POST", api.PathConfig, 405, "GET"},
		{"GET", "/v1/admin", 404, ""},
		{"GET", api.PathConfig + "/x", 404, ""},
	} {
		status, code, resp := raw(t, l.client, c.method, c.path, "", nil)
		if status != c.status || code == "" || resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %q Allow %q", c.method, c.path, status, code, resp.Header.Get("Allow"))
		}
	}
}
