package debugshell

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a pseudo-terminal master and the path of its slave, which
// stands in for /dev/console.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave := fmt.Sprintf("/dev/pts/%d", n)
	// Keep the slave open so the master does not read EIO while the
	// shell is being restarted.
	s, err := os.OpenFile(slave, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, slave
}

// expect reads the terminal until a line contains want.
func expect(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	var seen strings.Builder
	for {
		line, err := r.ReadString('\n')
		seen.WriteString(line)
		if strings.Contains(line, want) {
			return
		}
		if err != nil {
			t.Fatalf("no %q on the terminal (%v); saw:\n%s", want, err, seen.String())
		}
	}
}

// TestShellOnConsole runs the host's /bin/sh on a pty as the console: it
// gets the terminal as controlling tty, answers commands, is restarted
// after it exits and is killed when the context ends.
func TestShellOnConsole(t *testing.T) {
	m, console := openPTY(t)
	m.SetReadDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(m)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, slog.New(slog.DiscardHandler), "/bin/sh", console) }()

	// $((6*7)) proves a shell evaluated it, not the terminal's echo.
	fmt.Fprintf(m, "tty; echo first-$((6*7)); exit\n")
	expect(t, r, console)
	expect(t, r, "first-42")
	fmt.Fprintf(m, "echo second-$((7*7))\n")
	expect(t, r, "second-49")

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestNoShell(t *testing.T) {
	err := Run(context.Background(), slog.New(slog.DiscardHandler), "/nonexistent/sh", "/dev/null")
	if !errors.Is(err, ErrNoShell) {
		t.Fatalf("got %v, want ErrNoShell", err)
	}
}
