package reaper

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An owned child's status reaches its own Wait even while the reaper runs
// constantly; an unowned zombie is collected.
func TestOwnedStatusNotStolen(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Loop(ctx, nil)
	for i := 0; i < 20; i++ {
		cmd := exec.Command("sh", "-c", "exit 3")
		if err := Start(cmd); err != nil {
			t.Fatal(err)
		}
		for j := 0; j < 5; j++ {
			Reap() // hammer: must never take the owned child's status
		}
		err := Wait(cmd)
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 3 {
			t.Fatalf("run %d: want exit status 3, got %v", i, err)
		}
	}
	if n := Owned(); n != 0 {
		t.Fatalf("%d children still recorded", n)
	}
}

func TestReapsUnowned(t *testing.T) {
	// Start a child outside the package: nobody waits for it, so it is
	// exactly the orphan PID 1 inherits.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range Reap() {
			if p == pid {
				if err := unix.Kill(pid, 0); err == nil {
					t.Fatalf("pid %d still exists after reaping", pid)
				}
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("zombie %d was not reaped", pid)
}
