package procfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRealProc(t *testing.T) {
	rss, err := RSS("/proc", "self")
	if err != nil || rss < 1<<20 {
		t.Errorf("RSS(self) = %d, %v", rss, err)
	}
	avail, total, err := Memory("/proc")
	if err != nil || avail == 0 || avail > total {
		t.Errorf("Memory = %d of %d, %v", avail, total, err)
	}
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "meminfo"), []byte("MemTotal:  100 kB\n"), 0o644)
	if _, _, err := Memory(dir); err == nil || !strings.Contains(err.Error(), "no MemAvailable") {
		t.Errorf("meminfo without MemAvailable: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "meminfo"), []byte("MemTotal:  lots kB\nMemAvailable: 1 kB\n"), 0o644)
	if _, _, err := Memory(dir); err == nil {
		t.Error("a non-number accepted")
	}
	os.WriteFile(filepath.Join(dir, "meminfo"), []byte("MemTotal:  100 kB\nMemAvailable:  40 kB\n"), 0o644)
	if a, tot, err := Memory(dir); err != nil || a != 40<<10 || tot != 100<<10 {
		t.Errorf("Memory = %d %d %v", a, tot, err)
	}
	if _, err := RSS(dir, "1"); err == nil {
		t.Error("RSS of a missing process")
	}
}
