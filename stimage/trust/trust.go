// Package trust reads stboot's provisioning files: the trust policy
// directory (trust_policy.json + ospkg_signing_root.pem) and
// host_config.json, with the checks stboot applies before it boots. The
// target is stboot v0.2.2 (the GitHub mirror's last release) and the ST
// 1.1-1.3 collections: what this package accepts, both accept.
package trust

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"patela/stimage/ospkg"
)

// File names inside a trust policy directory.
const (
	PolicyFile = "trust_policy.json"
	RootsFile  = "ospkg_signing_root.pem"
)

// Policy is trust_policy.json: these two fields and nothing else. (ST
// 1.2/1.3's Sigsum policy and decryption identities are files of their
// own in the trust directory, which stimage does not read.)
type Policy struct {
	SignatureThreshold int    `json:"ospkg_signature_threshold"`
	FetchMethod        string `json:"ospkg_fetch_method"`
}

// ParsePolicy decodes and checks a trust policy.
func ParsePolicy(b []byte) (*Policy, error) {
	var p Policy
	var raw map[string]json.RawMessage
	if err := ospkg.DecodeStrict(b, &raw); err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}
	for _, req := range []string{"ospkg_signature_threshold", "ospkg_fetch_method"} {
		if _, ok := raw[req]; !ok {
			return nil, fmt.Errorf("trust policy: missing %s", req)
		}
	}
	if err := ospkg.DecodeStrict(b, &p); err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}
	if p.SignatureThreshold < 1 {
		return nil, fmt.Errorf("trust policy: ospkg_signature_threshold %d, must be at least 1", p.SignatureThreshold)
	}
	if p.FetchMethod != "network" && p.FetchMethod != "initramfs" {
		return nil, fmt.Errorf("trust policy: ospkg_fetch_method %q, want \"network\" or \"initramfs\"", p.FetchMethod)
	}
	return &p, nil
}

// LoadDir reads a trust policy directory.
func LoadDir(dir string) (*Policy, []*x509.Certificate, error) {
	b, err := os.ReadFile(filepath.Join(dir, PolicyFile))
	if err != nil {
		return nil, nil, err
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, PolicyFile), err)
	}
	roots, err := LoadRoots(filepath.Join(dir, RootsFile))
	if err != nil {
		return nil, nil, err
	}
	return p, roots, nil
}

// LoadRoots reads a PEM file of one or more signing root certificates;
// each must be a CA that may sign certificates.
func LoadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	roots, err := ospkg.ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, r := range roots {
		if !r.IsCA || r.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("%s: certificate %d (%s) is not a signing root (CA with certSign)", path, i, r.Subject)
		}
	}
	return roots, nil
}

// OtherFiles lists the files of a trust policy directory that LoadDir
// does not read (Sigsum policy, decryption identities, TLS roots, ...), so
// a verification can say what it did not check.
func OtherFiles(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		if n := e.Name(); n != PolicyFile && n != RootsFile {
			out = append(out, n)
		}
	}
	return out, nil
}

// HostConfig is host_config.json as stboot v0.2.2 reads it: every one of
// these keys must be present, null where unset (Marshal writes them all,
// in stboot's order). Description is ST 1.2's and written only when set
// (v0.2.2 ignores keys it does not know).
type HostConfig struct {
	NetworkMode       *string             `json:"network_mode"`
	HostIP            *string             `json:"host_ip"`
	Gateway           *string             `json:"gateway"`
	DNS               *[]string           `json:"dns"`
	NetworkInterfaces *[]NetworkInterface `json:"network_interfaces"`
	OSPkgPointer      *string             `json:"ospkg_pointer"`
	Identity          *string             `json:"identity"`
	Authentication    *string             `json:"authentication"`
	BondingMode       *string             `json:"bonding_mode"`
	BondName          *string             `json:"bond_name"`
	Description       *string             `json:"description,omitempty"`
}

// NetworkInterface names a NIC by name and MAC.
type NetworkInterface struct {
	InterfaceName string `json:"interface_name"`
	MACAddress    string `json:"mac_address"`
}

// legacyHostFields are found in real (older) configs and ignored by
// stboot; provisioning_urls stands in for a missing ospkg_pointer.
var legacyHostFields = map[string]bool{"version": true, "timestamp": true, "provisioning_urls": true,
	"network_interface": true, "bonding": true}

var bondingModes = map[string]bool{"balance-rr": true, "active-backup": true, "balance-xor": true, "broadcast": true,
	"802.3ad": true, "balance-tlb": true, "balance-alb": true}

// ParseHostConfig decodes and checks a host configuration. Legacy shapes
// that mean the same thing are rewritten into the current one (dns as one
// string, provisioning_urls for a missing ospkg_pointer) and each
// rewrite, and each legacy key dropped, is described in notes; a legacy
// shape that cannot be rewritten is refused with an error naming its key.
func ParseHostConfig(b []byte) (h *HostConfig, notes []string, err error) {
	var raw map[string]json.RawMessage
	if err := ospkg.DecodeStrict(b, &raw); err != nil {
		return nil, nil, fmt.Errorf("host config: %w", err)
	}
	if raw == nil {
		return nil, nil, errors.New("host config: not a JSON object")
	}
	clean := map[string]json.RawMessage{}
	var dropped []string
	for k, v := range raw {
		if legacyHostFields[k] {
			if k != "provisioning_urls" {
				dropped = append(dropped, k)
			}
			continue
		}
		clean[k] = v
	}
	if v, ok := raw["dns"]; ok && isJSONString(v) {
		var one string
		json.Unmarshal(v, &one)
		clean["dns"], _ = json.Marshal([]string{one})
		notes = append(notes, fmt.Sprintf("dns: the legacy string %q, written as a list", one))
	}
	if v, ok := raw["network_interfaces"]; ok {
		var names []string
		if json.Unmarshal(v, &names) == nil && len(names) > 0 {
			return nil, nil, fmt.Errorf(`host config: network_interfaces holds interface names %q (the legacy shape); stboot wants [{"interface_name": "eth0", "mac_address": "..."}], one object per interface with its MAC`, names)
		}
	}
	if v, ok := raw["provisioning_urls"]; ok && string(v) != "null" {
		if p, set := raw["ospkg_pointer"]; set && string(p) != "null" {
			notes = append(notes, "provisioning_urls: ignored, ospkg_pointer is set")
		} else {
			var urls []string
			if err := json.Unmarshal(v, &urls); err != nil {
				return nil, nil, fmt.Errorf("host config: provisioning_urls: want a list of URLs: %w", err)
			}
			for _, u := range urls {
				if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") {
					return nil, nil, fmt.Errorf("host config: provisioning_urls: %q is not an http(s) URL", u)
				}
			}
			clean["ospkg_pointer"], _ = json.Marshal(strings.Join(urls, ","))
			notes = append(notes, "provisioning_urls: the legacy list, written as ospkg_pointer")
		}
	}
	if len(dropped) > 0 {
		slices.Sort(dropped)
		notes = append(notes, "legacy keys stboot ignores, left out: "+strings.Join(dropped, ", "))
	}
	cb, _ := json.Marshal(clean)
	h = &HostConfig{}
	if err := ospkg.DecodeStrict(cb, h); err != nil {
		return nil, nil, fmt.Errorf("host config: %w", err)
	}
	if h.BondingMode != nil && *h.BondingMode == "" {
		h.BondingMode = nil // stboot's "unset", which it writes as null
	}
	if err := h.check(); err != nil {
		return nil, nil, fmt.Errorf("host config: %w", err)
	}
	return h, notes, nil
}

func isJSONString(v json.RawMessage) bool {
	return len(v) > 0 && v[0] == '"'
}

// idChars is what stboot v0.2.2 allows in identity and authentication
// when the pointer uses them (its error message says digits too; its
// regular expression does not).
var idChars = regexp.MustCompile(`^[A-Za-z_-]{1,64}$`)

func (h *HostConfig) check() error {
	if h.OSPkgPointer == nil || strings.TrimSpace(*h.OSPkgPointer) == "" {
		return errors.New("ospkg_pointer is required")
	}
	if h.NetworkMode == nil {
		return errors.New("network_mode is required")
	}
	switch *h.NetworkMode {
	case "dhcp":
	case "static":
		if h.HostIP == nil {
			return errors.New("network_mode static needs host_ip")
		}
		if _, err := netip.ParsePrefix(*h.HostIP); err != nil {
			return fmt.Errorf("host_ip %q: want an address with a prefix length, e.g. 10.0.2.15/24", *h.HostIP)
		}
		if h.Gateway == nil {
			return errors.New("network_mode static needs gateway")
		}
		if _, err := netip.ParseAddr(*h.Gateway); err != nil {
			return fmt.Errorf("gateway %q is not an IP address", *h.Gateway)
		}
	default:
		return fmt.Errorf("network_mode %q, want \"static\" or \"dhcp\"", *h.NetworkMode)
	}
	if h.DNS != nil {
		for _, d := range *h.DNS {
			if _, err := netip.ParseAddr(d); err != nil {
				return fmt.Errorf("dns %q is not an IP address", d)
			}
		}
	}
	if h.NetworkInterfaces != nil {
		if len(*h.NetworkInterfaces) == 0 {
			return errors.New("network_interfaces is an empty list, which stboot refuses: leave it null")
		}
		for _, n := range *h.NetworkInterfaces {
			if n.InterfaceName == "" {
				return errors.New("network_interfaces: an entry has no interface_name")
			}
			if _, err := net.ParseMAC(n.MACAddress); err != nil {
				return fmt.Errorf("network_interfaces %s: mac_address %q: %v", n.InterfaceName, n.MACAddress, err)
			}
		}
	}
	if h.BondingMode != nil {
		if !bondingModes[*h.BondingMode] {
			return fmt.Errorf("bonding_mode %q is not a Linux bonding mode", *h.BondingMode)
		}
		if h.BondName == nil || *h.BondName == "" {
			return errors.New("bonding_mode needs bond_name")
		}
		if h.NetworkInterfaces == nil {
			return errors.New("bonding_mode needs network_interfaces")
		}
	}
	for _, v := range []struct {
		key, token string
		val        *string
	}{{"identity", "$ID", h.Identity}, {"authentication", "$AUTH", h.Authentication}} {
		if !strings.Contains(*h.OSPkgPointer, v.token) {
			continue
		}
		if v.val == nil {
			return fmt.Errorf("ospkg_pointer uses %s but %s is unset", v.token, v.key)
		}
		if !idChars.MatchString(*v.val) {
			return fmt.Errorf("%s %q: stboot v0.2.2 allows 1 to 64 of A-Z, a-z, - and _ when ospkg_pointer uses %s", v.key, *v.val, v.token)
		}
	}
	return nil
}
