package tor

import (
	"fmt"
	"net/netip"

	"patela/internal/torrc"
)

// buildTorrc turns the server's resolved torrc into the one tor runs
// (torrc.ForNode): the server's lines the agent allows, plus the agent's
// own. The server names paths of a Debian layout; the agent knows where
// its tmpfs is and starts tor with the relay's uid already set, so tor
// gets no User line at all (it would need root and getpwnam). metrics is
// where tor serves the agent its metrics. The lines left out are
// returned, so the caller can report them.
func buildTorrc(server []byte, dataDir, controlSocket string, metrics netip.AddrPort) (*torrc.Config, []torrc.Line, error) {
	c, err := torrc.Parse(server)
	if err != nil {
		return nil, nil, fmt.Errorf("server torrc: %w", err)
	}
	run, dropped := torrc.ForNode(c, torrc.AgentLines(dataDir, controlSocket, metrics))
	return run, dropped, nil
}

// needsBindCap reports whether some ORPort or DirPort listens below 1024,
// the only case in which tor keeps CAP_NET_BIND_SERVICE.
func needsBindCap(c *torrc.Config) bool {
	for _, key := range []string{"ORPort", "DirPort"} {
		for _, v := range c.Values(key) {
			if p := listenPort(v); p > 0 && p < 1024 {
				return true
			}
		}
	}
	return false
}

func listenPort(v string) int { return torrc.ListenPort(v) }
