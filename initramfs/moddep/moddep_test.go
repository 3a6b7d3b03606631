package moddep

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"patela/internal/testutil"
)

const dep = `kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`

func names(ms []Module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveOrder(t *testing.T) {
	tr, err := Parse(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	tr.builtin["tpm_tis"] = true
	got, err := tr.Resolve("virtio_pci", "virtio_net", "virtio_rng", "tpm-tis")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
		"failover", "net_failover", "virtio_net", "virtio-rng"}
	if !slices.Equal(names(got), want) {
		t.Fatalf("order:\n got %v\nwant %v", names(got), want)
	}
	if got[len(got)-1].Path != "kernel/drivers/char/hw_random/virtio-rng.ko" {
		t.Errorf("path %q", got[len(got)-1].Path)
	}
}

func TestSoftdepThroughAlias(t *testing.T) {
	tr, err := Parse(strings.NewReader("kernel/crypto/crc32c_generic.ko:\nkernel/arch/x86/crypto/crc32c-intel.ko:\nkernel/lib/libcrc32c.ko:\nkernel/net/nf_conntrack.ko: kernel/lib/libcrc32c.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.parseSoftdep(strings.NewReader("# comment\nsoftdep libcrc32c pre: crc32c post: foo\n")); err != nil {
		t.Fatal(err)
	}
	if err := tr.parseAlias(strings.NewReader("alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias pci:v*d* crc32c_intel\n")); err != nil {
		t.Fatal(err)
	}
	got, err := tr.Resolve("nf_conntrack")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"crc32c_generic", "libcrc32c", "nf_conntrack"}; !slices.Equal(names(got), want) {
		t.Fatalf("got %v, want %v", names(got), want)
	}
}

func TestResolveUnknown(t *testing.T) {
	tr, err := Parse(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Resolve("virtio_net", "e1000"); err == nil || !strings.Contains(err.Error(), `"e1000"`) {
		t.Fatalf("want error naming e1000, got %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for name, in := range map[string]string{
		"no colon":     "kernel/a.ko\n",
		"not .ko":      "kernel/a.o:\n",
		"escapes":      "../a.ko:\n",
		"absolute":     "/lib/a.ko:\n",
		"duplicate":    "kernel/a.ko:\nkernel/b/a.ko:\n",
		"dangling dep": "kernel/a.ko: kernel/b.ko\n",
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: parsed %q without error", name, in)
		}
	}
}

// TestDebianTree resolves the modules patela's QEMU machines load against
// the real Debian tree fetched by scripts/kernel.sh.
func TestDebianTree(t *testing.T) {
	dirs, _ := filepath.Glob("../../build/kernel/modules/*")
	if len(dirs) == 0 {
		testutil.SkipOrFail(t, "no kernel tree in build/kernel: run `just kernel`")
	}
	tr, err := Load(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	got, err := tr.Resolve("virtio_pci", "virtio_net", "virtio-rng", "nft_chain_nat", "nft_ct")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range got {
		pos[m.Name] = i
		if _, err := os.Stat(filepath.Join(dirs[0], m.Path)); err != nil {
			t.Error(err)
		}
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio_net"}, {"failover", "net_failover"}, {"nf_tables", "nft_chain_nat"},
		{"nf_conntrack", "nf_nat"}, {"nfnetlink", "nf_tables"}, {"libcrc32c", "nf_conntrack"}, {"virtio", "virtio-rng"},
		{"crc32c_generic", "libcrc32c"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if !okA || !okB || a >= b {
			t.Errorf("%s must load before %s: %v", pair[0], pair[1], names(got))
		}
	}
	if _, ok := pos["crc32c_intel"]; ok {
		t.Error("crc32c_intel (SSE4.2 only) chosen for the crc32c softdep; want crc32c_generic")
	}
	if !tr.Builtin("tpm_tis") {
		t.Error("tpm_tis should be built into Debian's kernel")
	}
}

// TestDebianNICDrivers: the real machines' NIC drivers resolve with their
// dependencies, r8169's PHY driver (a softdep, which modules.dep does not
// list) included, each after what it needs.
func TestDebianNICDrivers(t *testing.T) {
	dirs, _ := filepath.Glob("../../build/kernel/modules/*")
	if len(dirs) == 0 {
		testutil.SkipOrFail(t, "no kernel tree in build/kernel: run `just kernel`")
	}
	tr, err := Load(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	for drv, before := range map[string][]string{
		"igc":    nil,
		"igb":    {"dca", "i2c-algo-bit"},
		"e1000e": nil,
		"ixgbe":  {"dca", "mdio", "libphy", "mdio_devres", "xfrm_algo"},
		"i40e":   nil,
		"r8169":  {"libphy", "mdio_devres", "realtek"},
	} {
		got, err := tr.Resolve(drv)
		if err != nil {
			t.Errorf("%s: %v (scripts/kernel.sh extracts it)", drv, err)
			continue
		}
		pos := map[string]int{}
		for i, m := range got {
			pos[m.Name] = i
			if _, err := os.Stat(filepath.Join(dirs[0], m.Path)); err != nil {
				t.Error(err)
			}
		}
		if len(got) != len(before)+1 || pos[drv] != len(got)-1 {
			t.Errorf("%s resolves to %v, want %v then %s", drv, names(got), before, drv)
		}
		for _, b := range before {
			if _, ok := pos[b]; !ok {
				t.Errorf("%s: %s missing from %v", drv, b, names(got))
			}
		}
	}
	if p, r := slices.Index(names(mustResolve(t, tr, "r8169")), "libphy"), slices.Index(names(mustResolve(t, tr, "r8169")), "realtek"); p > r {
		t.Error("libphy must load before realtek")
	}
}

func mustResolve(t *testing.T, tr *Tree, n string) []Module {
	t.Helper()
	ms, err := tr.Resolve(n)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}
