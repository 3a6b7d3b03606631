// Package ramfs builds patela's initramfs with mkuimage: the agent as /init
// (PID 1 itself, no u-root init in front), Debian's tor with its shared
// libraries, the kernel modules the agent loads, the agent's config and the
// server CA. The output is a compressed newc cpio (xz with the x86 filter
// by default, gzip on request) whose bytes depend only on the inputs: fixed
// timestamps, owners and order, and a compressor with fixed settings.
package ramfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/ldd"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/mkuimage/uimage/initramfs"
	"github.com/u-root/uio/llog"

	"patela/init/agentcfg"
	"patela/initramfs/moddep"
	"patela/internal/layout"
	"patela/internal/release"
)

// Paths inside the archive (no leading slash) that the agent relies on;
// internal/layout is their one table.
var (
	AgentConfigPath = layout.InImage(layout.AgentConfig)
	CAPath          = layout.InImage(layout.ServerCA)
	ModulesDir      = layout.InImage(layout.ModulesDir)
	TorPath         = layout.InImage(layout.Tor)
	AgentPath       = layout.InImage(layout.Agent)
)

// nssFiles is dlopen'd by glibc for getpwnam (tor's User option), so ldd
// never lists it.
const nssFiles = "/lib/x86_64-linux-gnu/libnss_files.so.2"

// DebugCommands are the u-root commands of the --debug flavour, built as
// one busybox under /bbin. gosh is the shell behind /bin/sh, built with
// the goshsmall tag (no line-editor dependencies outside go.mod).
var DebugCommands = []string{
	"cat", "chmod", "cp", "date", "df", "dmesg", "echo", "find", "free",
	"grep", "gosh", "head", "hexdump", "id", "ip", "kill", "ln", "ls", "lsmod",
	"mkdir", "more", "mount", "mv", "netstat", "pidof", "ps", "readlink", "rm",
	"seq", "sleep", "strace", "sync", "tail", "tee", "touch", "uname", "uptime", "wc",
}

// Options are the inputs of a build. AgentConfig, CA, KernelModulesDir and
// Out are required.
type Options struct {
	AgentPkg         string   // Go package of the agent; default "patela/init"
	AgentConfig      string   // agent.json to embed; its "modules" field is replaced by the resolved list
	CA               string   // PEM of the config server's CA
	KernelModulesDir string   // a kernel module tree, /lib/modules/<version> (modules.dep required)
	Modules          []string // modules to load; nil means the agent config's "modules"
	ServerURL        string   // replaces the agent config's "server_url" when set (profiles carry none)
	// PolicyKey, a release policy public key file (PEM, stimage keygen
	// policy-key), makes the agent seal to it ("sealing": "release",
	// "policy_key"); Unmeasured sets "sealing": "unmeasured" (lab images).
	// With neither, the agent config must say (profiles do not).
	PolicyKey   string
	Unmeasured  bool
	Tor         string // tor binary; default /usr/bin/tor
	Debug       bool   // add u-root core commands and a shell
	Compression string // "xz" (default) or "gzip"
	Out         string // output file (.cpio.xz), replaced atomically
	Log         *slog.Logger
}

// Part is what one kind of content adds to the archive.
type Part struct {
	Name  string
	Files int
	Bytes int64 // uncompressed file contents
}

// Report describes a finished build.
type Report struct {
	Parts       []Part   // agent, tor+libs, modules, config, debug tools, base
	Modules     []string // load order written into the agent config
	CPIOBytes   int64
	Compressed  int64
	Compression string // "xz" or "gzip"
}

func (r *Report) String() string {
	var b strings.Builder
	for _, p := range r.Parts {
		fmt.Fprintf(&b, "  %-12s %4d files %10s\n", p.Name, p.Files, size(p.Bytes))
	}
	fmt.Fprintf(&b, "  %-12s %15s cpio, %s %s\n", "total", size(r.CPIOBytes), size(r.Compressed), r.Compression)
	return b.String()
}

func size(n int64) string { return fmt.Sprintf("%.2f MB", float64(n)/1e6) }

// Build builds the initramfs described by o into o.Out.
func Build(ctx context.Context, o Options) (*Report, error) {
	if o.AgentPkg == "" {
		o.AgentPkg = "patela/init"
	}
	if o.Tor == "" {
		o.Tor = "/usr/bin/tor"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Compression == "" {
		o.Compression = XZ
	}
	if o.Compression != XZ && o.Compression != Gzip {
		return nil, fmt.Errorf("initramfs: compression %q, want %q or %q", o.Compression, XZ, Gzip)
	}
	for flag, v := range map[string]string{"agent config": o.AgentConfig, "CA": o.CA, "kernel module tree": o.KernelModulesDir, "output": o.Out} {
		if v == "" {
			return nil, fmt.Errorf("initramfs: no %s given", flag)
		}
	}

	cfg, err := readAgentConfig(o.AgentConfig)
	if err != nil {
		return nil, err
	}
	ca, err := readCA(o.CA)
	if err != nil {
		return nil, err
	}
	names := o.Modules
	if names == nil {
		if raw, ok := cfg["modules"]; ok {
			if err := json.Unmarshal(raw, &names); err != nil {
				return nil, fmt.Errorf("agent config %s: modules: %w", o.AgentConfig, err)
			}
		}
	}
	tree, err := moddep.Load(o.KernelModulesDir)
	if err != nil {
		return nil, err
	}
	mods, err := tree.Resolve(names...)
	if err != nil {
		return nil, err
	}
	order := make([]string, 0, len(mods))
	for _, m := range mods {
		order = append(order, m.Name)
	}
	cfg["modules"], _ = json.Marshal(order)
	if o.ServerURL != "" {
		cfg["server_url"], _ = json.Marshal(o.ServerURL)
	}
	if err := sealing(cfg, o.PolicyKey, o.Unmeasured); err != nil {
		return nil, err
	}
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ") // map keys sort: deterministic
	if err != nil {
		return nil, err
	}
	cfgJSON = append(cfgJSON, '\n')
	// The agent's own parser checks the result, so a typo fails the
	// build instead of the boot; the file locations must be ours.
	ac, err := agentcfg.Parse(cfgJSON, "")
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", o.AgentConfig, err)
	}
	if ac.ServerCA != layout.ServerCA || ac.ModuleDir != layout.ModulesDir {
		return nil, fmt.Errorf("agent config %s: server_ca and module_dir must be left unset or be %s and %s, where the image puts them", o.AgentConfig, layout.ServerCA, layout.ModulesDir)
	}

	torFiles, err := torFiles(o.Tor)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Inputs are good: only now may the output directory appear.
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(o.Out), ".initramfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	agent := filepath.Join(tmp, "init")
	if err := buildAgent(ctx, o.AgentPkg, agent); err != nil {
		return nil, err
	}
	out, err := newArchive(ctx, tmp, o.Compression)
	if err != nil {
		return nil, err
	}
	defer out.abort()

	files := append([]string{agent + ":" + AgentPath}, torFiles...)
	notify, err := buildSDNotify(ctx, tmp)
	if err != nil {
		return nil, err
	}
	files = append(files, notify+":"+path.Join(LibDir, libsystemd))
	for _, m := range mods {
		files = append(files, filepath.Join(o.KernelModulesDir, m.Path)+":"+path.Join(ModulesDir, m.Name+".ko"))
	}
	mk := []uimage.Modifier{
		uimage.WithEnv(golang.DisableCGO(), golang.WithBuildTag("goshsmall"),
			func(e *golang.Environ) { e.GOARCH = "amd64"; e.GOOS = "linux" }),
		uimage.WithTempDir(tmp),
		uimage.WithBaseArchive(base(cfgJSON, ca)),
		uimage.WithInit(layout.Agent),
		// tor's libraries are listed by torFiles; no ldd on anything else.
		uimage.WithSkipLDD(),
		uimage.WithFiles(files...),
		uimage.WithOutput(out),
	}
	if o.Debug {
		pkgs := make([]string, len(DebugCommands))
		for i, c := range DebugCommands {
			pkgs[i] = "github.com/u-root/u-root/cmds/core/" + c
		}
		mk = append(mk, uimage.WithBusyboxCommands(pkgs...), uimage.WithShell("gosh"))
	}
	o.Log.Info("building initramfs", "agent", o.AgentPkg, "modules", len(mods), "debug", o.Debug)
	if err := uimage.Create(llog.New(slog.LevelWarn, logPrintf(o.Log)), mk...); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rep, err := out.commit(o.Out)
	if err != nil {
		return nil, err
	}
	rep.Modules = order
	return rep, nil
}

// buildAgent compiles the agent as a static, reproducible binary: no cgo,
// trimmed paths, no build ID or VCS stamp, baseline amd64. (uimage's own
// builder passes -a, rebuilding the standard library every time.)
func buildAgent(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initramfs: building the agent %s: %v\n%s", pkg, err, b)
	}
	return nil
}

func logPrintf(l *slog.Logger) llog.Printf {
	return func(format string, v ...any) { l.Warn(strings.TrimSpace(fmt.Sprintf(format, v...))) }
}

// readAgentConfig reads a JSON object, keeping every field as the agent
// defines it; only "modules" is ours to rewrite.
func readAgentConfig(p string) (map[string]json.RawMessage, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	var cfg map[string]json.RawMessage
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("agent config %s: %w", p, err)
	}
	if d.More() {
		return nil, fmt.Errorf("agent config %s: data after the JSON object", p)
	}
	if cfg == nil {
		return nil, fmt.Errorf("agent config %s: not a JSON object", p)
	}
	return cfg, nil
}

func readCA(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("CA %s: no PEM certificate", p)
	}
	return b, nil
}

// torFiles lists tor, the libraries ld.so resolves for it (but
// libsystemd's: see sdnotify.go) and the NSS module glibc dlopens, as
// uimage "src:dst" specs.
func torFiles(tor string) ([]string, error) {
	real, err := filepath.EvalSymlinks(tor)
	if err != nil {
		return nil, fmt.Errorf("tor: %w", err)
	}
	libs, err := ldd.FList(real, nssFiles)
	if err != nil {
		return nil, fmt.Errorf("tor libraries: %w", err)
	}
	if libs, err = withoutSystemd(real, libs, nssFiles); err != nil {
		return nil, err
	}
	specs := []string{real + ":" + TorPath}
	seen := map[string]bool{}
	for _, l := range append(libs, nssFiles) {
		if !seen[l] && l != real {
			seen[l] = true
			specs = append(specs, l+":"+strings.TrimPrefix(l, "/"))
		}
	}
	sort.Strings(specs[1:])
	return specs, nil
}

// base is the skeleton the kernel and the agent expect before anything is
// mounted. /dev/console must exist for PID 1's stdio; there is no
// resolv.conf (the agent writes one from DHCP/config).
func base(cfgJSON, ca []byte) *cpio.Archive {
	a, _ := cpio.ArchiveFromRecords([]cpio.Record{
		cpio.Directory(".", 0o755),
		cpio.Directory("bin", 0o755),
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.Directory("etc", 0o755),
		cpio.Directory(layout.InImage(layout.ConfigDir), 0o755),
		cpio.StaticFile(AgentConfigPath, string(cfgJSON), 0o644),
		cpio.StaticFile(CAPath, string(ca), 0o644),
		cpio.StaticFile("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files\n", 0o644),
		cpio.StaticFile("etc/passwd", "root:x:0:0:root:/:/bin/sh\n", 0o644),
		cpio.StaticFile("etc/group", "root:x:0:\n", 0o644),
		cpio.StaticFile("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644),
		cpio.Directory("proc", 0o755),
		cpio.Directory("run", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("var", 0o755),
		cpio.Directory("var/lib", 0o755),
	})
	return a
}

// Compressions Build knows. Debian's kernel unpacks both (RD_XZ, RD_GZIP).
const (
	XZ   = "xz"
	Gzip = "gzip"
)

// xzArgs are the settings of the xz compressor. The kernel's decoder
// takes CRC32 or no check (not xz's default CRC64) and the x86 BCJ filter
// (XZ_DEC_X86), which makes the agent, tor and its libraries about 5%
// smaller; one thread gives one block, and the same bytes every time for
// the same xz version. Preset 9 (64 MiB dictionary) holds the whole cpio.
var xzArgs = []string{"--format=xz", "--check=crc32", "--x86", "--lzma2=preset=9", "--threads=1", "--stdout", "--quiet"}

// archive is the uimage output: a newc cpio streamed through the
// compressor into a temporary file, counted by part on the way, renamed
// into place only when complete. gzip's header carries no name and a zero
// mtime, and xz's none, so equal records give equal bytes.
type archive struct {
	cpio.RecordWriter
	f        *os.File
	zw       io.WriteCloser
	raw      countWriter
	parts    map[string]*Part
	format   string
	finished bool
}

var partOrder = []string{"agent", "tor+libs", "modules", "config", "debug tools", "base"}

func newArchive(ctx context.Context, dir, format string) (*archive, error) {
	f, err := os.CreateTemp(dir, "initramfs-*.cpio")
	if err != nil {
		return nil, err
	}
	a := &archive{f: f, parts: map[string]*Part{}, format: format}
	switch format {
	case Gzip:
		a.zw, _ = gzip.NewWriterLevel(f, gzip.BestCompression)
	case XZ:
		if a.zw, err = newXZ(ctx, f); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, err
		}
	}
	for _, n := range partOrder {
		a.parts[n] = &Part{Name: n}
	}
	a.raw.w = a.zw
	a.RecordWriter = cpio.Newc.Writer(&a.raw)
	return a, nil
}

// xzWriter feeds the host's xz (xz-utils), which has the x86 filter the
// Go xz packages lack; its output goes straight to the file.
type xzWriter struct {
	io.WriteCloser // xz's stdin
	cmd            *exec.Cmd
	stderr         strings.Builder
}

func newXZ(ctx context.Context, out *os.File) (*xzWriter, error) {
	x := &xzWriter{cmd: exec.CommandContext(ctx, "xz", xzArgs...)}
	x.cmd.Stdout = out
	x.cmd.Stderr = &x.stderr
	in, err := x.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	x.WriteCloser = in
	if err := x.cmd.Start(); err != nil {
		return nil, fmt.Errorf("initramfs: xz (xz-utils, scripts/deps.sh): %w", err)
	}
	return x, nil
}

// Close ends the input and waits for xz to write the rest.
func (x *xzWriter) Close() error {
	x.WriteCloser.Close()
	if err := x.cmd.Wait(); err != nil {
		return fmt.Errorf("initramfs: xz: %v: %s", err, strings.TrimSpace(x.stderr.String()))
	}
	return nil
}

// OpenWriter implements uimage's initramfs.WriteOpener.
func (a *archive) OpenWriter() (initramfs.Writer, error) { return a, nil }

// WriteRecord fixes the root directory, which uimage takes from a 0700
// temporary directory (relay users could not even reach /usr/bin/tor),
// and counts regular files by part.
func (a *archive) WriteRecord(r cpio.Record) error {
	if r.Name == "." {
		r.Mode = cpio.S_IFDIR | 0o755
	}
	if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
		p := a.parts[a.part(r.Name)]
		p.Files++
		p.Bytes += int64(r.FileSize)
	}
	return a.RecordWriter.WriteRecord(r)
}

func (a *archive) part(name string) string {
	switch {
	case name == AgentPath:
		return "agent"
	case strings.HasPrefix(name, ModulesDir+"/"):
		return "modules"
	case name == TorPath || strings.HasPrefix(name, "lib") || strings.HasPrefix(name, "usr/lib"):
		return "tor+libs"
	case name == AgentConfigPath || name == CAPath:
		return "config"
	case strings.HasPrefix(name, "bbin/"):
		return "debug tools"
	}
	return "base"
}

// Finish implements initramfs.Writer.
func (a *archive) Finish() error {
	if err := cpio.WriteTrailer(a); err != nil {
		return err
	}
	a.finished = true
	return a.zw.Close()
}

// commit moves the finished archive to dst and reports on it.
func (a *archive) commit(dst string) (*Report, error) {
	if !a.finished {
		return nil, errors.New("initramfs: archive not finished")
	}
	if a.parts["agent"].Files != 1 {
		return nil, errors.New("initramfs: the agent binary is missing from the archive")
	}
	if err := a.f.Chmod(0o644); err != nil {
		return nil, err
	}
	fi, err := a.f.Stat()
	if err != nil {
		return nil, err
	}
	n := fi.Size()
	if err := a.f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(a.f.Name(), dst); err != nil {
		return nil, err
	}
	rep := &Report{CPIOBytes: a.raw.n, Compressed: n, Compression: a.format}
	for _, name := range partOrder {
		if p := a.parts[name]; p.Files > 0 {
			rep.Parts = append(rep.Parts, *p)
		}
	}
	return rep, nil
}

// abort removes the temporary file unless commit moved it.
func (a *archive) abort() {
	if !a.finished {
		a.zw.Close() // an xz still running ends with its input
	}
	a.f.Close()
	os.Remove(a.f.Name())
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// sealing writes the agent config's sealing mode from the build options.
func sealing(cfg map[string]json.RawMessage, policyKey string, unmeasured bool) error {
	switch {
	case policyKey != "" && unmeasured:
		return errors.New("initramfs: a policy key and unmeasured sealing exclude each other")
	case unmeasured:
		cfg["sealing"], _ = json.Marshal(agentcfg.SealingUnmeasured)
	case policyKey != "":
		b, err := os.ReadFile(policyKey)
		if err != nil {
			return fmt.Errorf("initramfs: policy key: %w", err)
		}
		if blk, _ := pem.Decode(b); blk != nil {
			b = blk.Bytes
		}
		if _, err := release.ParsePublicKey(b); err != nil {
			return fmt.Errorf("initramfs: policy key %s: %w", policyKey, err)
		}
		cfg["sealing"], _ = json.Marshal(agentcfg.SealingRelease)
		cfg["policy_key"], _ = json.Marshal(base64.StdEncoding.EncodeToString(b))
	}
	return nil
}
