package httpapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"patela/configsrv/internal/tortest"
	"patela/configsrv/store"
	"patela/configsrv/testsrv"
	"patela/internal/api"
	"patela/internal/familykey"
)

// familyNode is an enrolled node with its relays allocated.
type familyNode struct {
	id  int64
	tok string
	cfg *api.NodeConfig
}

func familyNodes(t *testing.T, s *testsrv.Server, c *api.Client, n int) []familyNode {
	t.Helper()
	ctx := context.Background()
	var out []familyNode
	for i := 0; i < n; i++ {
		id, tok := s.EnrollSoftwareNode(t)
		if _, err := c.Specs(ctx, tok, &api.Specs{CPUs: 1, MemoryBytes: 2 << 30}); err != nil {
			t.Fatal(err)
		}
		cfg, err := c.Config(ctx, tok)
		if err != nil || len(cfg.Relays) != 1 {
			t.Fatalf("config: %+v %v", cfg, err)
		}
		out = append(out, familyNode{id, tok, cfg})
	}
	return out
}

func relaysJSON(t *testing.T, s *testsrv.Server) map[string]store.Relay {
	t.Helper()
	var rs []store.Relay
	if err := json.Unmarshal([]byte(s.Admin(t, "relay", "list", "--json")), &rs); err != nil {
		t.Fatal(err)
	}
	m := map[string]store.Relay{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

// Two relays reporting one key (a cloned vault, a replayed key) raise
// the alarm in the audit log once, and in node list and relay list for
// as long as it lasts.
func TestDuplicateKeyAlarm(t *testing.T) {
	s := testsrv.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	ns := familyNodes(t, s, c, 3)
	fp := strings.Repeat("AB12", 10)
	ed := "GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3VM"
	beat := func(n familyNode, fp, ed string) {
		t.Helper()
		r := api.RelayStatus{Name: n.cfg.Relays[0].Name, Fingerprint: fp, Ed25519ID: ed, State: api.RelayRunning}
		if err := c.Status(ctx, n.tok, &api.Status{BootID: "b", Relays: []api.RelayStatus{r}}); err != nil {
			t.Fatal(err)
		}
	}
	beat(ns[0], fp, ed)
	beat(ns[2], strings.Repeat("CD34", 10), "")
	if strings.Contains(s.Admin(t, "audit"), "relay.duplicate_key") {
		t.Fatal("alarm before any duplicate")
	}
	beat(ns[1], fp, "")                         // the same RSA key
	beat(ns[1], fp, "")                         // again: no second alarm
	beat(ns[2], strings.Repeat("CD34", 10), ed) // the same ed25519 key
	audit := s.Admin(t, "audit")
	if n := strings.Count(audit, "relay.duplicate_key"); n != 2 {
		t.Fatalf("%d duplicate_key rows, want 2 (one per relay that reported a taken key):\n%s", n, audit)
	}
	for _, want := range []string{"RSA fingerprint " + fp, "ed25519 identity " + ed} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %q:\n%s", want, audit)
		}
	}
	rs := relaysJSON(t, s)
	for _, n := range ns {
		if r := rs[n.cfg.Relays[0].Name]; len(r.Alarms) == 0 || !strings.Contains(r.Alarms[0], "duplicate key") {
			t.Errorf("relay %s alarms %q", r.Name, r.Alarms)
		}
	}
	list := s.Admin(t, "node", "list")
	if n := strings.Count(list, "duplicate key"); n < 3 {
		t.Errorf("node list shows %d duplicate-key alarms, want one per node at least:\n%s", n, list)
	}
	if rl := s.Admin(t, "relay", "list"); !strings.Contains(rl, "duplicate key") {
		t.Errorf("relay list has no alarm:\n%s", rl)
	}
	// The clone gets a key of its own: the alarm ends (the audit rows stay).
	beat(ns[1], strings.Repeat("EF56", 10), "")
	if r := relaysJSON(t, s)[ns[1].cfg.Relays[0].Name]; len(r.Alarms) != 0 {
		t.Errorf("alarm after the key changed: %q", r.Alarms)
	}
}

// A heartbeat naming the served torrc's sha is "served"; another sha is
// flagged "differs"; an agent that does not say is "-".
func TestTorrcDiffersFlag(t *testing.T) {
	s := testsrv.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	n := familyNodes(t, s, c, 1)[0]
	r := n.cfg.Relays[0]
	beat := func(sha string) store.Relay {
		t.Helper()
		rs := api.RelayStatus{Name: r.Name, State: api.RelayRunning, TorrcSHA256: sha}
		if err := c.Status(ctx, n.tok, &api.Status{BootID: "b", Relays: []api.RelayStatus{rs}}); err != nil {
			t.Fatal(err)
		}
		return relaysJSON(t, s)[r.Name]
	}
	if got := beat(""); got.TorrcDiffers || got.TorrcApplied != "" {
		t.Fatalf("no sha: %+v", got)
	}
	if got := beat(r.TorrcSHA256); got.TorrcDiffers || got.TorrcApplied != r.TorrcSHA256 {
		t.Fatalf("served sha: %+v", got)
	}
	if !strings.Contains(s.Admin(t, "relay", "list"), " served ") {
		t.Errorf("relay list:\n%s", s.Admin(t, "relay", "list"))
	}
	other := strings.Repeat("0", 64)
	if got := beat(other); !got.TorrcDiffers {
		t.Fatalf("other sha not flagged: %+v", got)
	}
	if out := s.Admin(t, "relay", "list"); !strings.Contains(out, "differs") {
		t.Errorf("relay list:\n%s", out)
	}
	if out := s.Admin(t, "node", "list"); !strings.Contains(out, "1 relays run a torrc other than the served one") {
		t.Errorf("node list:\n%s", out)
	}
	// A setting that is not in the torrc changes nothing; a torrc change
	// makes the sha the relay ran until now the one that differs.
	s.Admin(t, "node", "set", strconv.FormatInt(n.id, 10), "poll_interval_s", "60")
	if got := beat(r.TorrcSHA256); got.TorrcDiffers {
		t.Fatalf("a settings change made the served torrc differ: %+v", got)
	}
	f := filepath.Join(t.TempDir(), "node.torrc")
	os.WriteFile(f, []byte("MaxMemInQueues 512 MB\n"), 0o600)
	s.Admin(t, "torrc", "import", f, "--node", strconv.FormatInt(n.id, 10))
	if got := beat(r.TorrcSHA256); !got.TorrcDiffers {
		t.Fatalf("the old torrc is not flagged after the admin changed it: %+v", got)
	}
}

// nodeWith enrolls a node, posts its specs (with features) and fetches
// its config.
func nodeWith(t *testing.T, s *testsrv.Server, c *api.Client, features ...string) familyNode {
	t.Helper()
	id, tok := s.EnrollSoftwareNode(t)
	if _, err := c.Specs(context.Background(), tok, &api.Specs{CPUs: 1, MemoryBytes: 2 << 30, Features: features}); err != nil {
		t.Fatal(err)
	}
	n := familyNode{id: id, tok: tok}
	n.fetch(t, c)
	return n
}

func (n *familyNode) fetch(t *testing.T, c *api.Client) {
	t.Helper()
	cfg, err := c.Config(context.Background(), n.tok)
	if err != nil || len(cfg.Relays) != 1 {
		t.Fatalf("config: %+v %v", cfg, err)
	}
	n.cfg = cfg
}

// The family key reaches only agents that write it, over the
// authenticated API, never in a torrc; tor starts with what is served
// (FamilyId and the key), and would not with FamilyId alone; rotation
// changes both; a disabled node gets nothing.
func TestFamilyKeyServed(t *testing.T) {
	s := testsrv.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	s.Admin(t, "family", "create")
	newAgent := nodeWith(t, s, c, api.FeatureFamilyKeys)
	oldAgent := nodeWith(t, s, c)

	if len(oldAgent.cfg.FamilyKeys) != 0 || strings.Contains(oldAgent.cfg.Relays[0].Torrc, "FamilyId") {
		t.Fatalf("an agent without family_keys got FamilyId or a key:\n%+v", oldAgent.cfg)
	}
	fk := newAgent.cfg.FamilyKeys
	if len(fk) != 1 || fk[0].Name != "patela-fleet" {
		t.Fatalf("family keys %+v", fk)
	}
	text := newAgent.cfg.Relays[0].Torrc
	if !strings.Contains(text, "FamilyId "+fk[0].ID+"\n") {
		t.Fatalf("no FamilyId %s:\n%s", fk[0].ID, text)
	}
	if id, err := familykey.ID(fk[0].Secret); err != nil || id != fk[0].ID {
		t.Fatalf("served key's id %s, served id %s", id, fk[0].ID)
	}
	for _, r := range append(newAgent.cfg.Relays, oldAgent.cfg.Relays...) {
		if strings.Contains(r.Torrc, base64.StdEncoding.EncodeToString(fk[0].Secret)) || strings.Contains(r.Torrc, "secret") {
			t.Fatalf("the secret is in a torrc:\n%s", r.Torrc)
		}
	}
	keyFile := map[string][]byte{fk[0].Name + familykey.FileSuffix: familykey.File(fk[0].Secret)}
	if log, err := tortest.Start(t, text, keyFile); err != nil {
		t.Fatalf("tor with the served FamilyId and key: %v\n%s", err, log)
	}
	if log, err := tortest.Start(t, text, nil); err == nil || !strings.Contains(log, "No key was found for listed FamilyID") {
		t.Fatalf("tor without the key: %v\n%s", err, log)
	}
	if log, err := tortest.Start(t, oldAgent.cfg.Relays[0].Torrc, nil); err != nil {
		t.Fatalf("tor with an older agent's torrc: %v\n%s", err, log)
	}

	s.Admin(t, "family", "rotate")
	newAgent.fetch(t, c)
	if k := newAgent.cfg.FamilyKeys; len(k) != 1 || k[0].ID == fk[0].ID || k[0].Name != fk[0].Name ||
		!strings.Contains(newAgent.cfg.Relays[0].Torrc, "FamilyId "+k[0].ID+"\n") || strings.Contains(newAgent.cfg.Relays[0].Torrc, fk[0].ID) {
		t.Fatalf("after rotate: %+v\n%s", k, newAgent.cfg.Relays[0].Torrc)
	}

	// Another family has its own key, or none.
	s.Admin(t, "node", "set", strconv.FormatInt(newAgent.id, 10), "family", "eu")
	newAgent.fetch(t, c)
	if len(newAgent.cfg.FamilyKeys) != 0 || strings.Contains(newAgent.cfg.Relays[0].Torrc, "FamilyId") {
		t.Fatalf("family eu without a key: %+v", newAgent.cfg)
	}
	s.Admin(t, "family", "create", "--family", "eu")
	newAgent.fetch(t, c)
	if k := newAgent.cfg.FamilyKeys; len(k) != 1 || k[0].Name != "patela-eu" {
		t.Fatalf("family eu: %+v", k)
	}

	// A disabled node, or no token, gets no config, hence no key.
	s.Admin(t, "node", "disable", strconv.FormatInt(newAgent.id, 10))
	if cfg, err := c.Config(ctx, newAgent.tok); !api.IsCode(err, api.CodeDisabled) || cfg.FamilyKeys != nil {
		t.Fatalf("disabled node: %+v %v", cfg, err)
	}
	if _, err := c.Config(ctx, "forged"); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("forged token: %v", err)
	}
}

// At serve time too: a relay without ContactInfo (the database edited by
// hand, past the import checks) or an exit behind a public resolver gets
// no config, with the reason; the node keeps its heartbeat.
func TestUnsafeConfigNotServed(t *testing.T) {
	s := testsrv.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	n := nodeWith(t, s, c)
	st, err := store.Open(s.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.SetGlobalTorrc(ctx, "DisableNetwork 1\n"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Config(ctx, n.tok)
	if !api.IsCode(err, api.CodeUnsafeConfig) || !strings.Contains(err.Error(), "has no ContactInfo") ||
		!strings.Contains(err.Error(), "the global torrc") {
		t.Fatalf("config without ContactInfo: %v", err)
	}
	hb := &api.Status{BootID: "b", Relays: []api.RelayStatus{{Name: n.cfg.Relays[0].Name, State: api.RelayRunning, TorrcSHA256: n.cfg.Relays[0].TorrcSHA256}}}
	if err := c.Status(ctx, n.tok, hb); err != nil {
		t.Fatalf("heartbeat while the config is refused: %v", err)
	}
	if r := relaysJSON(t, s)[n.cfg.Relays[0].Name]; !r.TorrcDiffers {
		t.Errorf("a relay running a config the server no longer serves is not flagged: %+v", r)
	}
	if err := st.SetGlobalTorrc(ctx, "DisableNetwork 1\nContactInfo ops@example.org\nExitRelay 1\n"); err != nil {
		t.Fatal(err)
	}
	if err := st.SetSetting(ctx, n.id, "dns", "192.0.2.53,8.8.4.4"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Config(ctx, n.tok); !api.IsCode(err, api.CodeUnsafeConfig) || !strings.Contains(err.Error(), "8.8.4.4 (Google Public DNS)") {
		t.Fatalf("exit with a public resolver: %v", err)
	}
	if err := st.SetSetting(ctx, n.id, "dns", "192.0.2.53"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Config(ctx, n.tok); err != nil {
		t.Fatalf("fixed: %v", err)
	}
}
