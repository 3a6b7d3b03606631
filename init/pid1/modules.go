package pid1

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"patela/internal/layout"
)

// moduleInitCompressedFile is MODULE_INIT_COMPRESSED_FILE: the kernel
// decompresses .ko.xz/.ko.zst itself (CONFIG_MODULE_DECOMPRESS).
const moduleInitCompressedFile = 4

// LoadModules loads the named modules from dir (dir/<name>.ko, or .ko.xz
// / .ko.zst). names is in dependency order, as there is no modprobe; with
// dir/modules.needs (layout.ModuleNeeds, written by the image builder)
// each module waits only for the modules it needs, so independent chains
// (the NIC drivers, nftables) load at once, at most one per CPU; without
// it (an older image) or if it does not fit names, one after the other.
// A module already loaded or built into the kernel is skipped; ENODEV
// (the hardware is absent, e.g. crc32c-intel on a CPU without SSE4.2) is
// logged and skipped. Other failures are collected and returned after
// trying the rest.
func LoadModules(dir string, names []string, log *slog.Logger) error {
	needs, err := readNeeds(filepath.Join(dir, layout.ModuleNeeds), names)
	if err != nil {
		log.Warn("modules: loading one after the other", "err", err)
	}
	errs := loadAll(names, needs, runtime.NumCPU(), func(name string) error {
		st, err := loadModule(dir, name)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		log.Info("module", "name", name, "status", st)
		return nil
	})
	return errors.Join(errs...)
}

// readNeeds reads a needs file into, for each of names, the indexes of
// the earlier names it waits for. nil (load in order) if the file is
// absent; an error (and nil) if it names a module not in names, or one
// not before the module that needs it: following it could deadlock or
// load a module before its dependency.
func readNeeds(path string, names []string) ([][]int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	index := make(map[string]int, len(names))
	for i, n := range names {
		index[n] = i
	}
	needs := make([][]int, len(names))
	seen := make([]bool, len(names))
	for n, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		name, rest, ok := strings.Cut(line, ":")
		i, known := index[strings.TrimSpace(name)]
		if !ok || !known || seen[i] {
			return nil, fmt.Errorf("%s line %d: %q: not \"module: needs\" for a module of the list, once", path, n+1, line)
		}
		seen[i] = true
		for _, d := range strings.Fields(rest) {
			j, known := index[d]
			if !known || j >= i {
				return nil, fmt.Errorf("%s line %d: %s needs %s, which is not loaded before it", path, n+1, names[i], d)
			}
			needs[i] = append(needs[i], j)
		}
	}
	for i, ok := range seen {
		if !ok {
			return nil, fmt.Errorf("%s: no line for module %s", path, names[i])
		}
	}
	return needs, nil
}

// loadAll runs load for every name, each after the loads of needs[i]
// (all earlier names, in order, if needs is nil) returned, at most limit
// at a time, and returns the errors in names' order. A failed need does
// not stop the modules that need it from being tried, as in order.
func loadAll(names []string, needs [][]int, limit int, load func(string) error) []error {
	done := make([]chan struct{}, len(names))
	for i := range done {
		done[i] = make(chan struct{})
	}
	errs := make([]error, len(names))
	slots := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i, name := range names {
		wait := []int{}
		switch {
		case needs != nil:
			wait = needs[i]
		case i > 0:
			wait = []int{i - 1}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[i])
			for _, j := range wait {
				<-done[j] // j < i: never a module that waits for this one
			}
			slots <- struct{}{}
			defer func() { <-slots }()
			errs[i] = load(name)
		}()
	}
	wg.Wait()
	return errs
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
