package torrc

// Owner says who may write an option into a relay's torrc. The owners
// table below is the one list of it: the server's import check, the
// server's per-relay lines, the agent's filter and its own lines all read
// it.
type Owner uint8

const (
	// OwnerAdmin options are the administrator's, at any cascade level.
	OwnerAdmin Owner = iota + 1
	// OwnerServer options are written by the config server for each relay
	// (its identity and addresses); the agent keeps them.
	OwnerServer
	// OwnerAgent options are written by the agent on the node (paths,
	// process and control plumbing); whatever the server sent for them
	// is dropped.
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

// why is how an import refusal names the owner.
func (o Owner) why() string {
	switch o {
	case OwnerServer:
		return "the config server writes it for each relay"
	case OwnerAgent:
		return "the agent on the node writes it"
	}
	return "no torrc may set it"
}

// owners lists every option that is not the administrator's.
var owners = map[string]Owner{
	"Nickname":            OwnerServer,
	"ORPort":              OwnerServer,
	"Address":             OwnerServer,
	"OutboundBindAddress": OwnerServer,

	"DataDirectory":        OwnerAgent,
	"ControlSocket":        OwnerAgent,
	"CookieAuthentication": OwnerAgent,
	"RunAsDaemon":          OwnerAgent,

	// Paths, users and listeners the agent does not write and nobody
	// else may: tor runs as the relay's uid already (no User), keeps its
	// keys where the vault restores them, and logs to the agent.
	"OutboundBindAddressExit": OwnerForbidden,
	"OutboundBindAddressOR":   OwnerForbidden,
	"OutboundBindAddressPT":   OwnerForbidden,
	"KeyDirectory":            OwnerForbidden,
	"CacheDirectory":          OwnerForbidden,
	"User":                    OwnerForbidden,
	"ControlPort":             OwnerForbidden,
	"CookieAuthFile":          OwnerForbidden,
	"MetricsPort":             OwnerForbidden,
	"PidFile":                 OwnerForbidden,
	"Log":                     OwnerForbidden,
	"SyslogIdentityTag":       OwnerForbidden,
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

// OwnerOf says who owns an option, in any spelling tor accepts. Names tor
// does not know are forbidden.
func OwnerOf(key string) Owner {
	c, ok := Canonical(key)
	if !ok {
		return OwnerForbidden
	}
	if o, ok := ownerSet[c]; ok {
		return o
	}
	return OwnerAdmin
}

// LevelAgent is the Level of the lines the agent adds (Explain shows it).
const LevelAgent = "agent"

// AgentLines are the lines the agent writes into every relay's torrc:
// its DataDirectory on the node's tmpfs, and a cookie-authenticated
// control socket in the relay's private run directory (for operators and
// health tools such as nyx).
func AgentLines(dataDir, controlSocket string) []Line {
	l := func(k, v string) Line { return Line{Op: OpSet, Key: k, Value: v, Level: LevelAgent} }
	return []Line{
		l("DataDirectory", dataDir),
		l("ControlSocket", controlSocket),
		l("CookieAuthentication", "1"),
		l("RunAsDaemon", "0"),
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
