package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/init/reaper"
)

// ConnectAs reports whether a TCP connection to a, made by a process
// running as uid (and gid uid) inside ns, completes within 2 s: bash's
// /dev/tcp under timeout(1), as any local program would connect.
func (ns *NS) ConnectAs(t testing.TB, uid int, a netip.AddrPort) bool {
	t.Helper()
	script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", a.Addr(), a.Port())
	cmd := exec.Command("timeout", "2", "/bin/bash", "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	var err error
	var out []byte
	ns.Do(t, func() error {
		out, err = reaper.CombinedOutput(cmd)
		return nil
	})
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 124) {
		t.Fatalf("connecting as uid %d to %s: %v: %s", uid, a, err, out)
	}
	return err == nil
}

// SYN answers.
const (
	NoAnswer = ""
	SYNACK   = "syn-ack" // a listener took it
	RST      = "rst"     // refused
)

// SYN crafts one TCP SYN from src to dst and puts it on the wire of ns's
// interface iface addressed to the MAC dstMAC, with no socket and no
// routing on the sending side: what a host on that link can send,
// whatever its own routes say (a destination in 127/8 included). It
// returns what came back from dst to src within wait: SYNACK, RST or
// NoAnswer. IPv4 only.
func (ns *NS) SYN(t testing.TB, iface string, dstMAC net.HardwareAddr, src, dst netip.AddrPort, wait time.Duration) string {
	t.Helper()
	l, err := ns.NL.LinkByName(iface)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	ns.Do(t, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_IP)))
		return err
	})
	defer unix.Close(fd)
	ll := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.Attrs().Index}
	if err := unix.Bind(fd, ll); err != nil {
		t.Fatal(err)
	}
	frame := append(append(append([]byte{}, dstMAC...), l.Attrs().HardwareAddr...), 0x08, 0x00)
	frame = append(frame, synPacket(src, dst)...)
	if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6,
		Addr: [8]byte{dstMAC[0], dstMAC[1], dstMAC[2], dstMAC[3], dstMAC[4], dstMAC[5]}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	buf := make([]byte, 2048)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return NoAnswer
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout or EINTR: the deadline decides
		}
		// SOCK_RAW: the frame with its Ethernet header.
		if n < 14 || buf[12] != 0x08 || buf[13] != 0x00 {
			continue
		}
		if a := answer(buf[14:n], src, dst); a != NoAnswer {
			return a
		}
	}
}

// answer is what the IPv4 packet p says, if it is TCP from dst to src.
func answer(p []byte, src, dst netip.AddrPort) string {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
		return NoAnswer
	}
	ihl := int(p[0]&0xf) * 4
	if len(p) < ihl+14 {
		return NoAnswer
	}
	from, _ := netip.AddrFromSlice(p[12:16])
	to, _ := netip.AddrFromSlice(p[16:20])
	tcp := p[ihl:]
	sport, dport := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
	if from != dst.Addr() || to != src.Addr() || sport != dst.Port() || dport != src.Port() {
		return NoAnswer
	}
	switch flags := tcp[13]; {
	case flags&0x04 != 0:
		return RST
	case flags&0x12 == 0x12:
		return SYNACK
	}
	return NoAnswer
}

// synPacket is an IPv4 packet holding a TCP SYN, checksums computed.
func synPacket(src, dst netip.AddrPort) []byte {
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 0x70617465) // sequence number
	tcp[12] = 5 << 4                                // data offset: 5 words
	tcp[13] = 0x02                                  // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)     // window
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, unix.IPPROTO_TCP, 0, byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(tcp)))
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return append(ip, tcp...)
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
