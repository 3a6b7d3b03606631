package ramfs

import (
	"patela/initramfs/inspect"

	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
		Out:              filepath.Join(d, "initramfs.cpio.gz"),
	}
}

const agentJSON = `{"server_url": "https://10.0.2.100", "modules": ["virtio_net", "nft_chain_nat", "virtio-rng"]}`

func records(t *testing.T, p string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header carries mtime %v name %q", zr.ModTime, zr.Name)
	}
	var raw bytes.Buffer
	raw.ReadFrom(zr)
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

// TestProduction builds the production image twice: the bytes are equal,
// and the archive holds what the machine boots from and nothing else.
func TestProduction(t *testing.T) {
	o := inputs(t, agentJSON)
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
	if cfg.ServerURL != "https://10.0.2.100" || !slices.Equal(cfg.Modules, rep.Modules) {
		t.Errorf("agent config %+v, report modules %v", cfg, rep.Modules)
	}
	pos := map[string]int{}
	for i, m := range cfg.Modules {
		pos[m] = i
		if _, ok := rs[ModulesDir+"/"+m+".ko"]; !ok {
			t.Errorf("module %s listed but not packed", m)
		}
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio_net"}, {"nf_tables", "nft_chain_nat"}, {"crc32c_generic", "libcrc32c"}, {"virtio", "virtio-rng"}} {
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

// TestDebug: the debug flavour adds u-root's commands and /bin/sh (gosh).
func TestDebug(t *testing.T) {
	o := inputs(t, agentJSON)
	o.Debug = true
	if _, err := Build(context.Background(), o); err != nil {
		t.Fatal(err)
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
