// Package layout is the relay machine's file system as the image builder
// (initramfs/ramfs) lays it out and the agent (init/) reads it: the one
// table of these paths. Paths are absolute in the running system; the
// image archive names them without the leading slash (InImage). It also
// holds the one loopback address plan of the machine: where each tor's
// MetricsPort listens, which the agent's torrc lines and its firewall
// both read.
package layout

import (
	"net/netip"
	"strings"
)

// What the image holds.
const (
	ConfigDir   = "/etc/patela"
	AgentConfig = ConfigDir + "/agent.json"    // init/agentcfg
	ServerCA    = ConfigDir + "/server-ca.pem" // the config server's CA, PEM
	ModulesDir  = "/lib/patela-modules"        // <name>.ko, loaded in the config's order
	Tor         = "/usr/bin/tor"               // Debian's tor, its libraries beside it
	Agent       = "/bin/init"                  // the agent; /init links here
	Shell       = "/bin/sh"                    // debug image only (u-root's gosh)
)

// What the agent makes at boot: tmpfs, so nothing of a relay survives a
// power cycle except what the TPM holds.
const (
	StateDir = "/var/lib/tor-instances" // relay N's DataDirectory is StateDir/N
	RunDir   = "/run/tor-instances"     // RunDir/N.torrc, RunDir/N/{control,notify}
	// RelayCgroups holds relay N's cgroup, RelayCgroups/N (cgroup2 is
	// mounted on /sys/fs/cgroup; the agent stays in the root cgroup).
	RelayCgroups = "/sys/fs/cgroup/relays"
)

// InImage is p as the image archive names it: relative to its root.
func InImage(p string) string { return strings.TrimPrefix(p, "/") }

// Each relay's tor serves its metrics on a loopback address of its own
// in MetricsNet, port MetricsPort, for the agent alone: tor's MetricsPort
// takes no unix socket (tor 0.4.9: "Port ... out of range"), so the
// firewall (init/netcfg) drops every connection to MetricsNet that is not
// the agent's, and tor's MetricsPortPolicy accepts MetricsClient only,
// the source the agent binds.
var (
	MetricsNet    = netip.MustParsePrefix("127.66.0.0/16")
	MetricsClient = netip.MustParseAddr("127.0.0.1")
)

// MetricsPort is the port of every relay's metrics listener.
const MetricsPort = 9035

// MetricsAddr is where the tor of the relay running as uid serves its
// metrics: the low 16 bits of the uid in MetricsNet. Two relays whose
// uids differ by a multiple of 65536 collide; the supervisor refuses the
// second.
func MetricsAddr(uid int) netip.AddrPort {
	a := MetricsNet.Addr().As4()
	a[2], a[3] = byte(uid>>8), byte(uid)
	return netip.AddrPortFrom(netip.AddrFrom4(a), MetricsPort)
}
