// Command demo shows patela's job on one host, narrated: it builds the
// tree, starts a config server with a fresh database, makes a release
// policy key, builds the image as a Unified Kernel Image and registers it
// as an approved release, boots a relay machine from it in QEMU under
// OVMF (UEFI, measured boot) with its own swtpm, enables it as an
// administrator would, shows its relays come up and report their
// fingerprints, power-cycles it to show the same fingerprints come back
// from the TPM, and ends by "seizing" the machine: an image nobody
// approved boots on the same TPM, tries every way to unseal the relay
// keys and fails. Ctrl-C stops everything at any point. State and logs
// stay in ./demo-state until the next run.
//
// Run it through `just demo` (which installs the Debian packages and the
// kernel first), from the module root, as root.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"patela/e2e/harness"
)

const stateDir = "demo-state"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{start: time.Now()}
	err := d.run(ctx)
	d.cleanup()
	switch {
	case ctx.Err() != nil:
		say("Interrupted: the machine, its TPM and the config server are stopped. Logs: %s/", stateDir)
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\nlogs: %s/demo.log and %s/*.console\n", err, stateDir, stateDir)
		os.Exit(1)
	}
	say("Done in %v. Everything is stopped; logs and state are in %s/.", time.Since(d.start).Round(time.Second), stateDir)
}

type demo struct {
	start  time.Time
	log    *os.File
	server *harness.Server
	vm     *harness.VM
	tpm    *harness.SWTPM
	tools  *harness.Tools
	uefi   *harness.UEFI
}

func say(format string, a ...any)  { fmt.Printf("\n==> "+format+"\n", a...) }
func note(format string, a ...any) { fmt.Printf("    "+format+"\n", a...) }

func (d *demo) run(ctx context.Context) error {
	if m := harness.Missing(); len(m) > 0 {
		return fmt.Errorf("missing %s: run `just deps` (as root)", strings.Join(m, ", "))
	}
	root, err := harness.Root()
	if err != nil {
		return err
	}
	state := filepath.Join(root, stateDir)
	if err := os.RemoveAll(state); err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	if d.log, err = os.Create(filepath.Join(state, "demo.log")); err != nil {
		return err
	}
	log := harness.SyncWriter(d.log)

	say("Building patela from this tree: config server, OS package tool, the agent")
	tools, err := harness.BuildTools(ctx, filepath.Join(state, "bin"))
	if err != nil {
		return err
	}
	kernel, err := harness.FetchKernel(ctx, root, log)
	if err != nil {
		return err
	}
	note("kernel: Debian's %s", filepath.Base(kernel.Modules))

	say("Starting the config server (fresh SQLite database, its own CA)")
	if d.server, err = harness.StartServer(ctx, tools, filepath.Join(state, "server"), log); err != nil {
		return err
	}
	note("listening on https://%s; the machine will reach it as %s", d.server.Addr, harness.ServerURL)
	note("address pools 192.0.2.0/24 and 2001:db8::/64 (documentation ranges), global torrc: DisableNetwork 1")

	say("Making the release policy key (ECDSA P-256; in production it stays offline)")
	if m := harness.MissingUEFI(); len(m) > 0 {
		return fmt.Errorf("missing %s: run `just deps` (as root)", strings.Join(m, ", "))
	}
	d.tools = tools
	keyOut, err := d.stimage(ctx, "keygen", "policy-key", "--key-out", filepath.Join(state, "policy.key"), "--pub-out", filepath.Join(state, "policy.pub"))
	if err != nil {
		return err
	}
	pk := regexp.MustCompile(`"policy_key": "([^"]+)"`).FindStringSubmatch(keyOut)
	if pk == nil {
		return fmt.Errorf("stimage keygen policy-key printed %q", keyOut)
	}
	note("the image's agent config names it: \"sealing\": \"release\", \"policy_key\": \"%.24s…\"", pk[1])

	say("Building the initramfs and the signed OS package (what stboot would fetch)")
	im, err := harness.BuildImage(ctx, harness.ImageOptions{Tools: tools, Kernel: kernel, Dir: filepath.Join(state, "image"),
		ServerCA: d.server.CA, PolicyKey: pk[1], Log: log})
	if err != nil {
		return err
	}
	for _, l := range strings.Split(strings.TrimRight(im.Report.String(), "\n"), "\n") {
		note("%s", strings.TrimSpace(l))
	}
	zi, _ := os.Stat(im.Package + ".zip")
	note("OS package %s.zip (%.2f MB) signed by a root and a signing key; verified against a", filepath.Base(im.Package), float64(zi.Size())/1e6)
	note("threshold-2 trust policy, then its kernel and initramfs extracted to boot (no stboot here:")
	note("QEMU boots what stboot would kexec)")

	say("Building the same kernel and initramfs as a Unified Kernel Image and approving it as a release")
	uki := filepath.Join(state, "patela-demo-1.efi")
	osrel := filepath.Join(state, "os-release")
	os.WriteFile(osrel, []byte("ID=patela\nNAME=\"patela relay machine\"\nVERSION_ID=demo-1\n"), 0o644)
	if _, err := d.stimage(ctx, "uki", "create", "--kernel", kernel.Vmlinuz, "--initramfs", im.Initramfs, "--cmdline", harness.Cmdline,
		"--os-release", osrel, "--out", uki); err != nil {
		return err
	}
	rel := filepath.Join(state, "patela-demo-1.json")
	if _, err := d.stimage(ctx, "release", "create", "--name", "patela-demo-1", "--uki", uki, "--boot", "direct",
		"--key", filepath.Join(state, "policy.key"), "--out", rel); err != nil {
		return err
	}
	pcrs, _ := d.stimage(ctx, "uki", "pcrs", "--boot", "direct", uki)
	for _, l := range strings.Split(strings.TrimSpace(pcrs), "\n") {
		note("%s", l)
	}
	note("$ configsrv release add patela-demo-1.json")
	if _, err := d.server.Admin(ctx, "release", "add", rel); err != nil {
		return err
	}
	note("the approval: the policy key's signature over PolicyPCR(PCR 4, 11, 12, 15 = 0)")

	say("Booting the relay machine from the UKI: QEMU (TCG), OVMF (UEFI measures what it boots), its own TPM (swtpm)")
	note("its only way out is the config server; its relay NIC is wired to nothing")
	tpmDir := filepath.Join(state, "tpm")
	d.uefi = &harness.UEFI{Vars: filepath.Join(state, "OVMF_VARS.fd")}
	if err := d.boot(ctx, tools, harness.VMOptions{Kernel: uki}, tpmDir, "boot1"); err != nil {
		return err
	}
	node, err := d.server.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" })
	if err != nil {
		return d.fail(err)
	}
	say("The server sees a new machine, node %d, identified by its TPM's endorsement key: pending", node.ID)
	note("DEMO MODE: enabling it as the administrator would after checking it:")
	note("  $ configsrv node enable %d", node.ID)
	if _, err := d.server.Admin(ctx, "node", "enable", fmt.Sprint(node.ID)); err != nil {
		return err
	}
	first, err := d.server.WaitRelaysRunning(ctx, node.ID, 2, d.vm.Start)
	if err != nil {
		return d.fail(err)
	}
	t1 := time.Since(d.vm.Start)
	say("Node %d runs %d relays (%v after power-on), as its heartbeat tells the server:", node.ID, len(first), t1.Round(100*time.Millisecond))
	table(first, nil)
	note("waiting for the agent to seal every relay's keys into the TPM ...")
	if _, err := d.vm.Expect(ctx, "key bundle saved", fmt.Sprintf("relays=%d", len(first))); err != nil {
		return d.fail(err)
	}

	say("Power-cycling the machine: RAM is gone, only the TPM remembers")
	d.stopMachine()
	if err := d.boot(ctx, tools, harness.VMOptions{Kernel: uki}, tpmDir, "boot2"); err != nil {
		return err
	}
	second, err := d.server.WaitRelaysRunning(ctx, node.ID, 2, d.vm.Start)
	if err != nil {
		return d.fail(err)
	}
	t2 := time.Since(d.vm.Start)
	nodes, err := d.server.Nodes(ctx)
	if err != nil {
		return err
	}
	say("After the reboot: still node %d (%d node known to the server), relays running %v after power-on:", node.ID, len(nodes), t2.Round(100*time.Millisecond))
	same := table(second, first)
	if len(d.vm.Find("vault created")) > 0 {
		return errors.New("the reboot created a new vault key: the TPM did not keep its state")
	}
	if !same {
		return errors.New("relay fingerprints changed across the reboot")
	}
	note("same fingerprints: the identity keys came back out of the TPM; the server never saw them")
	nl, _ := d.server.Admin(ctx, "node", "list")
	for _, l := range strings.Split(strings.TrimSpace(nl), "\n") {
		note("%s", l)
	}

	say("Seizing the machine: someone boots their own image on it, with a tool that tries every way to unseal")
	note("the image: the real initramfs with /init replaced by e2e/cmd/seize, plus the public approvals; never approved")
	d.stopMachine()
	if err := d.seize(ctx, im, kernel, rel, tpmDir); err != nil {
		return err
	}
	say("Shutting down: machine, TPM, config server")
	return nil
}

// seize boots the unapproved image on the machine's TPM and shows what it
// tried and what the TPM answered.
func (d *demo) seize(ctx context.Context, im *harness.Image, kernel *harness.Kernel, rel, tpmDir string) error {
	state := filepath.Dir(tpmDir)
	seize, err := os.ReadFile(d.tools.Seize)
	if err != nil {
		return err
	}
	approval, _ := os.ReadFile(rel)
	base, err := os.ReadFile(im.Initramfs)
	if err != nil {
		return err
	}
	seized, err := harness.Append(base, harness.File{Name: "init", Data: seize, Mode: 0o755},
		harness.File{Name: "seize/" + filepath.Base(rel), Data: approval, Mode: 0o644})
	if err != nil {
		return err
	}
	initrd := filepath.Join(state, "seized.cpio")
	if err := os.WriteFile(initrd, seized, 0o644); err != nil {
		return err
	}
	uki := filepath.Join(state, "seized.efi")
	if _, err := d.stimage(ctx, "uki", "create", "--kernel", kernel.Vmlinuz, "--initramfs", initrd, "--cmdline", harness.Cmdline,
		"--os-release", filepath.Join(state, "os-release"), "--out", uki); err != nil {
		return err
	}
	if err := d.boot(ctx, d.tools, harness.VMOptions{Kernel: uki}, tpmDir, "seized"); err != nil {
		return err
	}
	if _, err := d.vm.Expect(ctx, "seize: done"); err != nil {
		return d.fail(err)
	}
	if len(d.vm.Find("UNSEALED")) > 0 {
		return errors.New("the unapproved image UNSEALED the vault key")
	}
	if _, err := d.vm.Expect(ctx, "measured boot: this image cannot unseal"); err != nil {
		return d.fail(err)
	}
	note("every attempt refused by the TPM; the relay keys stay sealed, and patela's own agent in that image says why")
	return nil
}

func (d *demo) stimage(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, d.tools.Stimage, args...).CombinedOutput()
	fmt.Fprintf(d.log, "$ stimage %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		return "", fmt.Errorf("stimage %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// boot starts the TPM and QEMU (under OVMF), mirroring the agent's own lines.
func (d *demo) boot(ctx context.Context, tools *harness.Tools, o harness.VMOptions, tpmDir, name string) error {
	var err error
	if d.tpm, err = harness.StartSWTPM(ctx, tpmDir); err != nil {
		return err
	}
	console, err := os.Create(filepath.Join(filepath.Dir(tpmDir), name+".console"))
	if err != nil {
		return err
	}
	o.TPM, o.UEFI, o.Relay, o.ServerAddr, o.Timeout = d.tpm, d.uefi, tools.StdioRelay, d.server.Addr, 5*time.Minute
	o.Console = io.MultiWriter(console, narrator{})
	d.vm, err = harness.Boot(ctx, o)
	return err
}

// narrator shows the console lines a person wants to see: the agent's
// boot phases and decisions, each relay's fingerprint and readiness; not
// the firmware, the kernel or tor's chatter.
type narrator struct{}

var interesting = []string{"patela agent starting", "phase=", "waiting for an administrator", "attested", "TPM identity",
	"vault", "relay applied", "tor started", "fingerprint is", "Signaled readiness", "key bundle saved", "keys relay=", "FATAL",
	"measured boot", "seize: refused", "seize: UNSEALED", "seize: done", "seize: read", "seize: pcr 4 ", "seize: pcr 11 "}

// noise is what the narrator cuts from a console line: slog's level and
// key, the agent's uptime stamp, tor's own date and severity.
var noise = regexp.MustCompile(`level=INFO |msg=| up=[0-9.]+$|"?[A-Z][a-z]{2} [0-9]+ [0-9:.]+ \[notice\] `)

func (narrator) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	for _, s := range interesting {
		if strings.Contains(line, s) {
			line = noise.ReplaceAllString(line, "")
			if len(line) > 150 {
				line = line[:147] + "..."
			}
			fmt.Printf("    machine│%s\n", line)
			break
		}
	}
	return len(p), nil
}

// table prints relays; with before, it marks each fingerprint same or
// changed and reports whether all are the same.
func table(rs, before []harness.RelayInfo) bool {
	prev := map[string]string{}
	for _, r := range before {
		prev[r.Name] = r.Fingerprint + r.Ed25519ID
	}
	same := true
	fmt.Printf("    %-12s %-16s %-40s %-43s\n", "relay", "address", "fingerprint (RSA)", "ed25519 identity")
	for _, r := range rs {
		mark := ""
		if before != nil {
			if prev[r.Name] == r.Fingerprint+r.Ed25519ID {
				mark = "  same as before"
			} else {
				mark, same = "  CHANGED", false
			}
		}
		fmt.Printf("    %-12s %-16s %-40s %-43s%s\n", r.Name, r.IPv4, r.Fingerprint, r.Ed25519ID, mark)
	}
	return same
}

func (d *demo) fail(err error) error {
	if d.vm != nil {
		return fmt.Errorf("%w\nlast console lines:\n%s", err, d.vm.Tail(25))
	}
	return err
}

func (d *demo) stopMachine() {
	if d.vm != nil {
		d.vm.Kill()
		d.vm = nil
	}
	if d.tpm != nil {
		d.tpm.Stop()
		d.tpm = nil
	}
}

func (d *demo) cleanup() {
	d.stopMachine()
	if d.server != nil {
		d.server.Stop()
	}
	if d.log != nil {
		d.log.Close()
	}
}
