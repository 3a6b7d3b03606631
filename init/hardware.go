package main

// The hardware the agent probes: the management NIC, and what the server
// sizes relays by.

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"patela/init/agentcfg"
	"patela/init/tor"
	"patela/internal/api"
)

// mgmtInterface picks the management NIC: by name, by MAC, or the first
// Ethernet link (lowest index) when the config names none.
func mgmtInterface(cfg *agentcfg.Config) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", err
	}
	mac, _ := net.ParseMAC(cfg.MgmtMAC)
	for _, l := range links {
		at := l.Attrs()
		switch {
		case cfg.MgmtInterface != "":
			if at.Name == cfg.MgmtInterface {
				return at.Name, nil
			}
		case mac != nil:
			if bytes.Equal(at.HardwareAddr, mac) {
				return at.Name, nil
			}
		case l.Type() == "device" && len(at.HardwareAddr) == 6 && at.Flags&net.FlagLoopback == 0:
			return at.Name, nil
		}
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return "", fmt.Errorf("management interface (name %q, MAC %q) not found among %v (missing driver module?)",
		cfg.MgmtInterface, cfg.MgmtMAC, names)
}

// readSpecs reads the hardware the server sizes relays by.
func readSpecs(proc string) (*api.Specs, error) {
	s := &api.Specs{Features: tor.Features}
	f, err := os.Open(filepath.Join(proc, "cpuinfo"))
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
		case k == "processor":
			s.CPUs++
		case k == "model name" && s.CPUModel == "":
			s.CPUModel = v
		}
	}
	f.Close()
	mem, err := os.ReadFile(filepath.Join(proc, "meminfo"))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(mem), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("meminfo: %q", line)
			}
			s.MemoryBytes = kb * 1024
		}
	}
	if s.CPUs == 0 || s.MemoryBytes == 0 {
		return nil, fmt.Errorf("could not read CPU count (%d) or memory (%d) from %s", s.CPUs, s.MemoryBytes, proc)
	}
	return s, nil
}
