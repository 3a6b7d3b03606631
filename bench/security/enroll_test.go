package security_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/attest/softek"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/swtpmtest"
)

// dbState is what the attacks must not change: every table's row count
// but the audit log's (refusals are audited in aggregate, a minute
// later: TestPendingFloodBounded counts those rows), the nodes' and
// relays' rows and the key bundles, and SQLite's own integrity check.
// (Pending challenges are held in the server's memory: an attack cannot
// make them rows.)
func dbState(t *testing.T, srv *srvproc.Server) string {
	t.Helper()
	st, err := store.Open(srv.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db := st.DB()
	var b strings.Builder
	var ok string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q %v", ok, err)
	}
	for _, table := range []string{"nodes", "relays", "node_settings", "key_bundles", "pools", "global_settings", "global_torrc"} {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s: %d rows\n", table, n)
	}
	for _, q := range []string{
		`SELECT id, hex(ek_hash), state, token_epoch, last_seen, attested_at, boot_id, uptime_s, cpus, memory_bytes, cpu_model, relays_wanted FROM nodes ORDER BY id`,
		`SELECT node_id, idx, name, ipv4, ipv6, fingerprint, run_state, restarts, reported_at FROM relays ORDER BY id`,
		`SELECT node_id, version, hex(bundle), updated FROM key_bundles ORDER BY node_id`,
	} {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&b, vals...)
		}
		rows.Close()
	}
	return b.String()
}

// variant re-encodes an EK public area with f applied: the same key, so
// a server keying nodes by the bytes would see a new node.
func variant(t *testing.T, pub []byte, f func(*tpm2.TPMTPublic)) []byte {
	t.Helper()
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub)
	if err != nil {
		t.Fatal(err)
	}
	f(p)
	return tpm2.Marshal(*p)
}

// variants are what the identity attack sent: flipped attribute bits,
// another authPolicy, other symmetric parameters, a padded key.
func variants(t *testing.T, pub []byte) map[string][]byte {
	t.Helper()
	pad := func(p *tpm2.TPMTPublic) {
		if pt, err := p.Unique.ECC(); err == nil {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: append([]byte{0}, pt.X.Buffer...)}, Y: pt.Y})
		} else if n, err := p.Unique.RSA(); err == nil {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: append([]byte{0}, n.Buffer...)})
		}
	}
	return map[string][]byte{
		"noDA":          variant(t, pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.NoDA = true }),
		"userWithAuth":  variant(t, pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = !p.ObjectAttributes.UserWithAuth }),
		"stClear":       variant(t, pub, func(p *tpm2.TPMTPublic) { p.ObjectAttributes.STClear = true }),
		"no authPolicy": variant(t, pub, func(p *tpm2.TPMTPublic) { p.AuthPolicy = tpm2.TPM2BDigest{} }),
		"other policy": variant(t, pub, func(p *tpm2.TPMTPublic) {
			p.AuthPolicy = tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{7}, len(p.AuthPolicy.Buffer))}
		}),
		"padded key": variant(t, pub, pad),
	}
}

func attestBody(t *testing.T, ek, ak, cert []byte) io.Reader {
	t.Helper()
	return bytes.NewReader(mustJSON(t, api.AttestRequest{EKPublic: ek, EKCertificate: cert, AKPublic: ak}))
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// swtpmEKs returns a manufactured swtpm's RSA EK (TCG template L-1) and
// the P-384 EK swtpm_setup persisted at 0x81010016 (high-range H-3),
// with their certificates, and the directory of the CA that issued them.
func swtpmEKs(t *testing.T) (rsa, p384, rsaCert, p384Cert []byte, caDir string) {
	t.Helper()
	state, caDir := swtpmtest.Manufacture(t)
	tp := swtpmtest.StartState(t, state)
	tpm, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	cp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(tpm)
	rp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(0x81010016)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return cp.OutPublic.Bytes(), rp.OutPublic.Bytes(), readNV(t, tpm, 0x01C00002), readNV(t, tpm, 0x01C00016), caDir
}

func readNV(t *testing.T, tpm transport.TPM, index tpm2.TPMHandle) []byte {
	t.Helper()
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	nv, _ := pub.NVPublic.Contents()
	var out []byte
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, 512)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: index, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: pub.NVName}, Size: n, Offset: off,
		}.Execute(tpm)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rsp.Data.Buffer...)
		off += n
	}
	return out
}

// attack is one request an attacker sends and the refusal it must get.
type attack struct {
	name         string
	client       *api.Client
	method, path string
	tok          string
	body         func() io.Reader
	status       int
	code         api.ErrorCode
}

func (a attack) run(t *testing.T) {
	t.Helper()
	var body io.Reader
	if a.body != nil {
		body = a.body()
	}
	status, b := do(t, a.client, a.method, a.path, a.tok, body, map[string]string{"Content-Type": "application/json"})
	if status != a.status || !strings.Contains(string(b), `"code":"`+string(a.code)+`"`) {
		t.Errorf("%s: %s %s: %d %s, want %d %s", a.name, a.method, a.path, status, b, a.status, a.code)
	}
}

// nodeEndpoints are every node endpoint, with a body that would change
// something if accepted (the key bundle at the highest version, after
// which the real node's saves would fail forever).
func nodeEndpoints(name string, c *api.Client, tok string, status int, code api.ErrorCode) []attack {
	str := func(s string) func() io.Reader { return func() io.Reader { return strings.NewReader(s) } }
	var out []attack
	for _, e := range []struct{ method, path, body string }{
		{"POST", api.PathSpecs, `{"cpus":8,"memory_bytes":68719476736}`},
		{"GET", api.PathConfig, ""},
		{"GET", api.PathKeys, ""},
		{"PUT", api.PathKeys, `{"bundle":"AAAA","version":9223372036854775807}`},
		{"POST", api.PathStatus, `{"boot_id":"attacker","uptime_s":1}`},
	} {
		a := attack{name: name, client: c, method: e.method, path: e.path, tok: tok, status: status, code: code}
		if e.body != "" {
			a.body = str(e.body)
		}
		out = append(out, a)
	}
	return out
}

// The attacks of issue 12 against the real configsrv binary with software
// and swtpm EKs: each is refused and the database is unchanged.
func TestEnrollmentAttacks(t *testing.T) {
	rsa, p384, _, _, _ := swtpmEKs(t)
	srv, nodes := fleet(t, 4, "127.4.5.1")
	ctx := context.Background()
	a, b, c, gone := nodes[0], nodes[1], nodes[2], nodes[3]
	ids := func(n *loadgen.Node) string { return strconv.FormatInt(n.ID, 10) }
	admin := func(args ...string) {
		t.Helper()
		if _, err := srv.Admin(args...); err != nil {
			t.Fatal(err)
		}
	}
	// Attest attacks come from addresses of their own, so the attestation
	// rate limit (its own test) refuses none of them.
	next := netip.MustParseAddr("127.4.9.1")
	fromNew := func() *api.Client {
		c, err := srv.Client(next)
		if err != nil {
			t.Fatal(err)
		}
		next = next.Next()
		return c
	}
	stranger := fromNew()
	ak, _ := softek.AKPublic()

	// Id reuse: a removed node's id is never handed out again, so its
	// token names no node, and the next node's bundle is safe from it.
	goneTok := gone.Token
	admin("node", "remove", ids(gone))
	fresh, err := loadgen.NewNodes(srv, 1, netip.MustParseAddr("127.4.5.50"))
	if err != nil {
		t.Fatal(err)
	}
	n2 := fresh[0]
	if err := n2.FirstContact(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n2.ID <= gone.ID {
		t.Fatalf("a new TPM got id %d after node %d was removed", n2.ID, gone.ID)
	}
	admin("node", "enable", ids(n2))
	if err := n2.Boot(ctx, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	if err := n2.Client.PutKeys(ctx, n2.Token, &api.KeyBundle{Bundle: []byte("n2"), Version: 5}); err != nil {
		t.Fatal(err)
	}
	// Re-enabling revives no token: a was disabled and enabled, b banned
	// and enabled; c is banned.
	aTok, bTok := a.Token, b.Token
	for _, args := range [][]string{{"disable", ids(a)}, {"enable", ids(a)}, {"ban", ids(b)}, {"enable", ids(b)}, {"ban", ids(c)}} {
		admin(append([]string{"node"}, args...)...)
	}
	// The swtpm EKs start pending, as they are.
	for name, ek := range map[string][]byte{"rsa": rsa, "p384": p384} {
		status, body := do(t, stranger, "POST", api.PathAttest, "", attestBody(t, ek, ak, nil), nil)
		if status != 403 || !strings.Contains(string(body), `"pending"`) {
			t.Fatalf("swtpm %s EK first contact: %d %s", name, status, body)
		}
	}

	var attacks []attack
	attacks = append(attacks, nodeEndpoints("removed node's token", a.Client, goneTok, 401, api.CodeUnauthorized)...)
	attacks = append(attacks, nodeEndpoints("disabled, re-enabled node's old token", a.Client, aTok, 401, api.CodeUnauthorized)...)
	attacks = append(attacks, nodeEndpoints("banned, re-enabled node's old token", b.Client, bTok, 401, api.CodeUnauthorized)...)
	body := func(ek []byte) func() io.Reader { return func() io.Reader { return attestBody(t, ek, ak, nil) } }
	for name, ek := range map[string][]byte{"enabled node": a.EK.Public, "banned node": c.EK.Public, "swtpm RSA EK": rsa, "swtpm P-384 EK": p384} {
		for v, pub := range variants(t, ek) {
			attacks = append(attacks, attack{name: name + " re-encoded (" + v + ")", client: fromNew(),
				method: "POST", path: api.PathAttest, body: body(pub), status: 400, code: api.CodeBadEK})
		}
	}
	attacks = append(attacks,
		attack{name: "banned node as it is", client: fromNew(), method: "POST", path: api.PathAttest,
			body: body(c.EK.Public), status: 403, code: api.CodeBanned},
		attack{name: "duplicate key in attest", client: fromNew(), method: "POST", path: api.PathAttest,
			body: func() io.Reader {
				fresh, _ := softek.New()
				return strings.NewReader(fmt.Sprintf(`{"ek_public":%q,"ak_public":%q,"ek_public":%q}`,
					b64(fresh.Public), b64(ak), b64(a.EK.Public)))
			}, status: 400, code: api.CodeBadRequest},
		attack{name: "duplicate key in specs", client: n2.Client, method: "POST", path: api.PathSpecs, tok: n2.Token,
			body: func() io.Reader { return strings.NewReader(`{"cpus":1,"memory_bytes":1073741824,"cpus":64}`) }, status: 400, code: api.CodeBadRequest},
		attack{name: "duplicate key in status", client: n2.Client, method: "POST", path: api.PathStatus, tok: n2.Token,
			body: func() io.Reader { return strings.NewReader(`{"boot_id":"a","boot_id":"b"}`) }, status: 400, code: api.CodeBadRequest},
		attack{name: "duplicate key in keys", client: n2.Client, method: "PUT", path: api.PathKeys, tok: n2.Token,
			body: func() io.Reader {
				return strings.NewReader(`{"bundle":"AAAA","version":6,"version":9223372036854775807}`)
			}, status: 400, code: api.CodeBadRequest},
	)
	before := dbState(t, srv)
	// c attested before it was banned: the server, which remembers the
	// nodes it saw enabled and does not see the CLI's changes, may give it
	// a challenge, but its completion is refused with nothing recorded, and
	// from then on its attestation is refused at once ("banned node as it
	// is").
	if err := c.Attest(ctx, nil); !api.IsCode(err, api.CodeBanned) {
		t.Errorf("banned since its last attestation: %v, want 403 banned", err)
	}
	for _, at := range attacks {
		at.run(t)
	}
	if after := dbState(t, srv); after != before {
		t.Errorf("the refused attacks changed the database:\n%s\n->\n%s", before, after)
	}
	// The node that took the removed one's place still saves its keys.
	if err := n2.Client.PutKeys(ctx, n2.Token, &api.KeyBundle{Bundle: []byte("n2"), Version: 6}); err != nil {
		t.Errorf("the new node's next key save: %v", err)
	}
	// The re-enabled nodes attest again and go on.
	for _, n := range []*loadgen.Node{a, b} {
		if err := n.Attest(ctx, nil); err != nil {
			t.Errorf("node %d after re-enable: %v", n.ID, err)
		} else if err := n.FetchConfig(ctx, nil); err != nil {
			t.Errorf("node %d's config after re-enable: %v", n.ID, err)
		}
	}
	for _, p := range []string{srv.DB, srv.DB + "-wal", srv.DB + "-shm"} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", p, fi.Mode(), err)
		}
	}
}

// With --ek-ca, one EK certificate is one node however its EK is encoded;
// a certificate does not cover another key; re-encoded EKs without it are
// refused.
func TestOneCertificateOneNode(t *testing.T) {
	_, p384, _, p384Cert, caDir := swtpmEKs(t)
	srv := srvproc.StartT(t, bin, "--ek-ca", caDir)
	c, err := srv.Client(netip.MustParseAddr("127.4.6.1"))
	if err != nil {
		t.Fatal(err)
	}
	ak, _ := softek.AKPublic()
	status, body := do(t, c, "POST", api.PathAttest, "", attestBody(t, p384, ak, p384Cert), nil)
	if status != 403 || !strings.Contains(string(body), `"code":"pending"`) {
		t.Fatalf("certified EK: %d %s", status, body)
	}
	var first api.Error
	jsonUnmarshal(body, &first)
	before := dbState(t, srv)
	soft, _ := softek.New()
	for v, pub := range variants(t, p384) {
		status, body := do(t, c, "POST", api.PathAttest, "", attestBody(t, pub, ak, p384Cert), nil)
		var e api.Error
		jsonUnmarshal(body, &e)
		if status != 403 || e.Code != api.CodePending || e.NodeID != first.NodeID {
			t.Errorf("certified EK re-encoded (%s): %d %s, want node %d pending", v, status, body, first.NodeID)
		}
		if status, body := do(t, c, "POST", api.PathAttest, "", attestBody(t, pub, ak, nil), nil); status != 400 {
			t.Errorf("re-encoded (%s) without the certificate: %d %s", v, status, body)
		}
	}
	if status, body := do(t, c, "POST", api.PathAttest, "", attestBody(t, soft.Public, ak, p384Cert), nil); status != 403 ||
		!strings.Contains(string(body), `"ek_untrusted"`) {
		t.Errorf("another key with the certificate: %d %s", status, body)
	}
	if after := dbState(t, srv); after != before {
		t.Errorf("the variants changed the database:\n%s\n->\n%s", before, after)
	}
}

// A flood of new EKs writes at most the per-address burst per address and
// never more than the cap; beyond, 429 and nothing written; pending nodes
// already known still get their 403 pending. The refusals are audited a
// row per address and kind (written at shutdown here).
func TestPendingFloodBounded(t *testing.T) {
	srv := srvproc.StartT(t, bin, "--max-pending", "8", "--enroll-burst", "3")
	ak, _ := softek.AKPublic()
	var known []byte
	codes := map[string]int{}
	for i := range 5 {
		c, err := srv.Client(netip.AddrFrom4([4]byte{127, 4, 7, byte(1 + i)}))
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			ek, _ := softek.New()
			status, body := do(t, c, "POST", api.PathAttest, "", attestBody(t, ek.Public, ak, nil), nil)
			var e api.Error
			jsonUnmarshal(body, &e)
			codes[fmt.Sprintf("%d %s", status, e.Code)]++
			if e.Code == api.CodePending && known == nil {
				known = ek.Public
			}
		}
	}
	// 3 created by each of the first 2 addresses (their other 7 refused by
	// the per-address limit), 2 by the third (the cap of 8), none after.
	want := map[string]int{"403 pending": 8, "429 rate_limited": 2 * 7, "429 pending_full": 8 + 10 + 10}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Errorf("answers %v, want %v", codes, want)
	}
	before := dbState(t, srv)
	c, _ := srv.Client(netip.MustParseAddr("127.4.7.50"))
	for range 15 { // within the attestation rate limit's burst
		ek, _ := softek.New()
		attack{name: "new EK at the cap", client: c, method: "POST", path: api.PathAttest,
			body: func() io.Reader { return attestBody(t, ek.Public, ak, nil) }, status: 429, code: api.CodePendingFull}.run(t)
	}
	attack{name: "known pending EK at the cap", client: c, method: "POST", path: api.PathAttest,
		body: func() io.Reader { return attestBody(t, known, ak, nil) }, status: 403, code: api.CodePending}.run(t)
	if after := dbState(t, srv); after != before {
		t.Errorf("refused first contacts changed the database:\n%s\n->\n%s", before, after)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(srv.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var contacts, refusals int
	st.DB().QueryRow(`SELECT count(*) FROM audit WHERE action = 'node.first_contact'`).Scan(&contacts)
	st.DB().QueryRow(`SELECT count(*) FROM audit WHERE action LIKE 'attest.%'`).Scan(&refusals)
	// 6 addresses, at most 3 kinds each (pending, rate limited, pending full).
	if contacts != 8 || refusals > 6*3 {
		t.Errorf("%d first contacts and %d refusal rows audited for 66 requests", contacts, refusals)
	}
}

// One node's token flooding the node endpoints gets 429 past its burst
// and leaves the others their budget.
func TestNodeFloodLimited(t *testing.T) {
	_, nodes := fleet(t, 2, "127.4.8.1")
	a, b := nodes[0], nodes[1]
	ok, limited := 0, 0
	for range 100 {
		status, body := do(t, a.Client, "POST", api.PathStatus, a.Token, strings.NewReader(`{"boot_id":"flood","uptime_s":1}`),
			map[string]string{"Content-Type": "application/json"})
		switch {
		case status == 204:
			ok++
		case status == 429 && strings.Contains(string(body), `"rate_limited"`):
			limited++
		default:
			t.Fatalf("heartbeat flood: %d %s", status, body)
		}
	}
	// The default burst is 30 at 1 a second (the fleet's boot spent 3).
	if ok > 40 || limited == 0 {
		t.Errorf("%d heartbeats accepted, %d limited, of 100", ok, limited)
	}
	if err := b.FetchConfig(context.Background(), nil); err != nil {
		t.Errorf("another node during the flood: %v", err)
	}
}

func jsonUnmarshal(b []byte, v any) { json.Unmarshal(b, v) }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
