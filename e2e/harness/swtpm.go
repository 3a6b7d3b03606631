package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// SWTPM is one machine's TPM: a swtpm process whose state lives in Dir
// (the same Dir across boots is the same TPM) and whose control channel
// QEMU connects to.
type SWTPM struct {
	Dir    string
	Socket string

	cmd  *exec.Cmd
	done chan error
}

// StartSWTPM starts swtpm on state dir (created if needed) and waits for
// its socket. It must run before QEMU; --terminate ends it when QEMU
// disconnects, and Stop kills it by pid whatever happened.
func StartSWTPM(ctx context.Context, dir string) (*SWTPM, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "swtpm-sock")
	os.Remove(sock)
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--ctrl", "type=unixio,path="+sock, "--terminate",
		"--log", "level=1,file="+filepath.Join(dir, "swtpm.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: starting swtpm: %w", err)
	}
	t := &SWTPM{Dir: dir, Socket: sock, cmd: cmd, done: make(chan error, 1)}
	go func() { t.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return t, nil
		}
		select {
		case err := <-t.done:
			return nil, fmt.Errorf("harness: swtpm exited: %v (log %s)", err, filepath.Join(dir, "swtpm.log"))
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Stop()
			return nil, fmt.Errorf("harness: swtpm socket %s did not appear", sock)
		}
	}
}

// QEMUArgs attach this TPM as a TIS device.
func (t *SWTPM) QEMUArgs() []string {
	return []string{
		"-chardev", "socket,id=chrtpm,path=" + t.Socket,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0",
	}
}

// Stop waits briefly for swtpm to end by itself (it saves its state when
// QEMU disconnects), then kills it.
func (t *SWTPM) Stop() {
	if t.cmd == nil {
		return
	}
	select {
	case <-t.done:
	case <-time.After(2 * time.Second):
		terminate(t.cmd.Process.Pid, t.done, 5*time.Second)
	}
	t.cmd = nil
}
