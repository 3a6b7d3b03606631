// Package settings defines the node settings an administrator can set
// globally or per node, validates their values and resolves the effective
// value of each (node overrides global overrides built-in default).
package settings

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Keys of the settings.
const (
	RelayInterface = "relay_interface"
	IPv4Gateway    = "ipv4_gateway"
	IPv6Gateway    = "ipv6_gateway"
	DNS            = "dns"
	RelayMemoryMB  = "relay_memory_mb"
	MaxRelays      = "max_relays"
	PollIntervalS  = "poll_interval_s"
	Family         = "family"
	// HeartbeatIntervalS is how often a node that long-polls its config
	// sends a heartbeat when nothing changes (issue 18).
	HeartbeatIntervalS = "heartbeat_interval_s"
)

// Defaults applied when neither the node nor the global level sets a key.
const (
	// DefaultRelayInterface is the agent's second NIC: the image has no
	// udev, so NICs keep the kernel's names, and the agent's management
	// NIC is the first (eth0) unless its config names another.
	DefaultRelayInterface = "eth1"
	DefaultRelayMemoryMB  = 1024
	DefaultMaxRelays      = 8
	DefaultPollIntervalS  = 300
	// DefaultFamily is the family of every node no family setting
	// names: by default the whole fleet is one family.
	DefaultFamily = "fleet"
	// DefaultHeartbeatIntervalS: 6 heartbeats an hour, with the long polls
	// and the hourly token well within 12 requests an hour while idle.
	DefaultHeartbeatIntervalS = 600
)

// Linux interface names: at most 15 bytes, no slash, whitespace or colon.
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// Family names: they name key files on the nodes and rows in the family
// key table.
var familyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// Keys lists every valid key, sorted.
func Keys() []string {
	k := []string{RelayInterface, IPv4Gateway, IPv6Gateway, DNS, RelayMemoryMB, MaxRelays, PollIntervalS, Family, HeartbeatIntervalS}
	sort.Strings(k)
	return k
}

// Normalize validates value for key and returns its canonical spelling.
func Normalize(key, value string) (string, error) {
	value = strings.TrimSpace(value)
	switch key {
	case RelayInterface:
		if !ifaceRE.MatchString(value) || value == "." || value == ".." {
			return "", fmt.Errorf("%s: %q is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)", key, value)
		}
		return value, nil
	case IPv4Gateway, IPv6Gateway:
		a, err := netip.ParseAddr(value)
		if err != nil {
			return "", fmt.Errorf("%s: %q is not an IP address", key, value)
		}
		if key == IPv4Gateway && !a.Is4() {
			return "", fmt.Errorf("%s: %s is not an IPv4 address", key, value)
		}
		if key == IPv6Gateway && (!a.Is6() || a.Is4In6()) {
			return "", fmt.Errorf("%s: %s is not an IPv6 address", key, value)
		}
		return a.String(), nil
	case DNS:
		var out []string
		for _, s := range strings.Split(value, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || a.Zone() != "" {
				return "", fmt.Errorf("%s: %q is not a comma-separated list of IP addresses", key, value)
			}
			out = append(out, a.Unmap().String())
		}
		return strings.Join(out, ","), nil
	case Family:
		if err := CheckFamily(value); err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		return value, nil
	case RelayMemoryMB:
		return intIn(key, value, 1, 1<<30)
	case MaxRelays:
		return intIn(key, value, 0, 64)
	case PollIntervalS, HeartbeatIntervalS:
		return intIn(key, value, 10, 86400)
	}
	return "", fmt.Errorf("unknown setting %q (valid: %s)", key, strings.Join(Keys(), ", "))
}

// CheckFamily validates a family name.
func CheckFamily(name string) error {
	if !familyRE.MatchString(name) {
		return fmt.Errorf("%q is not a family name (1-32 of a-z 0-9 -, starting with a letter or digit)", name)
	}
	return nil
}

func intIn(key, value string, lo, hi int) (string, error) {
	n, err := strconv.Atoi(value)
	if err != nil || n < lo || n > hi {
		return "", fmt.Errorf("%s: %q is not an integer in %d..%d", key, value, lo, hi)
	}
	return strconv.Itoa(n), nil
}

// Effective is the resolved value of every setting for one node.
type Effective struct {
	RelayInterface     string
	IPv4Gateway        string
	IPv6Gateway        string
	DNS                []string
	RelayMemoryMB      int
	MaxRelays          int
	PollIntervalS      int
	HeartbeatIntervalS int
	Family             string // the relay family the node's relays belong to
}

// Resolve layers node over global over the defaults. Values are assumed
// valid (they were normalized when stored); an invalid stored value falls
// back to the default rather than breaking every node.
func Resolve(global, node map[string]string) Effective {
	get := func(k string) string {
		if v, ok := node[k]; ok {
			return v
		}
		return global[k]
	}
	num := func(k string, def int) int {
		if v := get(k); v != "" {
			if _, err := Normalize(k, v); err == nil {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		return def
	}
	e := Effective{
		RelayInterface:     DefaultRelayInterface,
		IPv4Gateway:        get(IPv4Gateway),
		IPv6Gateway:        get(IPv6Gateway),
		DNS:                []string{},
		RelayMemoryMB:      num(RelayMemoryMB, DefaultRelayMemoryMB),
		MaxRelays:          num(MaxRelays, DefaultMaxRelays),
		PollIntervalS:      num(PollIntervalS, DefaultPollIntervalS),
		HeartbeatIntervalS: num(HeartbeatIntervalS, DefaultHeartbeatIntervalS),
		Family:             DefaultFamily,
	}
	if v := get(Family); CheckFamily(v) == nil {
		e.Family = v
	}
	if v := get(RelayInterface); v != "" {
		e.RelayInterface = v
	}
	if d := get(DNS); d != "" {
		e.DNS = strings.Split(d, ",")
	}
	return e
}
