package torrc

import (
	"net/netip"
	"strings"

	"patela/internal/layout"
)

// Owner says who may write an option into a relay's torrc. The owners
// table below is the one list of it: the server's import check, the
// server's per-relay lines, the agent's filter and its own lines all read
// it.
//
// It is an allowlist. The config server is not trusted with the node: an
// option reaches tor only if it is listed here as the administrator's or
// the server's, and every option tor knows that is not listed is
// forbidden. Adding an admin option is a security review: it must name no
// file, directory, program or socket, open no listener, and leave the
// relay's identity and keys alone, whatever its value.
type Owner uint8

const (
	// OwnerAdmin options are the administrator's, at any cascade level.
	OwnerAdmin Owner = iota + 1
	// OwnerServer options are written by the config server for each relay
	// (its identity and addresses); the agent keeps them.
	OwnerServer
	// OwnerAgent options are written by the agent on the node (paths,
	// process and control plumbing, confinement, keys); whatever the
	// server sent for them is dropped.
	OwnerAgent
	// OwnerForbidden options never reach tor: nobody may set them.
	OwnerForbidden
)

func (o Owner) String() string {
	switch o {
	case OwnerAdmin:
		return "admin"
	case OwnerServer:
		return "server"
	case OwnerAgent:
		return "agent"
	case OwnerForbidden:
		return "forbidden"
	}
	return "unknown"
}

// owners lists every option that reaches tor, and who writes it. Options
// absent from it are forbidden (OwnerOf).
var owners = map[string]Owner{
	"Nickname":            OwnerServer,
	"ORPort":              OwnerServer,
	"Address":             OwnerServer,
	"OutboundBindAddress": OwnerServer,
	// The family's Happy Families id, from the family key the server holds
	// (a FamilyId without its key in the relay's key directory makes tor
	// exit; the agent writes the key the server sends beside it).
	"FamilyId": OwnerServer,

	"DataDirectory":        OwnerAgent,
	"ControlSocket":        OwnerAgent,
	"CookieAuthentication": OwnerAgent,
	"RunAsDaemon":          OwnerAgent,
	"SocksPort":            OwnerAgent, // always 0: a relay is no client
	"NoExec":               OwnerAgent,
	"Sandbox":              OwnerAgent,
	"OfflineMasterKey":     OwnerAgent, // the master identity stays in the vault
	"SigningKeyLifetime":   OwnerAgent, // the agent issues the signing key
	"MetricsPort":          OwnerAgent, // on loopback, for the agent alone (layout.MetricsAddr)
	"MetricsPortPolicy":    OwnerAgent,

	// The administrator's: what an operator legitimately sets on an exit
	// relay. Exit policy and exit behaviour.
	"ExitRelay": OwnerAdmin, "ExitPolicy": OwnerAdmin, "ReducedExitPolicy": OwnerAdmin,
	"ExitPolicyRejectPrivate": OwnerAdmin, "ExitPolicyRejectLocalInterfaces": OwnerAdmin,
	"ReevaluateExitPolicy": OwnerAdmin, "IPv6Exit": OwnerAdmin, "RefuseUnknownExits": OwnerAdmin,
	"ServerDNSAllowBrokenConfig": OwnerAdmin, "ServerDNSAllowNonRFC953Hostnames": OwnerAdmin,
	"ServerDNSDetectHijacking": OwnerAdmin, "ServerDNSRandomizeCase": OwnerAdmin,
	"ServerDNSSearchDomains": OwnerAdmin, "ServerDNSTestAddresses": OwnerAdmin,
	// Bandwidth and accounting.
	"BandwidthRate": OwnerAdmin, "BandwidthBurst": OwnerAdmin,
	"RelayBandwidthRate": OwnerAdmin, "RelayBandwidthBurst": OwnerAdmin,
	"MaxAdvertisedBandwidth": OwnerAdmin, "PerConnBWRate": OwnerAdmin, "PerConnBWBurst": OwnerAdmin,
	"AccountingMax": OwnerAdmin, "AccountingStart": OwnerAdmin, "AccountingRule": OwnerAdmin,
	"CountPrivateBandwidth": OwnerAdmin,
	// Contact and family: the admin's MyFamily lines name other operators'
	// relays of the family; the server adds the fleet's own.
	"ContactInfo": OwnerAdmin, "MyFamily": OwnerAdmin,
	// Directory service: DirPort listens on the relay's own address (the
	// node's firewall lets nothing else in); DirPortFrontPage, a file, is
	// forbidden.
	"DirPort": OwnerAdmin, "DirCache": OwnerAdmin, "MaxConsensusAgeForDiffs": OwnerAdmin,
	// Descriptor, publishing and reachability.
	"PublishServerDescriptor": OwnerAdmin, "AssumeReachable": OwnerAdmin,
	"AssumeReachableIPv6": OwnerAdmin, "AddressDisableIPv6": OwnerAdmin, "DisableNetwork": OwnerAdmin,
	// Memory, CPU and connection limits, scheduling.
	"MaxMemInQueues": OwnerAdmin, "NumCPUs": OwnerAdmin, "ConnLimit": OwnerAdmin,
	"DisableOOSCheck": OwnerAdmin, "MaxOnionQueueDelay": OwnerAdmin, "AvoidDiskWrites": OwnerAdmin,
	"ConstrainedSockets": OwnerAdmin, "ConstrainedSockSize": OwnerAdmin, "KeepalivePeriod": OwnerAdmin,
	"Schedulers": OwnerAdmin, "KISTSchedRunInterval": OwnerAdmin, "KISTSockBufSizeFactor": OwnerAdmin,
	"CircuitPriorityHalflife": OwnerAdmin, "TokenBucketRefillInterval": OwnerAdmin,
	"ShutdownWaitLength": OwnerAdmin, "HeartbeatPeriod": OwnerAdmin,
	// Padding and DoS mitigation.
	"ConnectionPadding": OwnerAdmin, "ReducedConnectionPadding": OwnerAdmin,
	"CircuitPadding": OwnerAdmin, "ReducedCircuitPadding": OwnerAdmin,
	"DoSCircuitCreationEnabled": OwnerAdmin, "DoSCircuitCreationBurst": OwnerAdmin,
	"DoSCircuitCreationDefenseTimePeriod": OwnerAdmin, "DoSCircuitCreationDefenseType": OwnerAdmin,
	"DoSCircuitCreationMinConnections": OwnerAdmin, "DoSCircuitCreationRate": OwnerAdmin,
	"DoSConnectionEnabled": OwnerAdmin, "DoSConnectionConnectBurst": OwnerAdmin,
	"DoSConnectionConnectDefenseTimePeriod": OwnerAdmin, "DoSConnectionConnectRate": OwnerAdmin,
	"DoSConnectionDefenseType": OwnerAdmin, "DoSConnectionMaxConcurrentCount": OwnerAdmin,
	"DoSRefuseSingleHopClientRendezvous": OwnerAdmin, "DoSStreamCreationEnabled": OwnerAdmin,
	"DoSStreamCreationBurst": OwnerAdmin, "DoSStreamCreationDefenseType": OwnerAdmin,
	"DoSStreamCreationRate": OwnerAdmin,
	// Statistics a relay publishes, and how tor words its (stdout) log.
	"ExtraInfoStatistics": OwnerAdmin, "DirReqStatistics": OwnerAdmin, "EntryStatistics": OwnerAdmin,
	"ExitPortStatistics": OwnerAdmin, "CellStatistics": OwnerAdmin, "ConnDirectionStatistics": OwnerAdmin,
	"HiddenServiceStatistics": OwnerAdmin, "PaddingStatistics": OwnerAdmin, "OverloadStatistics": OwnerAdmin,
	"MainloopStats": OwnerAdmin, "SafeLogging": OwnerAdmin, "LogMessageDomains": OwnerAdmin,
	"LogTimeGranularity": OwnerAdmin,
}

// ownerSet is owners keyed by tor's canonical spelling.
var ownerSet = map[string]Owner{}

func init() {
	for n, o := range owners {
		if c, ok := canonical[lower(n)]; ok {
			ownerSet[c] = o
		}
	}
}

// OwnerOf says who owns an option, in any spelling tor accepts. Options
// not in the table, and names tor does not know, are forbidden.
func OwnerOf(key string) Owner {
	c, ok := Canonical(key)
	if !ok {
		return OwnerForbidden
	}
	if o, ok := ownerSet[c]; ok {
		return o
	}
	return OwnerForbidden
}

// Refusal says why an option that is not the administrator's cannot be
// imported: who writes it, or for a forbidden one the class of harm it
// could do on the node (the classes the allowlist review looks for).
func Refusal(key string) string {
	switch OwnerOf(key) {
	case OwnerAdmin:
		return ""
	case OwnerServer:
		if c, _ := Canonical(key); c == "FamilyId" {
			return "the config server writes it from the family key `configsrv family create` or `configsrv family import` stores"
		}
		return "the config server writes it for each relay"
	case OwnerAgent:
		return "the agent on the node writes it"
	}
	c, _ := Canonical(key)
	switch {
	case strings.Contains(c, "TransportPlugin"):
		return "it runs a program on the node"
	case strings.HasPrefix(c, "HiddenService"), c == "PublishHidServDescriptors", c == "ClientOnionAuthDir":
		return "a relay node runs no onion services"
	case c == "Log", c == "DirPortFrontPage", c == "PidFile", c == "TruncateLogFile", c == "V3BandwidthsFile",
		strings.HasSuffix(c, "File"), strings.Contains(c, "Director"), strings.HasSuffix(c, "Dir"),
		strings.Contains(c, "FileGroup"), strings.Contains(c, "GroupReadable"), strings.Contains(c, "GroupWritable"):
		return "it names a file or directory on the node"
	case strings.HasSuffix(c, "Port") || strings.HasSuffix(c, "ListenAddr") || strings.HasPrefix(c, "Control") ||
		c == "SocksPolicy" || c == "HashedControlPassword" || c == "CookieAuthFile":
		return "it opens a listener or a control channel on the node"
	case c == "User" || c == "KeyDirectory" || c == "SigningKeyLifetime" || c == "OfflineMasterKey" ||
		strings.HasPrefix(c, "OutboundBindAddress") || c == "KeepBindCapabilities" || c == "DisableAllSwap" ||
		c == "DisableDebuggerAttachment" || c == "NoExec" || c == "Sandbox" || c == "SyslogIdentityTag":
		return "it changes the relay's identity, keys, user or confinement"
	}
	return "it is not on the node's allowlist of options an operator sets (internal/torrc/owner.go)"
}

// LevelAgent is the Level of the lines the agent adds (Explain shows it).
const LevelAgent = "agent"

// AgentLines are the lines the agent writes into every relay's torrc:
// its DataDirectory on the node's tmpfs, a cookie-authenticated control
// socket in the relay's private run directory (for operators and health
// tools such as nyx), no SOCKS listener, and tor confined: it may not
// run programs (NoExec) and runs in its seccomp sandbox. OfflineMasterKey
// keeps the ed25519 master identity out of tor: the agent issues the
// signing key and certificate from the vault. The MetricsPort the agent
// scrapes listens at metrics (layout.MetricsAddr) and answers the agent's
// address only (layout.MetricsClient; every other source is refused).
func AgentLines(dataDir, controlSocket string, metrics netip.AddrPort) []Line {
	l := func(k, v string) Line { return Line{Op: OpSet, Key: k, Value: v, Level: LevelAgent} }
	return []Line{
		l("DataDirectory", dataDir),
		l("ControlSocket", controlSocket),
		l("CookieAuthentication", "1"),
		l("RunAsDaemon", "0"),
		l("SocksPort", "0"),
		l("NoExec", "1"),
		l("Sandbox", "1"),
		l("OfflineMasterKey", "1"),
		l("MetricsPort", metrics.String()),
		l("MetricsPortPolicy", "accept "+layout.MetricsClient.String()),
	}
}

// ForNode is the torrc tor runs on the node: the server's lines the agent
// keeps (the admin's and the server's own), then the agent's lines. The
// lines it leaves out are returned as dropped, in order.
func ForNode(server *Config, agent []Line) (run *Config, dropped []Line) {
	run = &Config{Lines: make([]Line, 0, len(server.Lines)+len(agent))}
	for _, l := range server.Lines {
		switch OwnerOf(l.Key) {
		case OwnerAdmin, OwnerServer:
			run.Lines = append(run.Lines, l)
		default:
			dropped = append(dropped, l)
		}
	}
	run.Lines = append(run.Lines, agent...)
	return run, dropped
}

// Allowlist returns the options an administrator may set, in tor's
// spelling (for the closing figures and documentation).
func Allowlist() []string {
	var out []string
	for _, n := range torOptions {
		if ownerSet[n] == OwnerAdmin {
			out = append(out, n)
		}
	}
	return out
}
