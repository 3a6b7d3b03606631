// Package procfs reads the few /proc figures the agent reports in its
// heartbeat: a process's resident set and the machine's memory. Each
// function takes the proc root ("/proc"; tests give another).
package procfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RSS is the resident set (VmRSS) of process pid ("self": the caller) in
// bytes.
func RSS(proc, pid string) (uint64, error) {
	f, err := fields(filepath.Join(proc, pid, "status"), "VmRSS")
	return f["VmRSS"], err
}

// Memory is the machine's MemAvailable and MemTotal in bytes.
func Memory(proc string) (available, total uint64, err error) {
	f, err := fields(filepath.Join(proc, "meminfo"), "MemAvailable", "MemTotal")
	return f["MemAvailable"], f["MemTotal"], err
}

// fields reads the "Key:   N kB" lines named keys of a /proc file, in
// bytes; a key that is missing is an error.
func fields(path string, keys ...string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, k, err)
		}
		out[k] = n << 10
	}
	for _, k := range keys {
		if _, ok := out[k]; !ok {
			return out, fmt.Errorf("%s: no %s", path, k)
		}
	}
	return out, nil
}
