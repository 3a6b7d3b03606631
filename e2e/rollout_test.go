package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"patela/e2e/harness"
	"patela/internal/testutil"
)

// rolloutNode is one machine of TestRollout: its TPM and firmware
// variables persist across its boots, as a real machine's would.
type rolloutNode struct {
	name   string
	tpmDir string
	vars   string
	id     int64
	vm     *harness.VM
	tpm    *harness.SWTPM
	boots  int
	relays map[string]string // fingerprints of its first boot
}

// TestRollout is remote attestation end to end: two UKI machines under
// OVMF + swtpm boot release A and attest as A; `rollout start e2e-B`
// reboots them one after the other (each drains its relays, the test
// playing the hypervisor boots B when it goes down) and ends with both on
// B, every relay running with its fingerprint; a rollout back to A whose
// first node comes back on B stops; with A retired, `serve
// --require-release` refuses a boot of A (403 unknown_release, the PCR
// digest in the server log).
func TestRollout(t *testing.T) {
	m := setup(t)
	missing := harness.MissingUEFI()
	need(t, strings.Join(missing, ", "), len(missing) == 0)
	ctx, cancel := context.WithTimeout(context.Background(), 16*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key, keyField := policyKey(ctx, t, m, dir)
	// A server of this test's own: it restarts with --require-release.
	var srvLog testutil.SyncBuffer
	log := harness.SyncWriter(m.log)
	srv, err := harness.StartServer(ctx, m.tools, filepath.Join(dir, "server"), io.MultiWriter(&srvLog, log))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	admin := func(args ...string) string {
		t.Helper()
		out, err := srv.Admin(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// Relays drain for 3 s when the machine goes down (tor's default: 30).
	torrc := filepath.Join(dir, "global.torrc")
	os.WriteFile(torrc, []byte(harness.GlobalTorrc+"ShutdownWaitLength 3\n"), 0o644)
	admin("torrc", "import", torrc, "--default")
	im, err := harness.BuildImage(ctx, harness.ImageOptions{Tools: m.tools, Kernel: m.kernel, Dir: filepath.Join(dir, "image"),
		ServerCA: srv.CA, PolicyKey: string(keyField[1]), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	initB := filepath.Join(dir, "initrd-b")
	appendFiles(t, im.Initramfs, initB, harness.File{Name: "etc/patela/release-note", Data: []byte("release B\n"), Mode: 0o644})
	rel := map[string]releaseImage{
		"e2e-A": m.makeRelease(t, ctx, dir, "e2e-A", im.Initramfs, key),
		"e2e-B": m.makeRelease(t, ctx, dir, "e2e-B", initB, key),
	}
	admin("release", "add", rel["e2e-A"].release)
	admin("release", "add", rel["e2e-B"].release)

	nodes := []*rolloutNode{{name: "n1"}, {name: "n2"}}
	for _, n := range nodes {
		n.tpmDir, n.vars = filepath.Join(dir, n.name+"-tpm"), filepath.Join(dir, n.name+"-vars.fd")
	}
	boot := func(n *rolloutNode, release string) {
		t.Helper()
		tpm, err := harness.StartSWTPM(ctx, n.tpmDir)
		if err != nil {
			t.Fatal(err)
		}
		n.boots++
		console, _ := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d-%s.console", n.name, n.boots, release)))
		vm, err := harness.Boot(ctx, harness.VMOptions{Kernel: rel[release].uki, UEFI: &harness.UEFI{Vars: n.vars},
			TPM: tpm, Relay: m.tools.StdioRelay, ServerAddr: srv.Addr, Timeout: 8 * time.Minute, Console: console})
		if err != nil {
			tpm.Stop()
			t.Fatal(err)
		}
		n.vm, n.tpm = vm, tpm
		label := fmt.Sprintf("%s boot %d (%s)", n.name, n.boots, release)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s console, last 30 lines:\n%s", label, vm.Tail(30))
			}
			vm.Kill()
			tpm.Stop()
			console.Close()
		})
	}
	down := func(n *rolloutNode) {
		n.vm.Kill()
		n.tpm.Stop()
	}
	type view struct {
		ID       int64  `json:"id"`
		Attested string `json:"attested"`
	}
	attested := func() map[int64]string {
		var vs []view
		json.Unmarshal([]byte(admin("node", "list", "--json")), &vs)
		out := map[int64]string{}
		for _, v := range vs {
			out[v.ID] = v.Attested
		}
		return out
	}
	running := func(n *rolloutNode, since time.Time) map[string]string {
		t.Helper()
		rs, err := srv.WaitRelaysRunning(ctx, n.id, 2, since)
		if err != nil {
			t.Fatal(err)
		}
		return fingerprints(rs)
	}

	// Release A on both machines: enrolled, relays running, attested A.
	enableRE := regexp.MustCompile(`configsrv node enable (\d+)`)
	for _, n := range nodes {
		boot(n, "e2e-A")
	}
	for _, n := range nodes {
		l, err := n.vm.Expect(ctx, "configsrv node enable")
		if err != nil {
			t.Fatal(err)
		}
		n.id, _ = strconv.ParseInt(enableRE.FindStringSubmatch(l.Text)[1], 10, 64)
		admin("node", "enable", fmt.Sprint(n.id))
	}
	for _, n := range nodes {
		n.relays = running(n, n.vm.Start)
	}
	for _, n := range nodes {
		if got := attested()[n.id]; got != "e2e-A" {
			t.Fatalf("%s (node %d) attested %q after booting A", n.name, n.id, got)
		}
	}

	// The rollout: the test is the hypervisor, booting B into whichever
	// machine goes down.
	type rolloutView struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
		Nodes  []struct {
			NodeID int64     `json:"node_id"`
			State  string    `json:"state"`
			Now    string    `json:"now"`
			Asked  time.Time `json:"asked"`
			Done   time.Time `json:"done"`
		} `json:"nodes"`
	}
	status := func() rolloutView {
		var v rolloutView
		json.Unmarshal([]byte(admin("rollout", "status", "--json")), &v)
		return v
	}
	// hypervisor boots release into each machine that goes down until
	// the rollout leaves "running"; it returns when each went down.
	hypervisor := func(release string) (rolloutView, map[string]time.Time) {
		t.Helper()
		wentDown := map[string]time.Time{}
		for {
			for _, n := range nodes {
				select {
				case <-n.vm.Done():
					wentDown[n.name] = time.Now()
					if len(n.vm.Find("rollout: the config server asks this machine to reboot")) != 1 {
						t.Fatalf("%s went down without a rollout's request:\n%s", n.name, n.vm.Tail(30))
					}
					// Drained: tor was interrupted and waited before the reboot.
					if len(n.vm.Find("Interrupt: we have stopped accepting new connections")) == 0 {
						t.Errorf("%s: no relay drained (tor's SIGINT message) before the reboot", n.name)
					}
					n.tpm.Stop()
					boot(n, release)
				default:
				}
			}
			if v := status(); v.State != "running" {
				return v, wentDown
			}
			if err := ctx.Err(); err != nil {
				t.Fatalf("rollout still running: %v\n%s", err, admin("rollout", "status"))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	start := time.Now()
	admin("rollout", "start", "e2e-B", "--max-unavailable", "1")
	v, wentDown := hypervisor("e2e-B")
	took := time.Since(start)
	if v.State != "done" || len(v.Nodes) != 2 {
		t.Fatalf("rollout to B: %+v", v)
	}
	first, second := v.Nodes[0], v.Nodes[1]
	if second.Asked.Before(first.Done) {
		t.Errorf("node %d was asked at %v, before node %d was back (%v)", second.NodeID, second.Asked, first.NodeID, first.Done)
	}
	for _, n := range nodes {
		if got := running(n, n.vm.Start); !mapsEqual(got, n.relays) {
			t.Errorf("%s: fingerprints changed with the rollout:\n before %v\n after  %v", n.name, n.relays, got)
		}
		if got := attested()[n.id]; got != "e2e-B" {
			t.Errorf("%s attested %q after the rollout, want e2e-B", n.name, got)
		}
	}
	// `configsrv status` (and /metrics' patela_node_info) show the quoted
	// release, not the one the node reports.
	var fleet []struct {
		ID       int64  `json:"id"`
		Attested string `json:"attested_release"`
	}
	if err := json.Unmarshal([]byte(admin("status", "--json")), &fleet); err != nil || len(fleet) != 2 {
		t.Errorf("status --json: %v %+v", err, fleet)
	}
	for _, f := range fleet {
		if f.Attested != "e2e-B" {
			t.Errorf("status: node %d attested release %q, want e2e-B", f.ID, f.Attested)
		}
	}
	t.Logf("rollout A → B of 2 nodes: %v; %s (node %d) went down %v after the start, %s (node %d) %v (rollout status: %s)",
		round(took), nodes[0].name, nodes[0].id, round(wentDown[nodes[0].name].Sub(start)),
		nodes[1].name, nodes[1].id, round(wentDown[nodes[1].name].Sub(start)),
		strings.ReplaceAll(strings.TrimSpace(admin("rollout", "status")), "\n", " | "))

	// Back to A, but the hypervisor still boots B: the rollout stops at
	// its first node, the second is never asked.
	admin("rollout", "start", "e2e-A")
	v, _ = hypervisor("e2e-B")
	if v.State != "failed" || !strings.Contains(v.Reason, "came back on release e2e-B, not e2e-A") ||
		v.Nodes[1].State != "waiting" {
		t.Errorf("a node back on the wrong release: %+v", v)
	}

	// --require-release with A retired: a boot of A gets no token.
	admin("release", "retire", "e2e-A")
	for _, n := range nodes {
		down(n)
	}
	if err := srv.Restart("--require-release"); err != nil {
		t.Fatal(err)
	}
	n := nodes[1]
	boot(n, "e2e-A")
	if _, err := n.vm.Expect(ctx, "gives tokens only to nodes that booted an active release"); err != nil {
		t.Fatal(err)
	}
	digest := regexp.MustCompile(`refused: node's boot is no active release.* node=` + fmt.Sprint(n.id) + `.*pcr_digest=([0-9a-f]{64})`).
		FindStringSubmatch(srvLog.String())
	if digest == nil {
		t.Errorf("the server log names no PCR digest for the refusal:\n%s", srvLog.String())
	}
	var shown struct {
		Attestation struct {
			PCRDigest string `json:"pcr_digest"`
			EventLog  string `json:"event_log"`
		} `json:"attestation"`
	}
	json.Unmarshal([]byte(admin("node", "show", fmt.Sprint(n.id), "--json")), &shown)
	if digest != nil && shown.Attestation.PCRDigest != digest[1] {
		t.Errorf("node show: PCR digest %q, the log said %q", shown.Attestation.PCRDigest, digest[1])
	}
	if shown.Attestation.EventLog != "replayed" {
		t.Errorf("OVMF's event log: %q, want replayed", shown.Attestation.EventLog)
	}
	if len(n.vm.Find("vault opened")) != 0 {
		t.Error("the refused boot opened its vault")
	}
}
