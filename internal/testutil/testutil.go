// Package testutil holds the small helpers the tests of several packages
// share: a log sink safe for concurrent writers, and the "this test needs
// tool X" check that skips on a developer machine and fails under CI.
// It imports only the standard library, so any package (the CGO-free
// agent's included) may use it from its tests.
package testutil

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// SkipOrFail skips the test with why, except under CI (CI set), where
// what the test needs must be there and its absence fails the test.
func SkipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// RequireTool returns the path of the program name, found on PATH. Where
// it is missing the test is skipped (failed under CI) with a message
// naming the program and how to get it (install, e.g. "apt-get install
// tor").
func RequireTool(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, name+" not installed ("+install+"): "+err.Error())
	}
	return p
}

// SyncBuffer is a bytes.Buffer that one goroutine may write (a logger, a
// child process's output) while another reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// syncWriter serialises writes from several goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// SyncWriter makes w safe for concurrent writers.
func SyncWriter(w io.Writer) io.Writer { return &syncWriter{w: w} }

// VmRSS is this process's resident set in KiB (VmRSS in
// /proc/self/status), for benchmarks that report memory; child processes
// are not counted.
func VmRSS(tb testing.TB) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return n
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}
