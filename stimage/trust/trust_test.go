package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/stimage/keygen"
	"patela/stimage/ospkg"
)

func TestLoadDir(t *testing.T) {
	d := t.TempDir()
	rk, _ := keygen.NewKey()
	now := time.Now()
	rp, _ := keygen.Certificate(keygen.Request{Key: rk.Public().(ed25519.PublicKey), IsCA: true, NotBefore: now, NotAfter: now.Add(time.Hour), ParentKey: rk})
	lk, _ := keygen.NewKey()
	root, _ := ospkg.ParseCertificate(rp)
	lp, _ := keygen.Certificate(keygen.Request{Key: lk.Public().(ed25519.PublicKey), NotBefore: now, NotAfter: now.Add(time.Hour), Parent: root, ParentKey: rk})

	os.WriteFile(filepath.Join(d, PolicyFile), []byte(`{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`), 0o644)
	os.WriteFile(filepath.Join(d, RootsFile), append(append([]byte{}, rp...), rp...), 0o644)
	p, roots, err := LoadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	if p.SignatureThreshold != 2 || len(roots) != 2 {
		t.Fatalf("policy %+v, %d roots", p, len(roots))
	}
	// A leaf is not a signing root.
	os.WriteFile(filepath.Join(d, RootsFile), lp, 0o644)
	if _, _, err := LoadDir(d); err == nil || !strings.Contains(err.Error(), "not a signing root") {
		t.Fatalf("leaf as root: %v", err)
	}
	os.WriteFile(filepath.Join(d, RootsFile), []byte("junk"), 0o644)
	if _, _, err := LoadDir(d); err == nil {
		t.Fatal("junk roots loaded")
	}
}

func TestHostConfigNormalises(t *testing.T) {
	h, notes, err := ParseHostConfig([]byte(`{"ospkg_pointer": "https://a/os.json,https://b/os.json", "network_mode": "dhcp", "version": 1, "timestamp": 0}`))
	if err != nil {
		t.Fatal(err)
	}
	if *h.NetworkMode != "dhcp" || h.HostIP != nil {
		t.Fatalf("%+v", h)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "timestamp, version") {
		t.Errorf("notes %q", notes)
	}
	if _, _, err := ParseHostConfig([]byte(`{"ospkg_pointer": "x", "network_mode": "dhcp", "bogus": 1}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
}

// stbootKeys are the keys stboot v0.2.2's host config parser requires,
// every one, null where unset (it refuses a file missing any: "missing
// JSON key").
var stbootKeys = []string{"network_mode", "host_ip", "gateway", "dns", "network_interfaces", "ospkg_pointer",
	"identity", "authentication", "bonding_mode", "bond_name"}

func keysOf(t *testing.T, h *HostConfig) (map[string]json.RawMessage, []string) {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	json.Unmarshal(b, &m)
	var order []string
	d := json.NewDecoder(bytes.NewReader(b))
	d.Token()
	for d.More() {
		k, _ := d.Token()
		order = append(order, k.(string))
		var skip json.RawMessage
		d.Decode(&skip)
	}
	return m, order
}

// TestHostConfigAllKeys: what `hostconfig check` prints has every key
// stboot v0.2.2 requires, null where unset, in its order, and parses
// again to the same thing.
func TestHostConfigAllKeys(t *testing.T) {
	h, _, err := ParseHostConfig([]byte(`{"ospkg_pointer": "https://boot.example.org/patela-os.json", "network_mode": "dhcp"}`))
	if err != nil {
		t.Fatal(err)
	}
	m, order := keysOf(t, h)
	if !slices.Equal(order, stbootKeys) {
		t.Errorf("keys %v, want %v", order, stbootKeys)
	}
	for _, k := range stbootKeys {
		if k != "ospkg_pointer" && k != "network_mode" && string(m[k]) != "null" {
			t.Errorf("%s = %s, want null", k, m[k])
		}
	}
	b, _ := json.Marshal(h)
	h2, notes, err := ParseHostConfig(b)
	if err != nil || len(notes) != 0 || !reflect.DeepEqual(h, h2) {
		t.Errorf("round trip: %+v %q %v", h2, notes, err)
	}
	// bonding_mode "" is stboot's unset, written null.
	h, _, err = ParseHostConfig([]byte(`{"ospkg_pointer": "https://x/os.json", "network_mode": "dhcp", "bonding_mode": "", "bond_name": ""}`))
	if err != nil || h.BondingMode != nil {
		t.Errorf("bonding_mode \"\": %+v %v", h, err)
	}
	h, _, err = ParseHostConfig([]byte(`{"ospkg_pointer": "https://x/os.json", "network_mode": "dhcp", "description": "rack 3"}`))
	if m, _ := keysOf(t, h); err != nil || string(m["description"]) != `"rack 3"` {
		t.Errorf("description: %v %v", m, err)
	}
}

// TestHostConfigLegacy: the shapes of real, older host configs (a
// static machine provisioned years ago: version, timestamp, one MAC in
// network_interface, dns as a string, provisioning_urls instead of
// ospkg_pointer) are rewritten into what stboot v0.2.2 reads; the ones
// that cannot be rewritten are refused naming the key.
func TestHostConfigLegacy(t *testing.T) {
	old := `{"version": 1, "network_mode": "static", "host_ip": "192.0.2.67/26", "gateway": "192.0.2.65",
		"dns": "192.0.2.53", "network_interface": "02:00:00:00:2f:f2",
		"provisioning_urls": ["https://user:secret@boot.example.org/os-stable.json"],
		"identity": "bar", "authentication": "foo", "timestamp": 1695787014}`
	h, notes, err := ParseHostConfig([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if h.DNS == nil || !slices.Equal(*h.DNS, []string{"192.0.2.53"}) {
		t.Errorf("dns %v", h.DNS)
	}
	if h.OSPkgPointer == nil || *h.OSPkgPointer != "https://user:secret@boot.example.org/os-stable.json" {
		t.Errorf("ospkg_pointer %v", h.OSPkgPointer)
	}
	if *h.Identity != "bar" || *h.Authentication != "foo" {
		t.Errorf("identity/authentication %v %v", *h.Identity, *h.Authentication)
	}
	joined := strings.Join(notes, "\n")
	for _, want := range []string{"dns", "provisioning_urls", "network_interface, timestamp, version"} {
		if !strings.Contains(joined, want) {
			t.Errorf("notes do not mention %s:\n%s", want, joined)
		}
	}
	if m, order := keysOf(t, h); !slices.Equal(order, stbootKeys) || string(m["network_interfaces"]) != "null" {
		t.Errorf("normalised keys %v, network_interfaces %s", order, m["network_interfaces"])
	}

	// Both pointers: ospkg_pointer wins, and the note says so.
	_, notes, err = ParseHostConfig([]byte(`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json", "provisioning_urls": ["https://b/os.json"]}`))
	if err != nil || len(notes) != 1 || !strings.Contains(notes[0], "ignored") {
		t.Errorf("both pointers: %q %v", notes, err)
	}

	for name, c := range map[string]struct{ json, key string }{
		"interface names":         {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json", "network_interfaces": ["eth2", "eth3"]}`, "network_interfaces"},
		"empty interfaces":        {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json", "network_interfaces": []}`, "network_interfaces"},
		"provisioning_urls junk":  {`{"network_mode": "dhcp", "provisioning_urls": ["ftp://a/os.json"]}`, "provisioning_urls"},
		"provisioning_urls shape": {`{"network_mode": "dhcp", "provisioning_urls": "https://a/os.json"}`, "provisioning_urls"},
		"dns not an IP":           {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json", "dns": "dns.example.org"}`, "dns"},
		"$ID unset":               {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/$ID/os.json"}`, "identity"},
		"$ID digits":              {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/$ID/os.json", "identity": "node7"}`, "identity"},
		"$AUTH unset":             {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json?a=$AUTH"}`, "authentication"},
		"bonding no interfaces":   {`{"network_mode": "dhcp", "ospkg_pointer": "https://a/os.json", "bonding_mode": "802.3ad", "bond_name": "bond0"}`, "network_interfaces"},
	} {
		if _, _, err := ParseHostConfig([]byte(c.json)); err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: %v, want an error naming %s", name, err, c.key)
		}
	}
}

// TestPolicyOnlyRealFields: trust_policy.json has two fields; the ST 1.3
// Sigsum policy and decryption identities are files of their own, so a
// policy naming them is refused, naming the key.
func TestPolicyOnlyRealFields(t *testing.T) {
	for _, k := range []string{"ospkg_trust_policy", "decryption_identities", "boot_mode"} {
		_, err := ParsePolicy([]byte(`{"ospkg_signature_threshold": 1, "ospkg_fetch_method": "network", "` + k + `": "x"}`))
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s: %v", k, err)
		}
	}
	d := t.TempDir()
	for _, f := range []string{PolicyFile, RootsFile, "tls_roots.pem", "decryption_identities"} {
		os.WriteFile(filepath.Join(d, f), nil, 0o644)
	}
	other, err := OtherFiles(d)
	if err != nil || !slices.Equal(other, []string{"decryption_identities", "tls_roots.pem"}) {
		t.Errorf("OtherFiles %v %v", other, err)
	}
}
