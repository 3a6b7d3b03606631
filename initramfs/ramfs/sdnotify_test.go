package ramfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/u-root/mkuimage/cpio"
	"golang.org/x/sys/unix"

	"patela/internal/layout"
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
	data, torrc := filepath.Join(dir, "data"), filepath.Join(dir, "torrc")
	os.Mkdir(data, 0o700)
	if err := os.WriteFile(torrc, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "notify")
	got, stderr := notifications(t, sock, func(cmd *exec.Cmd) {
		cmd.Path = tor
		cmd.Args = []string{tor, "--defaults-torrc", "/dev/null", "-f", torrc, "--DataDirectory", data,
			"--DisableNetwork", "1", "--SocksPort", "0", "--Log", "err stderr"}
		cmd.Env = []string{"NOTIFY_SOCKET=" + sock, "LD_LIBRARY_PATH=" + dir}
	})
	if len(got) == 0 || !strings.HasPrefix(got[0], "MAINPID=") || !strings.Contains(got[len(got)-1], "READY=1") {
		t.Errorf("notifications %q, want MAINPID= then READY=1\n%s", got, stderr)
	}
}

// torInImage unpacks the image's tor and libraries into a directory and
// runs that tor there (chroot): every library it needs is in the image,
// every link resolves, and the image's libsystemd delivers READY=1.
func torInImage(t *testing.T, rs map[string]cpio.Record) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.SkipOrFail(t, "running the image's tor in a chroot needs root")
		return
	}
	root := t.TempDir()
	for name, r := range rs {
		if !strings.HasPrefix(name, "lib") && name != TorPath && !strings.HasPrefix(name, "usr/") {
			continue
		}
		p := filepath.Join(root, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		switch r.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			os.MkdirAll(p, 0o755)
		case cpio.S_IFLNK:
			if err := os.Symlink(content(r), p); err != nil {
				t.Fatal(err)
			}
		case cpio.S_IFREG:
			if err := os.WriteFile(p, []byte(content(r)), os.FileMode(r.Mode&0o777)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, r := range rs {
		if r.Mode&cpio.S_IFMT == cpio.S_IFLNK && strings.HasPrefix(name, "lib") {
			if _, err := os.Stat(filepath.Join(root, name)); err != nil {
				t.Errorf("image link %s -> %s does not resolve", name, content(r))
			}
		}
	}
	os.MkdirAll(filepath.Join(root, "tmp", "data"), 0o700)
	os.WriteFile(filepath.Join(root, "tmp", "torrc"), nil, 0o600)
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	got, stderr := notifications(t, filepath.Join(root, "tmp", "notify"), func(cmd *exec.Cmd) {
		cmd.Path = layout.Tor
		cmd.Args = []string{layout.Tor, "--defaults-torrc", "/tmp/torrc", "-f", "/tmp/torrc",
			"--DataDirectory", "/tmp/data", "--DisableNetwork", "1", "--SocksPort", "0", "--Log", "err stderr"}
		cmd.Env = []string{"NOTIFY_SOCKET=/tmp/notify"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	})
	if len(got) == 0 || !strings.Contains(got[len(got)-1], "READY=1") {
		t.Errorf("the image's tor in a chroot sent %q, want READY=1\n%s", got, stderr)
	}
}

// notifications binds a notify socket at sock, starts the tor that setup
// describes, and returns what it sent up to READY=1 (each datagram from
// tor's own pid, by SO_PASSCRED), and tor's stderr.
func notifications(t *testing.T, sock string, setup func(*exec.Cmd)) ([]string, string) {
	t.Helper()
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
	cmd := &exec.Cmd{}
	setup(cmd)
	stderr := &testutil.SyncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	var got []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return got, fmt.Sprintf("%v\n%s", err, stderr)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			t.Fatal("no credentials on the datagram")
		}
		if cred, err := unix.ParseUnixCredentials(&msgs[0]); err != nil || int(cred.Pid) != cmd.Process.Pid {
			t.Fatalf("datagram from pid %v, tor is %d", cred, cmd.Process.Pid)
		}
		got = append(got, strings.TrimSpace(string(buf[:n])))
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	return got, stderr.String()
}
