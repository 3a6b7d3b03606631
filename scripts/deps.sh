#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian bookworm machine
# that has only Go. Idempotent: packages already present are skipped.
set -euo pipefail
pkgs=(tor swtpm swtpm-tools tpm2-tools nftables dnsmasq-base iproute2 qemu-system-x86 cpio xz-utils zstd ca-certificates kmod gcc libc6-dev
    ovmf systemd-boot-efi binutils prometheus mtools dosfstools)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts tor and prometheus as system services on install; the
# tests run their own (promtool is what they use of prometheus).
for svc in tor prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done
