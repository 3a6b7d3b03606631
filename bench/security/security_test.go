// Package security_test attacks the real configsrv binary over HTTPS the
// way a compromised node or a stranger on the network could: other nodes'
// data, stolen, forged, expired and revoked tokens, path tricks and
// oversized input. A companion test checks that relay key plaintext never
// reaches the server's database or logs.
package security_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/parser"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/token"
	"patela/configsrv/wirejson"
	"patela/internal/api"
)

var bin string

func TestMain(m *testing.M) { srvproc.TestMain(m, &bin) }

// fleet starts a server (with extra serve flags) and boots n enabled
// nodes with 2 relays each.
func fleet(t *testing.T, n int, first string, extra ...string) (*srvproc.Server, []*loadgen.Node) {
	t.Helper()
	srv := srvproc.StartT(t, bin, extra...)
	ctx := context.Background()
	nodes, err := loadgen.NewNodes(srv, n, netip.MustParseAddr(first))
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		if err := nd.FirstContact(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := loadgen.Enable(ctx, srv.DB, nodes); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		if err := nd.Boot(ctx, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, nil); err != nil {
			t.Fatal(err)
		}
	}
	return srv, nodes
}

// do sends one raw request and returns the status and body; redirects
// are not followed, so a path the server rewrites shows as such.
func do(t *testing.T, c *api.Client, method, path, tok string, body io.Reader, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, c.BaseURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	hc := *c.HTTP
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// A node's token reads and writes its own node only, however the request
// names another one (query parameters, headers, body fields, path forms).
func TestTokenReadsOnlyItsOwnNode(t *testing.T) {
	// Each node asks for the others' data dozens of times: more than the
	// per-node burst (TestNodeFloodLimited tests that limit).
	_, nodes := fleet(t, 3, "127.4.0.1", "--node-burst", "1000")
	ctx := context.Background()
	bundles := map[int64][]byte{}
	for _, n := range nodes {
		b := make([]byte, 200)
		rand.Read(b)
		if err := n.Client.PutKeys(ctx, n.Token, &api.KeyBundle{Bundle: b, Version: 1}); err != nil {
			t.Fatal(err)
		}
		bundles[n.ID] = b
	}
	for _, a := range nodes {
		own := map[string]bool{}
		for _, r := range a.Config.Relays {
			own[r.Name] = true
		}
		for _, b := range nodes {
			if a == b {
				continue
			}
			id := strconv.FormatInt(b.ID, 10)
			for _, path := range []string{
				api.PathConfig + "?node_id=" + id, api.PathConfig + "?node=" + id, api.PathConfig + "?id=" + id,
				api.PathKeys + "?node_id=" + id,
			} {
				for _, hdr := range []map[string]string{nil, {"X-Node-ID": id}, {"X-Forwarded-For": b.Addr.String()}} {
					status, body := do(t, a.Client, "GET", path, a.Token, nil, hdr)
					if status != 200 {
						t.Errorf("GET %s as node %d: %d %s", path, a.ID, status, body)
						continue
					}
					if strings.HasPrefix(path, api.PathKeys) {
						var kb api.KeyBundle
						if err := wirejson.Decode(bytes.NewReader(body), &kb); err != nil || !bytes.Equal(kb.Bundle, bundles[a.ID]) {
							t.Errorf("GET %s as node %d %v: not its own bundle (%v)", path, a.ID, hdr, err)
						}
						continue
					}
					var cfg api.NodeConfig
					if err := wirejson.Decode(bytes.NewReader(body), &cfg); err != nil {
						t.Fatal(err)
					}
					if cfg.NodeID != a.ID {
						t.Errorf("GET %s with node %d's token %v answered node %d", path, a.ID, hdr, cfg.NodeID)
					}
					for _, r := range cfg.Relays {
						if !own[r.Name] {
							t.Errorf("node %d's token got relay %s of another node", a.ID, r.Name)
						}
					}
				}
			}
			// A body naming the other node is refused, not applied to it.
			status, _ := do(t, a.Client, "PUT", api.PathKeys, a.Token,
				strings.NewReader(`{"bundle":"AAAA","version":9,"node_id":`+id+`}`), map[string]string{"Content-Type": "application/json"})
			if status != 400 {
				t.Errorf("PUT keys with a node_id field: %d, want 400", status)
			}
		}
	}
	// Every bundle is still its owner's.
	for _, n := range nodes {
		kb, err := n.Client.GetKeys(ctx, n.Token)
		if err != nil || !bytes.Equal(kb.Bundle, bundles[n.ID]) || kb.Version != 1 {
			t.Errorf("node %d's bundle changed: %v", n.ID, err)
		}
	}
}

// Every node endpoint refuses, before doing anything, a request with no
// token, a forged, tampered, attenuated, expired or badly presented one,
// or the token of a disabled, banned or removed node. (configsrv/httpapi
// has the in-process table; this one runs against the binary and adds
// the presentation and attenuation forms and revocation by the CLI.)
func TestEveryNodeEndpointRefusesBadTokens(t *testing.T) {
	srv, nodes := fleet(t, 4, "127.4.1.1")
	a, dis, ban, gone := nodes[0], nodes[1], nodes[2], nodes[3]
	for cmd, n := range map[string]*loadgen.Node{"disable": dis, "ban": ban, "remove": gone} {
		if _, err := srv.Admin("node", cmd, strconv.FormatInt(n.ID, 10)); err != nil {
			t.Fatal(err)
		}
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	claims, err := srv.Claims(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	forged, _, _ := token.New(otherKey, time.Hour).Issue(claims, time.Now())
	expired, err := srv.Token(a.ID, time.Now().Add(-token.DefaultTTL-time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(a.Token)
	tampered := bytes.Clone(raw)
	tampered[len(tampered)-5] ^= 1
	attenuated := attenuate(t, raw, fmt.Sprintf("node(%d);", dis.ID))

	type cred struct {
		name string
		hdr  map[string]string
		code api.ErrorCode
		want int
	}
	bearer := func(s string) map[string]string { return map[string]string{"Authorization": "Bearer " + s} }
	creds := []cred{
		{"no token", nil, api.CodeUnauthorized, 401},
		{"empty bearer", map[string]string{"Authorization": "Bearer "}, api.CodeUnauthorized, 401},
		{"lowercase scheme", map[string]string{"Authorization": "bearer " + a.Token}, api.CodeUnauthorized, 401},
		{"basic scheme", map[string]string{"Authorization": "Basic " + a.Token}, api.CodeUnauthorized, 401},
		{"token as cookie", map[string]string{"Cookie": "token=" + a.Token}, api.CodeUnauthorized, 401},
		{"forged", bearer(forged), api.CodeUnauthorized, 401},
		{"tampered", bearer(base64.StdEncoding.EncodeToString(tampered)), api.CodeUnauthorized, 401},
		{"attenuated", bearer(attenuated), api.CodeUnauthorized, 401},
		{"expired", bearer(expired), api.CodeUnauthorized, 401},
		{"not base64", bearer("%%%"), api.CodeUnauthorized, 401},
		{"disabled node", bearer(dis.Token), api.CodeDisabled, 403},
		{"banned node", bearer(ban.Token), api.CodeBanned, 403},
		{"removed node", bearer(gone.Token), api.CodeUnauthorized, 401},
	}
	endpoints := []struct{ method, path, body string }{
		{"POST", api.PathSpecs, `{"cpus":8,"memory_bytes":68719476736}`},
		{"GET", api.PathConfig, ""},
		{"GET", api.PathKeys, ""},
		{"PUT", api.PathKeys, `{"bundle":"AAAA","version":7}`},
		{"POST", api.PathStatus, `{"boot_id":"x","uptime_s":1}`},
	}
	before := snapshot(t, srv)
	for _, c := range creds {
		for _, e := range endpoints {
			var body io.Reader
			hdr := map[string]string{"Content-Type": "application/json"}
			for k, v := range c.hdr {
				hdr[k] = v
			}
			if e.body != "" {
				body = strings.NewReader(e.body)
			}
			status, b := do(t, a.Client, e.method, e.path, "", body, hdr)
			if status != c.want || !strings.Contains(string(b), `"code":"`+string(c.code)+`"`) {
				t.Errorf("%s %s with %s: %d %s, want %d %s", e.method, e.path, c.name, status, b, c.want, c.code)
			}
		}
	}
	if after := snapshot(t, srv); after != before {
		t.Errorf("refused requests changed the database:\n%s\n->\n%s", before, after)
	}
}

// attenuate appends a block with datalog to a serialized biscuit, as any
// holder of a token can.
func attenuate(t *testing.T, raw []byte, datalog string) string {
	t.Helper()
	b, err := biscuit.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := parser.FromStringBlock(datalog)
	if err != nil {
		t.Fatal(err)
	}
	bb := b.CreateBlock()
	bb.AddBlock(blk)
	b2, err := b.Append(rand.Reader, bb.Build())
	if err != nil {
		t.Fatal(err)
	}
	out, err := b2.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(out)
}

// snapshot is the node and relay state as the admin CLI shows it.
func snapshot(t *testing.T, srv *srvproc.Server) string {
	t.Helper()
	var s strings.Builder
	for _, args := range [][]string{{"node", "list", "--json"}, {"relay", "list", "--json"}} {
		out, err := srv.Admin(args...)
		if err != nil {
			t.Fatal(err)
		}
		s.WriteString(out)
	}
	// last_seen moves with every accepted request; refused ones must not
	// move it, so it stays in the snapshot.
	return s.String()
}

// Paths that climb out of the API, encoded or not, reach nothing: no 2xx,
// no 5xx, no file content.
func TestPathTraversalRefused(t *testing.T) {
	_, nodes := fleet(t, 1, "127.4.2.1")
	a := nodes[0]
	for _, p := range []string{
		"/v1/node/../../etc/passwd",
		"/v1/node/config/../../../etc/passwd",
		"/v1/%2e%2e/%2e%2e/etc/passwd",
		"/v1/node/config/..%2f..%2f..%2fetc%2fpasswd",
		"/v1/node/keys/%2e%2e%2f%2e%2e%2fpatela.db",
		"/..%5c..%5cetc%5cpasswd",
		"/v1/node/config%00/../../patela.db",
		"/patela.db", "/biscuit.key", "/ca-key.pem", "/server-key.pem", "/v1/../server-key.pem",
	} {
		for _, m := range []string{"GET", "PUT", "POST"} {
			status, body := do(t, a.Client, m, p, a.Token, nil, nil)
			if status/100 == 2 || status/100 == 5 || status == 0 {
				t.Errorf("%s %s: %d %.200s", m, p, status, body)
			}
			for _, secret := range []string{"root:", "PRIVATE KEY", "SQLite format"} {
				if bytes.Contains(body, []byte(secret)) {
					t.Errorf("%s %s leaked %q", m, p, secret)
				}
			}
		}
	}
}

// Oversized and pathological input is refused with a 4xx, costs the
// server nothing lasting, and it keeps serving.
func TestOversizedInputRefused(t *testing.T) {
	srv, nodes := fleet(t, 1, "127.4.3.1")
	a := nodes[0]
	json := map[string]string{"Content-Type": "application/json"}
	relays := make([]string, 257)
	for i := range relays {
		relays[i] = fmt.Sprintf(`{"name":"r%d","state":"running"}`, i)
	}
	cases := []struct {
		name, method, path string
		body               io.Reader
		hdr                map[string]string
		want               int
	}{
		{"10 MiB key bundle", "PUT", api.PathKeys, io.LimitReader(zeros{}, 10<<20), json, 400},
		{"64 KiB + 1 body", "POST", api.PathStatus, strings.NewReader(`{"boot_id":"` + strings.Repeat("x", api.MaxBody) + `"}`), json, 400},
		{"deeply nested JSON", "POST", api.PathSpecs, strings.NewReader(`{"cpus":` + strings.Repeat("[", 30000) + strings.Repeat("]", 30000) + `}`), json, 400},
		{"257 relays in a heartbeat", "POST", api.PathStatus, strings.NewReader(`{"boot_id":"b","uptime_s":1,"relays":[` + strings.Join(relays, ",") + `]}`), json, 400},
		{"long relay name", "POST", api.PathStatus, strings.NewReader(`{"boot_id":"b","relays":[{"name":"` + strings.Repeat("n", 5000) + `"}]}`), json, 400},
		{"huge cpus", "POST", api.PathSpecs, strings.NewReader(`{"cpus":1e300,"memory_bytes":1}`), json, 400},
		{"negative memory", "POST", api.PathSpecs, strings.NewReader(`{"cpus":1,"memory_bytes":-1}`), json, 400},
		{"60 KB EK public", "POST", api.PathAttest, strings.NewReader(`{"ek_public":"` + base64.StdEncoding.EncodeToString(make([]byte, 45000)) + `","ak_public":"AAAA"}`), json, 400},
		{"100 KB header", "GET", api.PathConfig, nil, map[string]string{"X-Junk": strings.Repeat("j", 100<<10)}, 431},
		{"100 KB token", "GET", api.PathConfig, nil, map[string]string{"Authorization": "Bearer " + strings.Repeat("A", 100<<10)}, 431},
		{"12 KB token", "GET", api.PathConfig, nil, map[string]string{"Authorization": "Bearer " + strings.Repeat("A", 12<<10)}, 401},
		{"100 KB path", "GET", "/v1/node/" + strings.Repeat("x", 100<<10), nil, nil, 431},
	}
	for _, c := range cases {
		tok := a.Token
		if c.hdr != nil && c.hdr["Authorization"] != "" {
			tok = ""
		}
		client := a.Client
		if c.want == 431 {
			// Go's HTTP/2 client will not send headers over the server's
			// advertised limit; HTTP/1.1 sends them, so the server must
			// refuse them itself.
			client = http1(t, a.Client)
		}
		status, body := do(t, client, c.method, c.path, tok, c.body, c.hdr)
		if status != c.want {
			t.Errorf("%s: %d %.200s, want %d", c.name, status, body, c.want)
		}
	}
	// Still serving, and the node's state is what its valid boot made it.
	cfg, err := a.Client.Config(context.Background(), a.Token)
	if err != nil || len(cfg.Relays) != 2 {
		t.Fatalf("after the abuse: %v", err)
	}
	if _, err := a.Client.GetKeys(context.Background(), a.Token); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("a refused key bundle was stored: %v", err)
	}
	if rss, _, err := srv.RSS(); err != nil || rss > 200<<20 {
		t.Errorf("server RSS after the abuse: %d MiB %v", rss>>20, err)
	}
}

// http1 is c speaking HTTP/1.1 only.
func http1(t *testing.T, c *api.Client) *api.Client {
	t.Helper()
	tr := c.HTTP.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return &api.Client{BaseURL: c.BaseURL, HTTP: &http.Client{Transport: tr, Timeout: c.HTTP.Timeout}}
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
