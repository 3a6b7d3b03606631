package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE: the kernel
// decompresses .ko.xz/.ko.zst itself (CONFIG_MODULE_DECOMPRESS).
const moduleInitCompressedFile = 4

// LoadModules loads the named modules from dir (dir/<name>.ko, or .ko.xz
// / .ko.zst) in the given order; the order is the dependency order, as
// there is no modprobe. A module already loaded or built into the kernel
// is skipped; ENODEV (the hardware is absent, e.g. crc32c-intel on a CPU
// without SSE4.2) is logged and skipped. Other failures are collected and
// returned after trying the rest.
func LoadModules(dir string, names []string, log *slog.Logger) error {
	var errs []error
	for _, name := range names {
		switch st, err := loadModule(dir, name); {
		case err != nil:
			errs = append(errs, fmt.Errorf("module %s: %w", name, err))
		default:
			log.Info("module", "name", name, "status", st)
		}
	}
	return errors.Join(errs...)
}

func sysName(name string) string { return strings.ReplaceAll(name, "-", "_") }

func loadModule(dir, name string) (string, error) {
	var path string
	flags := 0
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
		p := filepath.Join(dir, name+ext)
		if _, err := os.Stat(p); err == nil {
			path = p
			if ext != ".ko" {
				flags = moduleInitCompressedFile
			}
			break
		}
	}
	if path == "" {
		if _, err := os.Stat(filepath.Join("/sys/module", sysName(name))); err == nil {
			return "built in or already loaded", nil
		}
		return "", fmt.Errorf("no %s.ko in %s and not built into the kernel", name, dir)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	switch err := unix.FinitModule(int(f.Fd()), "", flags); {
	case err == nil:
		return "loaded", nil
	case errors.Is(err, unix.EEXIST):
		return "already loaded", nil
	case errors.Is(err, unix.ENODEV):
		return "no such device here (harmless)", nil
	default:
		return "", fmt.Errorf("finit_module %s: %w", path, err)
	}
}
