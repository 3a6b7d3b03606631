#!/usr/bin/env bash
# Fetches Debian bookworm's kernel (linux-image-amd64's current ABI) without
# installing it: apt-get download + dpkg-deb extraction of vmlinuz, its config
# and the module directories patela's machines and QEMU need: virtio and
# e1000/e1000e for QEMU; igc (i225/i226), igb (i210/i211/i350), e1000e,
# ixgbe, i40e (Intel servers) and r8169 (Realtek) for real machines, with
# their dependencies (dca, mdio, libphy, mdio_devres, xfrm_algo, i2c-algo-bit
# and r8169's PHY softdep realtek; PTP and PPS are built in). An image holds
# only the modules its agent config names (initramfs/ramfs).
#
# Firmware: Debian's kernel package ships none (/lib/firmware comes from the
# firmware-* packages of non-free-firmware). Of these drivers only r8169
# asks for any (rtl_nic/*.fw, firmware-realtek): it patches the PHY of some
# RTL8168/8125 revisions and the driver runs without it.
#
# Result (git-ignored, cached; delete build/kernel to refresh):
#   build/kernel/vmlinuz            the bzImage
#   build/kernel/config             its .config
#   build/kernel/version            the ABI name, e.g. 6.1.0-56-amd64
#   build/kernel/modules/<ver>/     kernel/... subset + modules.dep/order/builtin
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/kernel

# What to extract. Wildcards cover the ABI version. A cached tree made from
# another list is fetched again.
patterns=(
    './boot/vmlinuz-*' './boot/config-*'
    './lib/modules/*/modules.order' './lib/modules/*/modules.builtin'
    './lib/modules/*/modules.builtin.modinfo'
    './lib/modules/*/kernel/drivers/virtio/*'
    './lib/modules/*/kernel/drivers/char/hw_random/*'
    './lib/modules/*/kernel/drivers/net/virtio_net.ko'
    './lib/modules/*/kernel/drivers/net/net_failover.ko'
    './lib/modules/*/kernel/net/core/failover.ko'
    './lib/modules/*/kernel/net/netfilter/*'
    './lib/modules/*/kernel/net/ipv4/netfilter/*'
    './lib/modules/*/kernel/net/ipv6/netfilter/*'
    './lib/modules/*/kernel/lib/libcrc32c.ko'
    './lib/modules/*/kernel/crypto/crc32c*'
    './lib/modules/*/kernel/arch/x86/crypto/crc32c*'
    './lib/modules/*/kernel/drivers/net/ethernet/intel/e1000*'
    './lib/modules/*/kernel/drivers/net/ethernet/intel/igb/*'
    './lib/modules/*/kernel/drivers/net/ethernet/intel/igc/*'
    './lib/modules/*/kernel/drivers/net/ethernet/intel/ixgbe/*'
    './lib/modules/*/kernel/drivers/net/ethernet/intel/i40e/*'
    './lib/modules/*/kernel/drivers/net/ethernet/realtek/r8169.ko'
    './lib/modules/*/kernel/drivers/net/phy/realtek.ko'
    './lib/modules/*/kernel/drivers/net/phy/libphy.ko'
    './lib/modules/*/kernel/drivers/net/phy/mdio_devres.ko'
    './lib/modules/*/kernel/drivers/net/mdio.ko'
    './lib/modules/*/kernel/drivers/dca/dca.ko'
    './lib/modules/*/kernel/drivers/i2c/algos/i2c-algo-bit.ko'
    './lib/modules/*/kernel/net/xfrm/xfrm_algo.ko'
)
list_sum=$(printf '%s\n' "${patterns[@]}" | sha256sum | cut -d' ' -f1)

if [ -s "$out/vmlinuz" ] && [ -s "$out/version" ] && [ -s "$out/modules/$(cat "$out/version")/modules.dep" ] &&
    [ "$(cat "$out/patterns.sha256" 2>/dev/null)" = "$list_sum" ]; then
    echo "kernel: cached $(cat "$out/version") in $out"
    exit 0
fi

resolve() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6/{print $2; exit}'
}
pkg=$(resolve)
if [ -z "$pkg" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    pkg=$(resolve)
fi
if [ -z "$pkg" ]; then
    echo "kernel: apt-cache cannot resolve linux-image-amd64 (is a bookworm source configured?)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/patela-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
deb=$(ls "$work"/*.deb)

mkdir -p "$work/root"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/root" --wildcards "${patterns[@]}"

vmlinuz=$(ls "$work"/root/boot/vmlinuz-*)
ver=${vmlinuz##*/vmlinuz-}
mods="$work/root/lib/modules/$ver"
# The .deb ships no modules.dep (depmod runs at install); generate it for the
# extracted subset with depmod against this tree, which knows every symbol the
# subset needs from its own members.
if ! command -v depmod >/dev/null 2>&1 && [ ! -x /sbin/depmod ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kmod
fi
export PATH="$PATH:/sbin:/usr/sbin"
depmod -b "$work/root" "$ver"
# depmod silently drops a dependency whose module was not extracted; each
# module's own "depends" field names them all, and "softdep" the modules it
# wants loaded first (r8169: realtek), so check the subset is closed under
# both (a softdep naming an alias such as crc32c is resolved by moddep).
missing=$( (find "$mods/kernel" -name '*.ko' -print0 | xargs -0 -n1 modinfo -F depends | tr ',' '\n'
    find "$mods/kernel" -name '*.ko' -print0 | xargs -0 -n1 modinfo -F softdep | tr ' ' '\n' | grep -v ':$' | grep -vx crc32c) |
    sed '/^$/d' | sort -u |
    while read -r dep; do
        find "$mods/kernel" -name "$dep.ko" -o -name "${dep//_/-}.ko" | grep -q . || echo "$dep"
    done)
if [ -n "$missing" ]; then
    echo "kernel: extracted modules depend on modules not extracted: $missing" >&2
    exit 1
fi

rm -rf "$out.tmp"
mkdir -p "$out.tmp/modules"
cp "$vmlinuz" "$out.tmp/vmlinuz"
cp "$work/root/boot/config-$ver" "$out.tmp/config"
cp -a "$mods" "$out.tmp/modules/$ver"
echo "$ver" >"$out.tmp/version"
echo "$list_sum" >"$out.tmp/patterns.sha256"
rm -rf "$out"
mv "$out.tmp" "$out"
n=$(find "$out/modules/$ver" -name '*.ko' | wc -l)
echo "kernel: $pkg -> $out (vmlinuz $(stat -c %s "$out/vmlinuz") bytes, $n modules)"
