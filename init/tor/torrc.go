package tor

import (
	"fmt"
	"strconv"
	"strings"

	"patela/internal/torrc"
)

// agentOwned are the options the agent sets itself. Whatever the server
// sent for them is dropped: the server names paths and users of a Debian
// layout (/var/lib/tor-instances/NAME, User _tor-NAME), the agent knows
// where its tmpfs is, and starts tor with the relay's uid already set,
// so tor gets no User line at all (it would need root and getpwnam).
var agentOwned = []string{
	"DataDirectory", "User", "ControlSocket", "ControlPort",
	"CookieAuthentication", "CookieAuthFile", "RunAsDaemon", "PidFile",
}

// buildTorrc turns the server's resolved torrc into the one tor runs:
// the server's lines minus the agent-owned ones, plus the agent's own.
// The control socket (cookie-authenticated, in the relay's private run
// directory) is there for operators and health tools such as nyx.
func buildTorrc(server []byte, dataDir, controlSocket string) (*torrc.Config, error) {
	c, err := torrc.Parse(server)
	if err != nil {
		return nil, fmt.Errorf("server torrc: %w", err)
	}
	out := &torrc.Config{}
	for _, l := range c.Lines {
		if !isAgentOwned(l.Key) {
			out.Lines = append(out.Lines, l)
		}
	}
	for _, kv := range [][2]string{
		{"DataDirectory", dataDir},
		{"ControlSocket", controlSocket},
		{"CookieAuthentication", "1"},
		{"RunAsDaemon", "0"},
	} {
		out.Lines = append(out.Lines, torrc.Line{Op: torrc.OpSet, Key: kv[0], Value: kv[1]})
	}
	return out, nil
}

func isAgentOwned(key string) bool {
	for _, k := range agentOwned {
		if strings.EqualFold(k, key) {
			return true
		}
	}
	return false
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

// listenPort extracts the port of an ORPort-style value: "9001",
// "192.0.2.10:443 NoAdvertise", "[2001:db8::10]:443", "auto" (0).
func listenPort(v string) int {
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	a := f[0]
	if i := strings.LastIndexByte(a, ':'); i >= 0 {
		a = a[i+1:]
	}
	p, err := strconv.Atoi(a)
	if err != nil {
		return 0
	}
	return p
}
