// Package agentcfg loads the agent's configuration: the file baked into the
// initramfs (layout.AgentConfig, /etc/patela/agent.json), then patela.KEY=VALUE overrides from
// the kernel command line. Every value is checked here, so later phases can
// trust it and a typo stops the boot with a message naming the key.
package agentcfg

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"patela/internal/layout"
	"patela/internal/release"
)

// Config is the agent's configuration. JSON names are the cmdline keys:
// patela.server_url=https://… overrides "server_url".
type Config struct {
	// ServerURL is the config server's base URL (https only).
	ServerURL string `json:"server_url"`
	// ServerCA is the path of the PEM bundle the agent trusts for it.
	ServerCA string `json:"server_ca"`
	// MgmtInterface or MgmtMAC selects the management NIC; with neither,
	// the first non-loopback Ethernet link is used.
	MgmtInterface string `json:"mgmt_interface,omitempty"`
	MgmtMAC       string `json:"mgmt_mac,omitempty"`
	// TPM is a tpmdev spec: "/dev/tpmrm0", "unix:/path", "tcp:host:port".
	TPM string `json:"tpm,omitempty"`
	// Modules are loaded in this order from ModuleDir/<name>.ko.
	Modules   []string `json:"modules,omitempty"`
	ModuleDir string   `json:"module_dir,omitempty"`
	// Sealing is how the vault key is sealed: "release" (the default: to
	// the release policy key PolicyKey, so only approved releases unseal
	// it) or "unmeasured" (PolicyPCR over PCRs and the lock PCR: any OS
	// booted on the machine can unseal it; lab and direct-kernel tests
	// only, warned about at every boot and reported to the server). Only
	// the image sets it: the kernel command line cannot.
	Sealing string `json:"sealing,omitempty"`
	// PolicyKey is the release policy key, base64 of its PKIX DER
	// (stimage keygen policy-key prints it). Only the image sets it.
	PolicyKey string `json:"policy_key,omitempty"`
	// PCRs the vault key is sealed to in unmeasured sealing (empty: the
	// lock PCR only); in release sealing, those of a vault sealed before,
	// opened once to migrate it to the policy key.
	PCRs []int `json:"pcrs,omitempty"`
	// Debug flags: "shell" starts a shell on the console (debug image
	// only); any flag turns on debug logs and a 5 s reboot delay. "all"
	// (or a bare patela.debug) turns every one on.
	Debug []string `json:"debug,omitempty"`
	// DHCPTimeout bounds the first lease before the boot is declared failed.
	DHCPTimeout Duration `json:"dhcp_timeout,omitempty"`
	// RebootDelay is how long a fatal error stays on the console.
	RebootDelay Duration `json:"reboot_delay,omitempty"`
	// KeyRetention is how long the vault keeps the keys of a relay that
	// left the config (default 30 days), on the TPM's clock. Only the
	// image sets it: neither the server nor the kernel command line can.
	KeyRetention Duration `json:"key_retention,omitempty"`
	// Selftest, when set, runs a named self-test instead of the relay
	// machine (see init/main.go); "pid1" is the only one.
	Selftest string `json:"selftest,omitempty"`
}

// Duration is a time.Duration written as "30s" in JSON and on the cmdline.
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "30s"`)
	}
	v, err := parseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func parseDuration(s string) (time.Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s)", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return v, nil
}

// Defaults fills what the file and cmdline left out.
func (c *Config) defaults() {
	if c.TPM == "" {
		c.TPM = "/dev/tpmrm0"
	}
	if c.ModuleDir == "" {
		c.ModuleDir = layout.ModulesDir
	}
	if c.ServerCA == "" {
		c.ServerCA = layout.ServerCA
	}
	if c.Sealing == "" {
		c.Sealing = SealingRelease
	}
	if c.DHCPTimeout == 0 {
		c.DHCPTimeout = Duration(2 * time.Minute)
	}
	if c.KeyRetention <= 0 {
		c.KeyRetention = Duration(30 * 24 * time.Hour)
	}
	if c.RebootDelay == 0 {
		c.RebootDelay = Duration(30 * time.Second)
		if c.Debugging() {
			c.RebootDelay = Duration(5 * time.Second)
		}
	}
}

// Debugging reports whether any debug flag is on.
func (c *Config) Debugging() bool { return len(c.Debug) > 0 }

// DebugFlag reports whether flag (or "all") is on.
func (c *Config) DebugFlag(flag string) bool {
	for _, d := range c.Debug {
		if d == flag || d == "all" {
			return true
		}
	}
	return false
}

// Load reads the config file at path (a missing file is an error: the
// initramfs always has one) and applies the overrides in cmdline, the
// contents of /proc/cmdline. Nothing is half-applied: on error the
// returned config is nil.
func Load(path, cmdline string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	c, err := Parse(data, cmdline)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	return c, nil
}

// Parse is Load on bytes.
func Parse(data []byte, cmdline string) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("bad JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("bad JSON: data after the object")
	}
	if err := c.override(cmdline); err != nil {
		return nil, err
	}
	c.defaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Prefix marks the agent's keys on the kernel command line.
const Prefix = "patela."

func (c *Config) override(cmdline string) error {
	for _, f := range splitCmdline(cmdline) {
		if !strings.HasPrefix(f, Prefix) {
			continue
		}
		key, val, hasVal := strings.Cut(strings.TrimPrefix(f, Prefix), "=")
		if err := c.set(key, val, hasVal); err != nil {
			return fmt.Errorf("kernel command line %s: %w", f, err)
		}
	}
	return nil
}

// splitCmdline splits like the kernel does: on spaces, with double quotes
// grouping a value that holds spaces (patela.x="a b").
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func (c *Config) set(key, val string, hasVal bool) error {
	if !hasVal && key != "debug" {
		return errors.New("needs a value (patela.KEY=VALUE)")
	}
	switch key {
	case "server_url":
		c.ServerURL = val
	case "server_ca":
		c.ServerCA = val
	case "mgmt_interface":
		c.MgmtInterface = val
	case "mgmt_mac":
		c.MgmtMAC = val
	case "tpm":
		c.TPM = val
	case "modules":
		c.Modules = splitList(val)
	case "module_dir":
		c.ModuleDir = val
	case "sealing", "policy_key":
		return fmt.Errorf("%s is set by the image (agent.json), never on the kernel command line", key)
	case "pcrs":
		pcrs, err := parseInts(val)
		if err != nil {
			return err
		}
		c.PCRs = pcrs
	case "debug":
		if !hasVal || val == "" || val == "1" {
			c.Debug = []string{"all"}
		} else {
			c.Debug = splitList(val)
		}
	case "dhcp_timeout", "reboot_delay":
		d, err := parseDuration(val)
		if err != nil {
			return err
		}
		if key == "dhcp_timeout" {
			c.DHCPTimeout = Duration(d)
		} else {
			c.RebootDelay = Duration(d)
		}
	case "selftest":
		c.Selftest = val
	default:
		return fmt.Errorf("unknown key %q", key)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", p)
		}
		out = append(out, n)
	}
	return out, nil
}

var (
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,15}$`)
	moduleRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,55}$`)
)

// Selftests are the self-test modes the agent knows.
var Selftests = []string{"pid1"}

func (c *Config) validate() error {
	if c.Selftest == "" || c.ServerURL != "" {
		u, err := url.Parse(c.ServerURL)
		switch {
		case c.ServerURL == "":
			return errors.New("server_url is missing")
		case err != nil:
			return fmt.Errorf("server_url: %w", err)
		case u.Scheme != "https":
			return fmt.Errorf("server_url %q: must be https://", c.ServerURL)
		case u.Host == "":
			return fmt.Errorf("server_url %q: no host", c.ServerURL)
		}
	}
	if !filepath.IsAbs(c.ServerCA) {
		return fmt.Errorf("server_ca %q: must be an absolute path", c.ServerCA)
	}
	if c.MgmtInterface != "" && !ifnameRE.MatchString(c.MgmtInterface) {
		return fmt.Errorf("mgmt_interface %q: not an interface name", c.MgmtInterface)
	}
	if c.MgmtMAC != "" {
		if _, err := net.ParseMAC(c.MgmtMAC); err != nil {
			return fmt.Errorf("mgmt_mac %q: not a MAC address", c.MgmtMAC)
		}
	}
	if c.MgmtInterface != "" && c.MgmtMAC != "" {
		return errors.New("mgmt_interface and mgmt_mac: set one, not both")
	}
	switch {
	case strings.HasPrefix(c.TPM, "/"):
	case strings.HasPrefix(c.TPM, "unix:/"):
	case strings.HasPrefix(c.TPM, "tcp:"):
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(c.TPM, "tcp:")); err != nil {
			return fmt.Errorf("tpm %q: want tcp:HOST:PORT", c.TPM)
		}
	default:
		return fmt.Errorf("tpm %q: want a device path, unix:/path or tcp:host:port", c.TPM)
	}
	seen := map[string]bool{}
	for _, m := range c.Modules {
		if !moduleRE.MatchString(m) {
			return fmt.Errorf("modules: %q is not a module name", m)
		}
		if seen[m] {
			return fmt.Errorf("modules: %q listed twice", m)
		}
		seen[m] = true
	}
	if !filepath.IsAbs(c.ModuleDir) {
		return fmt.Errorf("module_dir %q: must be an absolute path", c.ModuleDir)
	}
	pcrSeen := map[int]bool{}
	for _, p := range c.PCRs {
		if p < 0 || p > 23 {
			return fmt.Errorf("pcrs: %d is not a PCR index (0-23)", p)
		}
		if pcrSeen[p] {
			return fmt.Errorf("pcrs: %d listed twice", p)
		}
		pcrSeen[p] = true
	}
	switch c.Sealing {
	case SealingRelease:
		if c.PolicyKey == "" && c.Selftest == "" {
			return errors.New(`sealing "release" (the default) needs policy_key, the release policy key (stimage keygen policy-key prints it); ` +
				`lab images that cannot be measured say "sealing": "unmeasured"`)
		}
	case SealingUnmeasured:
	default:
		return fmt.Errorf("sealing %q: want %q or %q", c.Sealing, SealingRelease, SealingUnmeasured)
	}
	if c.PolicyKey != "" {
		if _, err := c.ReleaseKey(); err != nil {
			return err
		}
	}
	if c.Selftest != "" {
		ok := false
		for _, s := range Selftests {
			ok = ok || s == c.Selftest
		}
		if !ok {
			return fmt.Errorf("selftest %q: unknown (known: %s)", c.Selftest, strings.Join(Selftests, ", "))
		}
	}
	return nil
}

// Sealing modes.
const (
	SealingRelease    = "release"
	SealingUnmeasured = "unmeasured"
)

// ReleaseKey decodes PolicyKey.
func (c *Config) ReleaseKey() (*ecdsa.PublicKey, error) {
	der, err := base64.StdEncoding.DecodeString(c.PolicyKey)
	if err != nil {
		return nil, fmt.Errorf("policy_key: not base64: %w", err)
	}
	k, err := release.ParsePublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("policy_key: %w", err)
	}
	return k, nil
}
