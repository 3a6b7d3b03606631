package ramfs

import (
	"patela/initramfs/inspect"
	"path"

	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"patela/init/agentcfg"
	"patela/initramfs/moddep"
	"patela/internal/testutil"

	"github.com/u-root/mkuimage/cpio"
	"golang.org/x/mod/modfile"
)

// kernelModules is the Debian module tree scripts/kernel.sh fetches.
func kernelModules(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("../../build/kernel/modules/*")
	if len(dirs) != 1 {
		testutil.SkipOrFail(t, "no kernel module tree in build/kernel: run `just kernel`")
	}
	return dirs[0]
}

const testCA = `-----BEGIN CERTIFICATE-----
MIIBQTCB9KADAgECAhR0ZXN0IGNlcnRpZmljYXRlIDEwBQYDK2VwMA8xDTALBgNV
BAMMBHRlc3QwHhcNMjYwMTAxMDAwMDAwWhcNMjcwMTAxMDAwMDAwWjAPMQ0wCwYD
VQQDDAR0ZXN0MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4
rXAxZuGjUzBRMB0GA1UdDgQWBBQ0dGVzdDAwMDAwMDAwMDAwMDAwMDAwHwYDVR0j
BBgwFoAUNHRlc3QwMDAwMDAwMDAwMDAwMDAwMA8GA1UdEwEB/wQFMAMBAf8wBQYD
K2VwA0EAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==
-----END CERTIFICATE-----
`

// inputs writes an agent config and a CA and returns build options.
func inputs(t *testing.T, cfg string) Options {
	t.Helper()
	d := t.TempDir()
	os.WriteFile(filepath.Join(d, "agent.json"), []byte(cfg), 0o644)
	os.WriteFile(filepath.Join(d, "ca.pem"), []byte(testCA), 0o644)
	return Options{
		AgentPkg:         "patela/init",
		AgentConfig:      filepath.Join(d, "agent.json"),
		CA:               filepath.Join(d, "ca.pem"),
		KernelModulesDir: kernelModules(t),
		Out:              filepath.Join(d, "initramfs.cpio.xz"),
	}
}

const agentJSON = `{"server_url": "https://10.0.2.100", "modules": ["virtio_net", "nft_chain_nat", "virtio-rng"], "sealing": "unmeasured"}`

// records unpacks an image, xz (with the host's xz, which knows the x86
// filter) or gzip by its magic, and returns its records by name.
func records(t *testing.T, p string) map[string]cpio.Record {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	switch {
	case bytes.HasPrefix(b, []byte("\xfd7zXZ\x00")):
		var errb bytes.Buffer
		cmd := exec.Command("xz", "--decompress", "--stdout")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b), &raw, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("xz -d: %v %s", err, errb.Bytes())
		}
		// The kernel's decoder takes CRC32 or no check, not CRC64.
		if flags := b[6:8]; flags[0] != 0 || flags[1] != 0x01 {
			t.Errorf("xz stream flags %x, want CRC32 (00 01)", flags)
		}
	default:
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if !zr.ModTime.IsZero() || zr.Name != "" {
			t.Errorf("gzip header carries mtime %v name %q", zr.ModTime, zr.Name)
		}
		raw.ReadFrom(zr)
	}
	out := map[string]cpio.Record{}
	err = cpio.ForEachRecord(cpio.Newc.Reader(bytes.NewReader(raw.Bytes())), func(r cpio.Record) error {
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d", r.Name, r.MTime, r.UID, r.GID)
		}
		if r.ReaderAt != nil {
			b := make([]byte, r.FileSize)
			r.ReadAt(b, 0)
			r.ReaderAt = bytes.NewReader(b)
		}
		out[r.Name] = r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func content(r cpio.Record) string {
	b := make([]byte, r.FileSize)
	r.ReadAt(b, 0)
	return string(b)
}

// TestProduction builds the production image of the Protectli profile
// twice: the bytes are equal, and the archive holds what the machine boots
// from and nothing else: the profile's NIC drivers with their
// dependencies, no other module.
func TestProduction(t *testing.T) {
	profile, err := os.ReadFile("../profiles/protectli/agent.json")
	if err != nil {
		t.Fatal(err)
	}
	o := inputs(t, string(profile))
	o.ServerURL = "https://10.0.2.100"
	o.PolicyKey = filepath.Join(t.TempDir(), "policy.pub")
	os.WriteFile(o.PolicyKey, []byte("-----BEGIN PUBLIC KEY-----\n"+testPolicyKey+"\n-----END PUBLIC KEY-----\n"), 0o644)
	rep, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	first, err := os.ReadFile(o.Out)
	if err != nil {
		t.Fatal(err)
	}
	o2 := o
	o2.Out = o.Out + ".2"
	if _, err := Build(context.Background(), o2); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(o2.Out)
	if !bytes.Equal(first, second) {
		t.Fatalf("two builds from the same inputs differ (%d vs %d bytes)", len(first), len(second))
	}
	if int64(len(first)) != rep.Compressed {
		t.Errorf("report says %d bytes, file has %d", rep.Compressed, len(first))
	}

	if !bytes.HasPrefix(first, []byte("\xfd7zXZ\x00")) || rep.Compression != XZ {
		t.Errorf("default compression: report %q, magic %x; want xz", rep.Compression, first[:6])
	}
	rs := records(t, o.Out)
	if r := rs["init"]; content(r) != "bin/init" || r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
		t.Errorf("/init is not a link to the agent: %+v", r.Info)
	}
	if rs["."].Mode&0o777 != 0o755 {
		t.Errorf("root directory mode %o, want 755", rs["."].Mode&0o777)
	}
	for _, want := range []string{"bin/init", TorPath, "lib/x86_64-linux-gnu/libnss_files.so.2", "lib/x86_64-linux-gnu/libc.so.6",
		"lib/x86_64-linux-gnu/libcrypto.so.3", "lib64/ld-linux-x86-64.so.2", "dev/console", CAPath, "etc/nsswitch.conf"} {
		if _, ok := rs[want]; !ok {
			t.Errorf("missing %s", want)
		}
	}
	// libsystemd is the image's own sd_notify (sdnotify.go), so systemd's
	// dependencies stay out; tor's own ones stay in.
	if r, ok := rs[path.Join(LibDir, libsystemd)]; !ok || r.FileSize > 64<<10 {
		t.Errorf("libsystemd is not the small sd_notify library: %+v", r.Info)
	}
	for _, l := range []string{"libgcrypt.so.20", "libgpg-error.so.0", "liblz4.so.1"} {
		if _, ok := rs[path.Join(LibDir, l)]; ok {
			t.Errorf("image holds %s, which only systemd's libsystemd needs", l)
		}
	}
	for _, l := range []string{"libzstd.so.1", "liblzma.so.5", "libevent-2.1.so.7", "libseccomp.so.2", "libcap.so.2"} {
		if _, ok := rs[path.Join(LibDir, l)]; !ok {
			t.Errorf("image lacks tor's %s", l)
		}
	}
	torInImage(t, rs)
	for name := range rs {
		if name == "etc/resolv.conf" || name == "bin/sh" || strings.HasPrefix(name, "bbin") || strings.HasPrefix(name, "lib/modules") {
			t.Errorf("production image holds %s", name)
		}
	}
	if sh, err := inspect.DebugShell(first); sh != "" || err != nil {
		t.Errorf("inspect.DebugShell flags the production image: %q %v", sh, err)
	}
	if content(rs[CAPath]) != testCA {
		t.Error("CA not embedded verbatim")
	}
	var cfg struct {
		ServerURL string   `json:"server_url"`
		Modules   []string `json:"modules"`
	}
	if err := json.Unmarshal([]byte(content(rs[AgentConfigPath])), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.ServerURL != o.ServerURL || !slices.Equal(cfg.Modules, rep.Modules) {
		t.Errorf("agent config %+v, report modules %v", cfg, rep.Modules)
	}
	pos := map[string]int{}
	for i, m := range cfg.Modules {
		pos[m] = i
		if _, ok := rs[ModulesDir+"/"+m+".ko"]; !ok {
			t.Errorf("module %s listed but not packed", m)
		}
	}
	var packed []string
	for name := range rs {
		if m, ok := strings.CutPrefix(name, ModulesDir+"/"); ok && strings.HasSuffix(m, ".ko") {
			packed = append(packed, strings.TrimSuffix(m, ".ko"))
		}
	}
	want := []string{"igc", "dca", "i2c-algo-bit", "igb", "nfnetlink", "crc32c_generic", "libcrc32c", "nf_tables",
		"nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_nat", "nft_ct"}
	slices.Sort(packed)
	slices.Sort(want)
	if !slices.Equal(packed, want) {
		t.Errorf("modules packed:\n got %v\nwant %v", packed, want)
	}
	for _, pair := range [][2]string{{"dca", "igb"}, {"i2c-algo-bit", "igb"}, {"nf_tables", "nft_chain_nat"}, {"crc32c_generic", "libcrc32c"}, {"nf_conntrack", "nf_nat"}} {
		if a, b := pos[pair[0]], pos[pair[1]]; a >= b {
			t.Errorf("%s must load before %s: %v", pair[0], pair[1], cfg.Modules)
		}
	}
	var total int64
	for _, p := range rep.Parts {
		total += p.Bytes
	}
	if total == 0 || total > rep.CPIOBytes {
		t.Errorf("parts sum %d, cpio %d", total, rep.CPIOBytes)
	}
}

// TestDebug: the debug flavour adds u-root's commands and /bin/sh (gosh);
// built with gzip, the other compression.
func TestDebug(t *testing.T) {
	o := inputs(t, agentJSON)
	o.Debug = true
	o.Compression = Gzip
	rep, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Compression != Gzip {
		t.Errorf("report says %s", rep.Compression)
	}
	rs := records(t, o.Out)
	if content(rs["bin/sh"]) != "../bbin/gosh" {
		t.Errorf("bin/sh -> %q", content(rs["bin/sh"]))
	}
	for _, c := range []string{"bbin/bb", "bbin/ls", "bbin/ip", "bbin/dmesg"} {
		if _, ok := rs[c]; !ok {
			t.Errorf("debug image lacks %s", c)
		}
	}
	if content(rs["init"]) != "bin/init" {
		t.Error("the debug image's /init is not the agent")
	}
	b, _ := os.ReadFile(o.Out)
	if sh, err := inspect.DebugShell(b); sh == "" || err != nil {
		t.Errorf("inspect.DebugShell misses the debug image's shell: %q %v", sh, err)
	}
}

// TestRefuses: bad inputs fail before anything is built or written.
func TestRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg string
		mod func(*Options)
	}{
		"config not JSON":    {cfg: `server_url=x`},
		"config unknown key": {cfg: `{"server_url": "https://x", "sever_ca": "/x"}`},
		"config not https":   {cfg: `{"server_url": "http://x"}`},
		"unknown module":     {cfg: `{"server_url": "https://x", "modules": ["no_such_module"]}`},
		"CA elsewhere":       {cfg: `{"server_url": "https://x", "server_ca": "/ca.pem"}`},
		"CA not PEM":         {cfg: agentJSON, mod: func(o *Options) { os.WriteFile(o.CA, []byte("junk"), 0o644) }},
		"no CA":              {cfg: agentJSON, mod: func(o *Options) { o.CA = "" }},
		"no module tree":     {cfg: agentJSON, mod: func(o *Options) { o.KernelModulesDir = t.TempDir() }},
		"no tor":             {cfg: agentJSON, mod: func(o *Options) { o.Tor = "/nonexistent/tor" }},
		"unknown compressor": {cfg: agentJSON, mod: func(o *Options) { o.Compression = "lz4" }},
	} {
		o := inputs(t, tc.cfg)
		if tc.mod != nil {
			tc.mod(&o)
		}
		if _, err := Build(context.Background(), o); err == nil {
			t.Errorf("%s: built", name)
		} else if _, serr := os.Stat(o.Out); serr == nil {
			t.Errorf("%s: failed (%v) but wrote %s", name, err, o.Out)
		}
		left, _ := filepath.Glob(filepath.Join(filepath.Dir(o.Out), ".initramfs-*"))
		if len(left) > 0 {
			t.Errorf("%s: left %v behind", name, left)
		}
	}
}

// Every u-root command of the debug flavour is a tool of the module, so
// `go mod tidy` keeps its requirement and the build finds it.
func TestDebugCommandsAreTools(t *testing.T) {
	data, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	tools := map[string]bool{}
	for _, tl := range f.Tool {
		tools[tl.Path] = true
	}
	for _, c := range DebugCommands {
		if p := "github.com/u-root/u-root/cmds/core/" + c; !tools[p] {
			t.Errorf("%s is not a tool in go.mod: go get -tool %s@v0.16.0", p, p)
		}
	}
}

// TestProfiles: every hardware profile resolves against the Debian tree
// (so `just image PROFILE` cannot fail on a module name), is a valid
// agent config once given a server URL, carries no server_url of its own,
// and has a kernel command line with a console.
func TestProfiles(t *testing.T) {
	dirs, _ := filepath.Glob("../profiles/*/agent.json")
	if len(dirs) < 2 {
		t.Fatalf("profiles: %v", dirs)
	}
	tree, err := moddep.Load(kernelModules(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dirs {
		cfg, err := readAgentConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := cfg["server_url"]; ok {
			t.Errorf("%s names a server_url: that is the deployment's, not the hardware's", p)
		}
		var names []string
		if err := json.Unmarshal(cfg["modules"], &names); err != nil || len(names) == 0 {
			t.Errorf("%s: modules %s: %v", p, cfg["modules"], err)
		}
		if _, err := tree.Resolve(names...); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		for _, k := range []string{"sealing", "policy_key"} {
			if _, ok := cfg[k]; ok {
				t.Errorf("%s names %s: that is the deployment's (initramfs -policy-key), not the hardware's", p, k)
			}
		}
		cfg["server_url"], _ = json.Marshal("https://10.0.2.100")
		cfg["sealing"], _ = json.Marshal("release")
		cfg["policy_key"], _ = json.Marshal(testPolicyKey)
		b, _ := json.Marshal(cfg)
		if _, err := agentcfg.Parse(b, ""); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		cl, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(cl), "console=ttyS0") || strings.Count(string(cl), "\n") != 1 {
			t.Errorf("%s: cmdline %q: want one line with a serial console", p, cl)
		}
	}
}

// TestSealingOptions: -policy-key writes release sealing with the key,
// -unmeasured the lab mode; both, or a key that is no P-256 public key,
// fail before anything is built.
func TestSealingOptions(t *testing.T) {
	cfg := map[string]json.RawMessage{}
	pub := filepath.Join(t.TempDir(), "policy.pub")
	os.WriteFile(pub, []byte("-----BEGIN PUBLIC KEY-----\n"+testPolicyKey+"\n-----END PUBLIC KEY-----\n"), 0o644)
	if err := sealing(cfg, pub, false); err != nil || string(cfg["sealing"]) != `"release"` || !strings.HasPrefix(string(cfg["policy_key"]), `"MFkw`) {
		t.Fatalf("%v %s", err, cfg)
	}
	if err := sealing(cfg, "", true); err != nil || string(cfg["sealing"]) != `"unmeasured"` {
		t.Fatalf("%v %s", err, cfg)
	}
	if err := sealing(cfg, pub, true); err == nil {
		t.Error("both accepted")
	}
	if err := sealing(cfg, filepath.Join(t.TempDir(), "x"), false); err == nil {
		t.Error("missing key accepted")
	}
	os.WriteFile(pub, []byte("not a key"), 0o644)
	if err := sealing(cfg, pub, false); err == nil {
		t.Error("garbage key accepted")
	}
}

// testPolicyKey is a P-256 public key (PKIX DER, base64).
const testPolicyKey = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5g1PHEKLg2gJx4ZBdAWas0RrkyHl5pqTlUA3dwFofL87B1vpqHRVQhbbuduauSZ6DTwewfsm6RInBJeLWH3oow=="
