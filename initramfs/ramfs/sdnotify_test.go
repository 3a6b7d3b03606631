package ramfs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/internal/testutil"
)

// Debian's tor, linked against the image's libsystemd, reports MAINPID
// and READY=1 on NOTIFY_SOCKET from its own pid, as the supervisor needs.
func TestSDNotifyWithTor(t *testing.T) {
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	testutil.RequireTool(t, "gcc", "apt-get install gcc")
	dir := t.TempDir()
	lib, err := buildSDNotify(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := buildSDNotify(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(lib)
	b, _ := os.ReadFile(again)
	if string(a) != string(b) {
		t.Error("two builds of the library differ")
	}
	sock := filepath.Join(dir, "notify")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 30})
	data, torrc := filepath.Join(dir, "data"), filepath.Join(dir, "torrc")
	os.Mkdir(data, 0o700)
	if err := os.WriteFile(torrc, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tor, "--defaults-torrc", "/dev/null", "-f", torrc, "--DataDirectory", data,
		"--DisableNetwork", "1", "--SocksPort", "0", "--Log", "err stderr")
	cmd.Env = []string{"NOTIFY_SOCKET=" + sock, "LD_LIBRARY_PATH=" + dir}
	if out, err := exec.Command("ldd", tor).Output(); err == nil && !strings.Contains(string(out), "libsystemd") {
		testutil.SkipOrFail(t, "this tor does not link libsystemd: the image needs no replacement")
	}
	cmd.Stderr = &testutil.SyncBuffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	deadline := time.Now().Add(30 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("no READY=1 from tor (got %q): %v\n%s", got, err, cmd.Stderr)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			t.Fatal("no credentials on the datagram")
		}
		cred, err := unix.ParseUnixCredentials(&msgs[0])
		if err != nil || int(cred.Pid) != cmd.Process.Pid {
			t.Fatalf("datagram from pid %v, tor is %d", cred, cmd.Process.Pid)
		}
		got = append(got, strings.TrimSpace(string(buf[:n])))
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	if len(got) == 0 || !strings.HasPrefix(got[0], "MAINPID=") || !strings.Contains(got[len(got)-1], "READY=1") {
		t.Errorf("notifications %q, want MAINPID= then READY=1", got)
	}
}
