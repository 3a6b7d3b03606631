package ramfs

import (
	"context"
	"debug/elf"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"

	"github.com/u-root/mkuimage/ldd"
)

// libsystemd is the soname tor links for sd_notify. The image carries
// sdnotify/sdnotify.c built as this library instead of systemd's, which
// would bring libgcrypt, libgpg-error and liblz4 along (2.5 MB, ~0.9 MB
// compressed) for three small calls.
const libsystemd = "libsystemd.so.0"

// LibDir is where the image keeps tor's libraries (Debian's multiarch
// directory, where ld.so looks).
const LibDir = "lib/x86_64-linux-gnu"

var (
	//go:embed sdnotify/sdnotify.c
	sdnotifySrc []byte
	//go:embed sdnotify/libsystemd.map
	sdnotifyMap []byte
)

// buildSDNotify compiles the libsystemd replacement into dir and returns
// its path. The flags make it reproducible: no build id, no debug info,
// no paths.
func buildSDNotify(ctx context.Context, dir string) (string, error) {
	src, vers, out := filepath.Join(dir, "sdnotify.c"), filepath.Join(dir, "libsystemd.map"), filepath.Join(dir, libsystemd)
	if err := os.WriteFile(src, sdnotifySrc, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(vers, sdnotifyMap, 0o644); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "gcc", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
		"-ffile-prefix-map="+dir+"=.", "-Wl,--version-script="+vers, "-Wl,-soname,"+libsystemd,
		"-Wl,--build-id=none", "-s", "-o", out, src)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s (gcc): %v\n%s", libsystemd, err, b)
	}
	return out, nil
}

// needed returns an ELF file's DT_NEEDED sonames.
func needed(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ImportedLibraries()
}

// withoutSystemd drops libsystemd and the libraries only it needs from
// libs, the ldd closure of tor and extra (the dlopen'd NSS module): what
// is left is the closure of tor's other direct dependencies and of extra,
// each soname with the file its link names (the image keeps links).
func withoutSystemd(tor string, libs []string, extra ...string) ([]string, error) {
	direct, err := needed(tor)
	if err != nil {
		return nil, fmt.Errorf("tor: %w", err)
	}
	if !slices.Contains(direct, libsystemd) {
		return libs, nil // a tor built without libsystemd
	}
	roots := slices.Clone(extra)
	for _, l := range libs {
		if b := filepath.Base(l); b != libsystemd && slices.Contains(direct, b) {
			roots = append(roots, l)
		}
	}
	deps, err := ldd.FList(roots...)
	if err != nil {
		return nil, fmt.Errorf("tor libraries: %w", err)
	}
	keep := map[string]bool{}
	for _, l := range append(deps, roots...) {
		// Follow links by name in their own directory, as ldd lists
		// them (/lib/x86_64-linux-gnu/libz.so.1 -> libz.so.1.2.13), not
		// through /lib -> usr/lib.
		for n := 0; n < 8 && !keep[l]; n++ {
			keep[l] = true
			t, err := os.Readlink(l)
			if err != nil {
				break
			}
			if !filepath.IsAbs(t) {
				t = filepath.Join(filepath.Dir(l), t)
			}
			l = t
		}
	}
	var out []string
	for _, l := range libs {
		if keep[l] {
			out = append(out, l)
		}
	}
	return out, nil
}
