// Package layout is the relay machine's file system as the image builder
// (initramfs/ramfs) lays it out and the agent (init/) reads it: the one
// table of these paths. Paths are absolute in the running system; the
// image archive names them without the leading slash (InImage).
package layout

import "strings"

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
)

// InImage is p as the image archive names it: relative to its root.
func InImage(p string) string { return strings.TrimPrefix(p, "/") }
