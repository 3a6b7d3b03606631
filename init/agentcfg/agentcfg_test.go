package agentcfg

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const good = `{
  "server_url": "https://cfg.example.org:8443",
  "server_ca": "/etc/patela/server-ca.pem",
  "mgmt_interface": "eth0",
  "modules": ["virtio_ring", "virtio", "virtio_net"],
  "pcrs": [7],
  "sealing": "unmeasured"
}`

func TestLoadDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(p, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p, "console=ttyS0 quiet")
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerURL != "https://cfg.example.org:8443" || c.MgmtInterface != "eth0" {
		t.Errorf("file values lost: %+v", c)
	}
	if !reflect.DeepEqual(c.Modules, []string{"virtio_ring", "virtio", "virtio_net"}) {
		t.Errorf("module order not kept: %v", c.Modules)
	}
	if c.TPM != "/dev/tpmrm0" || c.ModuleDir != "/lib/patela-modules" {
		t.Errorf("defaults not applied: tpm=%q module_dir=%q", c.TPM, c.ModuleDir)
	}
	if time.Duration(c.KeyRetention) != 30*24*time.Hour {
		t.Errorf("key_retention=%v, want 30 days", time.Duration(c.KeyRetention))
	}
	if _, err := Parse([]byte(good), "patela.key_retention=1s"); err == nil {
		t.Error("the kernel command line set key_retention")
	}
	if time.Duration(c.RebootDelay) != 30*time.Second || c.Debugging() {
		t.Errorf("reboot_delay=%v debug=%v", time.Duration(c.RebootDelay), c.Debug)
	}
}

func TestCmdlineOverrides(t *testing.T) {
	cmd := `BOOT_IMAGE=/vmlinuz console=ttyS0 patela.server_url=https://10.0.0.1/ ` +
		`patela.modules=e1000,nf_tables patela.pcrs=7,13 patela.tpm=unix:/run/swtpm.sock ` +
		`patela.mgmt_interface= patela.mgmt_mac=52:54:00:aa:bb:01 patela.debug patela.dhcp_timeout=5s ` +
		`patela.server_ca="/tmp/a b/ca.pem"`
	c, err := Parse([]byte(good), cmd)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ServerURL: "https://10.0.0.1/", ServerCA: "/tmp/a b/ca.pem",
		MgmtMAC: "52:54:00:aa:bb:01", TPM: "unix:/run/swtpm.sock",
		Modules: []string{"e1000", "nf_tables"}, ModuleDir: "/lib/patela-modules",
		PCRs: []int{7, 13}, Debug: []string{"all"}, Sealing: SealingUnmeasured,
		DHCPTimeout: Duration(5 * time.Second), RebootDelay: Duration(5 * time.Second),
		KeyRetention: Duration(30 * 24 * time.Hour),
	}
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got  %+v\nwant %+v", *c, want)
	}
	if !c.DebugFlag("dhcp") {
		t.Error("debug=all should enable every flag")
	}
}

func TestSelftestNeedsNoServer(t *testing.T) {
	c, err := Parse([]byte(`{"modules":["e1000"]}`), "patela.selftest=pid1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Selftest != "pid1" {
		t.Errorf("selftest = %q", c.Selftest)
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		name, json, cmdline, want string
	}{
		{"missing url", `{}`, "", "server_url is missing"},
		{"http url", `{"server_url":"http://x"}`, "", "must be https"},
		{"unknown json key", `{"server_url":"https://x","srever_ca":"/a"}`, "", "unknown field"},
		{"wrong type", `{"server_url":"https://x","modules":"e1000"}`, "", "bad JSON"},
		{"trailing data", `{"server_url":"https://x"} {}`, "", "data after"},
		{"not json", `server_url=https://x`, "", "bad JSON"},
		{"unknown cmdline key", good, "patela.sever_url=https://y", `unknown key "sever_url"`},
		{"cmdline no value", good, "patela.tpm", "needs a value"},
		{"bad pcr", good, "patela.pcrs=7,x", `"x" is not a number`},
		{"pcr range", good, "patela.pcrs=24", "not a PCR index"},
		{"pcr twice", good, "patela.pcrs=7,7", "listed twice"},
		{"bad mac", good, "patela.mgmt_interface= patela.mgmt_mac=zz", "not a MAC"},
		{"both nic selectors", good, "patela.mgmt_mac=52:54:00:aa:bb:01", "not both"},
		{"bad ifname", good, "patela.mgmt_interface=eth0;rm", "not an interface name"},
		{"bad module", good, "patela.modules=../evil", "not a module name"},
		{"module twice", good, "patela.modules=a,b,a", "listed twice"},
		{"bad tpm", good, "patela.tpm=tpm0", "want a device path"},
		{"bad tcp tpm", good, "patela.tpm=tcp:localhost", "tcp:HOST:PORT"},
		{"bad duration", good, "patela.reboot_delay=soon", "not a duration"},
		{"negative duration", good, "patela.reboot_delay=-1s", "negative"},
		{"relative ca", good, "patela.server_ca=ca.pem", "absolute path"},
		{"root is the --root flag's", good, "patela.root=/tmp", `unknown key "root"`},
		{"unknown selftest", good, "patela.selftest=all", "unknown (known: pid1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.json), tc.cmdline)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if c != nil {
				t.Error("config returned alongside an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.json"), "")
	if err == nil || !strings.Contains(err.Error(), "agent config") {
		t.Fatalf("err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good), "patela.debug patela.pcrs=1,2")
	f.Add([]byte(`{}`), `patela.server_ca="/x y" patela.selftest=pid1`)
	f.Fuzz(func(t *testing.T, data []byte, cmdline string) {
		c, err := Parse(data, cmdline)
		if err == nil && (c.ServerCA == "" || c.TPM == "") {
			t.Fatalf("accepted config without defaults: %+v", c)
		}
	})
}

// TestSealing: release sealing is the default and needs the policy key;
// the image alone decides (the command line cannot switch it off).
func TestSealing(t *testing.T) {
	const key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5g1PHEKLg2gJx4ZBdAWas0RrkyHl5pqTlUA3dwFofL87B1vpqHRVQhbbuduauSZ6DTwewfsm6RInBJeLWH3oow=="
	c, err := Parse([]byte(`{"server_url":"https://x","policy_key":"`+key+`"}`), "")
	if err != nil || c.Sealing != SealingRelease {
		t.Fatalf("%+v %v", c, err)
	}
	if k, err := c.ReleaseKey(); err != nil || k == nil {
		t.Fatalf("ReleaseKey: %v", err)
	}
	for name, tc := range map[string]struct{ json, cmdline, want string }{
		"default without key": {`{"server_url":"https://x"}`, "", "needs policy_key"},
		"bad mode":            {`{"server_url":"https://x","sealing":"none"}`, "", `sealing "none"`},
		"bad key":             {`{"server_url":"https://x","policy_key":"AAAA"}`, "", "policy_key"},
		"cmdline sealing":     {`{"server_url":"https://x","policy_key":"` + key + `"}`, "patela.sealing=unmeasured", "never on the kernel command line"},
		"cmdline key":         {`{"server_url":"https://x","sealing":"unmeasured"}`, "patela.policy_key=" + key, "never on the kernel command line"},
	} {
		_, err := Parse([]byte(tc.json), tc.cmdline)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	// A self-test image needs no vault, so no key.
	if _, err := Parse([]byte(`{"server_url":"https://x","selftest":"pid1"}`), ""); err != nil {
		t.Errorf("selftest: %v", err)
	}
}
