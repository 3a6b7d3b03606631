package tor

import (
	"bytes"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// notifySocket is the NOTIFY_SOCKET we hand tor: Debian's tor is built
// with libsystemd and reports READY=1, RELOADING=1 and STOPPING=1 there,
// with or without systemd. SO_PASSCRED tags each datagram with the
// sender's pid, so a message from a process we no longer run is ignored.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func listenNotify(path string, uid, gid int) (*notifySocket, error) {
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if cerr != nil {
			err = cerr
		}
	}
	if err == nil {
		// tor, running as the relay user, must be able to send to it.
		err = os.Chown(path, uid, gid)
	}
	if err != nil {
		conn.Close()
		os.Remove(path)
		return nil, err
	}
	return &notifySocket{path: path, conn: conn}, nil
}

// read calls fn with the sender pid and each KEY=VALUE of every message
// until the socket is closed.
func (n *notifySocket) read(fn func(pid int, key, value string)) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		nb, noob, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		pid := 0
		if msgs, err := unix.ParseSocketControlMessage(oob[:noob]); err == nil {
			for i := range msgs {
				if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
					pid = int(cred.Pid)
				}
			}
		}
		for _, line := range bytes.Split(buf[:nb], []byte("\n")) {
			if k, v, ok := bytes.Cut(line, []byte("=")); ok {
				fn(pid, string(k), string(v))
			}
		}
	}
}

func (n *notifySocket) close() {
	n.conn.Close()
	os.Remove(n.path)
}
