package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"patela/e2e/harness"
)

// TestIntelNIC boots the machine as real hardware would meet it: both
// NICs are QEMU's emulated Intel 82574 (e1000e), driven by Debian's
// e1000e module from the image; there is no virtio NIC, so the DHCP lease
// on the management NIC and the running relays can only come through it.
// A virtio machine boots the same way first, on the same run, for the
// boot-time comparison (logged; no timed assertion).
func TestIntelNIC(t *testing.T) {
	m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	times := map[string]time.Duration{}
	for _, nic := range []string{"virtio-net-pci", "e1000e"} {
		before, err := m.server.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		known := map[int64]bool{}
		for _, n := range before {
			known[n.ID] = true
		}
		vm, tpm := m.bootNIC(t, ctx, filepath.Join(t.TempDir(), "tpm-"+nic), nic, nic)
		node, err := m.server.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" && !known[n.ID] })
		if err != nil {
			t.Fatalf("%s: %v\n%s", nic, err, vm.Tail(40))
		}
		if _, err := m.server.Admin(ctx, "node", "enable", fmt.Sprint(node.ID)); err != nil {
			t.Fatal(err)
		}
		relays, err := m.server.WaitRelaysRunning(ctx, node.ID, 2, vm.Start)
		if err != nil {
			t.Fatalf("%s: %v\n%s", nic, err, vm.Tail(40))
		}
		times[nic] = time.Since(vm.Start)
		lease := vm.Find("DHCP lease", "addr=10.0.2.")
		if len(lease) == 0 {
			t.Fatalf("%s: no DHCP lease on the console\n%s", nic, vm.Tail(40))
		}
		if nic == "e1000e" && len(vm.Find("module", "name=e1000e", "status=")) == 0 {
			t.Errorf("the console does not show the e1000e module loaded")
		}
		t.Logf("%s: DHCP lease at %v, %d relays running as reported to the server at %v (from QEMU start; the node was enabled as soon as it showed up pending)",
			nic, round(lease[0].At), len(relays), round(times[nic]))
		vm.Kill()
		tpm.Stop()
	}
	t.Logf("boot to running relays: virtio %v, e1000e %v", round(times["virtio-net-pci"]), round(times["e1000e"]))
}
