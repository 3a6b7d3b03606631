// Command initramfs builds patela's initramfs: the agent as /init, Debian's
// tor and its libraries, the kernel modules the agent loads (with their
// dependencies, in load order), the agent config and the server CA, as a
// reproducible compressed cpio (xz). It prints the size of each part.
//
//	initramfs -agent-config initramfs/profiles/vm/agent.json -server-url https://10.0.2.100 -ca ca.pem -o build/initramfs.cpio.xz
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"patela/initramfs/ramfs"
)

func main() {
	var o ramfs.Options
	var modules string
	flag.StringVar(&o.AgentConfig, "agent-config", "", "agent.json to embed (required); its modules field is rewritten with the resolved load order")
	flag.StringVar(&o.CA, "ca", "", "PEM of the config server's CA (required)")
	flag.StringVar(&o.KernelModulesDir, "kernel-modules", "", "kernel module tree /lib/modules/<version>; default: the one tree under build/kernel/modules")
	flag.StringVar(&o.ServerURL, "server-url", "", "the config server's URL, replacing the agent config's server_url (hardware profiles carry none)")
	flag.StringVar(&o.PolicyKey, "policy-key", "", "release policy public key (PEM, stimage keygen policy-key): the agent seals its vault to it")
	flag.BoolVar(&o.Unmeasured, "unmeasured", false, "lab image: the agent seals its vault unmeasured (any OS on the machine can unseal it)")
	flag.StringVar(&modules, "modules", "", "comma-separated modules to load, overriding the agent config's list")
	flag.StringVar(&o.AgentPkg, "agent", "patela/init", "Go package of the agent")
	flag.StringVar(&o.Tor, "tor", "/usr/bin/tor", "tor binary to include with its libraries")
	flag.BoolVar(&o.Debug, "debug", false, "add u-root core commands and /bin/sh (started by the agent only with patela.debug=shell)")
	flag.StringVar(&o.Compression, "compression", ramfs.XZ, "xz (smallest; needs xz-utils) or gzip")
	flag.StringVar(&o.Out, "o", "build/initramfs.cpio.xz", "output file")
	flag.Parse()
	if flag.NArg() != 0 {
		fatal(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	if modules != "" {
		o.Modules = strings.Split(modules, ",")
	}
	if o.KernelModulesDir == "" {
		dirs, _ := filepath.Glob("build/kernel/modules/*")
		if len(dirs) != 1 {
			fatal(fmt.Errorf("no -kernel-modules given and build/kernel/modules holds %d trees (run `just kernel`)", len(dirs)))
		}
		o.KernelModulesDir = dirs[0]
	}
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := ramfs.Build(ctx, o)
	if err != nil {
		fatal(err)
	}
	flavour := "production"
	if o.Debug {
		flavour = "debug"
	}
	fmt.Printf("%s (%s): modules in load order: %s\n%s", o.Out, flavour, strings.Join(rep.Modules, " "), rep)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "initramfs:", err)
	os.Exit(1)
}
