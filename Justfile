# patela: diskless Tor relays with TPM-held identities.
set shell := ["bash", "-euo", "pipefail", "-c"]

export CGO_ENABLED := "1"
go := "go"
bin := "bin"
# The server is the only cgo binary (SQLite); these tags keep it static.
srv_tags := "sqlite_omit_load_extension,osusergo,netgo"

default: build

# Install the Debian packages and tools the tests and the demo need (root).
deps:
    ./scripts/deps.sh

# Build every binary into ./bin.
build:
    mkdir -p {{bin}}
    CGO_ENABLED=0 {{go}} build -trimpath -o {{bin}}/init ./init
    {{go}} build -trimpath -tags '{{srv_tags}}' -o {{bin}}/configsrv ./configsrv
    CGO_ENABLED=0 {{go}} build -trimpath -o {{bin}}/stimage ./stimage
    CGO_ENABLED=0 {{go}} build -trimpath -o {{bin}}/initramfs ./initramfs

# gofmt, go vet and go mod tidy; fails on any finding.
lint:
    #!/usr/bin/env bash
    set -euo pipefail
    bad=$(gofmt -l $(git ls-files '*.go' | grep -v '^vendor/') 2>&1 || true)
    if [ -n "$bad" ]; then echo "gofmt needed:"; echo "$bad"; exit 1; fi
    {{go}} vet -tags '{{srv_tags}}' ./...
    {{go}} mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# The test command: lint, then every test incl. the QEMU e2e suite (root: namespaces, QEMU).
test: deps lint kernel
    {{go}} test -tags '{{srv_tags}}' -count=1 -timeout 80m ./...

# Regenerate generated code (tor's option table) from the installed tor.
generate:
    {{go}} generate ./...

# Fetch Debian bookworm's kernel and the modules the images need into build/kernel (cached).
kernel:
    ./scripts/kernel.sh

# Build the initramfs for a hardware profile (initramfs/profiles: protectli, vm) or an agent.json,
# trusting the server CA, for the config server at server_url (default: the agent.json's); -debug adds a shell.
image profile ca server_url="" out="build/initramfs.cpio.xz" *flags: kernel
    #!/usr/bin/env bash
    set -euo pipefail
    cfg='{{profile}}'
    [ -f "$cfg" ] || cfg='initramfs/profiles/{{profile}}/agent.json'
    [ -f "$cfg" ] || { echo "image: {{profile}} is neither a file nor a profile in initramfs/profiles" >&2; exit 2; }
    CGO_ENABLED=0 {{go}} run ./initramfs -agent-config "$cfg" -ca '{{ca}}' -server-url '{{server_url}}' -o '{{out}}' {{flags}}

# Create build/patela-os.{zip,json} from build/kernel + the initramfs and sign it (README). url is the
# zip's absolute https URL (stboot v0.2.2 refuses a relative one); the profile (or a file) gives the cmdline.
ospkg key cert url profile="protectli" initramfs="build/initramfs.cpio.xz": kernel
    #!/usr/bin/env bash
    set -euo pipefail
    cl='{{profile}}'
    [ -f "$cl" ] || cl='initramfs/profiles/{{profile}}/cmdline'
    [ -f "$cl" ] || { echo "ospkg: {{profile}} is neither a file nor a profile in initramfs/profiles" >&2; exit 2; }
    CGO_ENABLED=0 {{go}} build -trimpath -o {{bin}}/stimage ./stimage
    {{bin}}/stimage ospkg create --out build/patela-os --label "patela relay machine" --url '{{url}}' \
        --kernel build/kernel/vmlinuz --initramfs '{{initramfs}}' --cmdline "$(cat "$cl")"
    {{bin}}/stimage ospkg sign --key '{{key}}' --cert '{{cert}}' --ospkg build/patela-os

# Build a Unified Kernel Image (systemd-stub + build/kernel + the initramfs, reproducible) and print its PCRs.
uki version="dev" initramfs="build/initramfs.cpio.xz" out="build/patela.efi" cmdline="console=tty0 console=ttyS0,115200 panic=10 quiet": kernel
    CGO_ENABLED=0 {{go}} build -trimpath -o {{bin}}/stimage ./stimage
    printf 'ID=patela\nNAME="patela relay machine"\nVERSION_ID=%s\n' '{{version}}' > build/os-release
    {{bin}}/stimage uki create --kernel build/kernel/vmlinuz --initramfs '{{initramfs}}' --cmdline '{{cmdline}}' \
        --os-release build/os-release --out '{{out}}'
    {{bin}}/stimage uki pcrs '{{out}}'

# The QEMU + swtpm end-to-end suite alone (a few minutes).
e2e: kernel
    {{go}} test -tags '{{srv_tags}}' -count=1 -timeout 30m -v ./e2e/

# Boot a relay machine from an approved UKI (QEMU, OVMF, swtpm) against a fresh config server, reboot it, seize it (Ctrl-C safe).
demo: deps kernel
    {{go}} run ./e2e/cmd/demo

# Benchmark the config server over HTTPS on loopback with 10,000 nodes x 4 relays:
# attestation handshakes/s and GET /v1/node/config fetches/s, with p99 latency.
bench-configsrv:
    {{go}} test -tags '{{srv_tags}}' -run '^$' -bench . -benchtime 5s -count 1 ./configsrv/httpapi/

# Measure everything into bench/REPORT.md + report.json (root; ~4 min on 2 cores; args: -skip qemu, -fleet N, ...).
bench *args:
    {{go}} run -tags '{{srv_tags}}' ./bench/cmd/benchreport -out bench {{args}}

# Run every fuzz target in the tree for fuzztime each; fails if any fails.
fuzz fuzztime="20s":
    #!/usr/bin/env bash
    set -euo pipefail
    list=$({{go}} test -tags '{{srv_tags}}' -list '^Fuzz' ./...)
    targets=$(awk '/^Fuzz/ {t[++n] = $1; next} /^ok / {for (i = 1; i <= n; i++) print $2, t[i]; n = 0}' <<<"$list")
    if [ -z "$targets" ]; then echo "no fuzz targets found"; exit 1; fi
    failed=()
    while read -r pkg target; do
        echo "== $target ($pkg) for {{fuzztime}}"
        {{go}} test -tags '{{srv_tags}}' -run '^$' -fuzz "^${target}\$" -fuzztime '{{fuzztime}}' "$pkg" </dev/null \
            || failed+=("$target ($pkg)")
    done <<<"$targets"
    echo "$(wc -l <<<"$targets") fuzz targets, {{fuzztime}} each"
    if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
