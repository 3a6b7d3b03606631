// Package trust reads stboot's provisioning files: the trust policy
// directory (trust_policy.json + ospkg_signing_root.pem) and
// host_config.json, with the checks stboot applies before it boots.
package trust

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"patela/stimage/ospkg"
)

// File names inside a trust policy directory.
const (
	PolicyFile = "trust_policy.json"
	RootsFile  = "ospkg_signing_root.pem"
)

// Policy is trust_policy.json.
type Policy struct {
	SignatureThreshold int    `json:"ospkg_signature_threshold"`
	FetchMethod        string `json:"ospkg_fetch_method"`
	// st-1.2/1.3 options, kept so their files check; this tool does not
	// act on them.
	SigsumPolicy         *string          `json:"ospkg_trust_policy,omitempty"`
	DecryptionIdentities *json.RawMessage `json:"decryption_identities,omitempty"`
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

// HostConfig is host_config.json. Omitted fields are null, as stboot
// writes them.
type HostConfig struct {
	OSPkgPointer      *string             `json:"ospkg_pointer"`
	NetworkMode       *string             `json:"network_mode"`
	HostIP            *string             `json:"host_ip"`
	Gateway           *string             `json:"gateway"`
	DNS               *[]string           `json:"dns"`
	NetworkInterfaces *[]NetworkInterface `json:"network_interfaces"`
	BondingMode       *string             `json:"bonding_mode"`
	BondName          *string             `json:"bond_name"`
	Description       *string             `json:"description"`
}

// NetworkInterface names a NIC by name and MAC.
type NetworkInterface struct {
	InterfaceName string `json:"interface_name"`
	MACAddress    string `json:"mac_address"`
}

// legacyHostFields are found in real (older) configs; stboot ignores them.
var legacyHostFields = map[string]bool{"identity": true, "authentication": true, "version": true, "timestamp": true,
	"provisioning_urls": true, "network_interface": true, "bonding": true}

var bondingModes = map[string]bool{"balance-rr": true, "active-backup": true, "balance-xor": true, "broadcast": true,
	"802.3ad": true, "balance-tlb": true, "balance-alb": true}

// ParseHostConfig decodes and checks a host configuration.
func ParseHostConfig(b []byte) (*HostConfig, error) {
	var raw map[string]json.RawMessage
	if err := ospkg.DecodeStrict(b, &raw); err != nil {
		return nil, fmt.Errorf("host config: %w", err)
	}
	clean := map[string]json.RawMessage{}
	for k, v := range raw {
		if !legacyHostFields[k] {
			clean[k] = v
		}
	}
	cb, _ := json.Marshal(clean)
	var h HostConfig
	if err := ospkg.DecodeStrict(cb, &h); err != nil {
		return nil, fmt.Errorf("host config: %w", err)
	}
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("host config: %w", err)
	}
	return &h, nil
}

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
		for _, n := range *h.NetworkInterfaces {
			if n.InterfaceName == "" {
				return errors.New("network_interfaces: an entry has no interface_name")
			}
			if _, err := net.ParseMAC(n.MACAddress); err != nil {
				return fmt.Errorf("network_interfaces %s: mac_address %q: %v", n.InterfaceName, n.MACAddress, err)
			}
		}
	}
	if h.BondingMode != nil && *h.BondingMode != "" {
		if !bondingModes[*h.BondingMode] {
			return fmt.Errorf("bonding_mode %q is not a Linux bonding mode", *h.BondingMode)
		}
		if h.BondName == nil || *h.BondName == "" {
			return errors.New("bonding_mode needs bond_name")
		}
	}
	return nil
}
