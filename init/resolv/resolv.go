// Package resolv owns /etc/resolv.conf. Two sources feed it: the DHCP
// lease of the management network and the config server's node network
// ("dns"), which names the resolvers the exit relays must use. The
// server's list wins when it has one; the lease's is the fallback. While
// the node runs an exit, no big public resolver (internal/publicdns) is
// written in, from either source: its operator would see the exit's DNS
// queries.
package resolv

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"patela/internal/atomicfile"
	"patela/internal/publicdns"
)

// MaxNS is the number of nameserver lines the C library reads.
const MaxNS = 3

// File is resolv.conf at Path. It is safe for concurrent use.
type File struct {
	Path string

	mu           sync.Mutex
	dhcp, server []netip.Addr
	exit         bool // the node runs an exit relay
	search       []string
	written      []byte
	wroteOnce    bool
}

// SetDHCP records the lease's resolvers and search domains and rewrites
// the file if that changes it.
func (f *File) SetDHCP(dns []netip.Addr, search []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dhcp, f.search = slices.Clone(dns), slices.Clone(search)
	return f.write()
}

// SetServer records the config server's resolvers, given as strings as in
// the node config, and whether the node runs an exit relay. An invalid
// entry refuses the whole list and changes nothing. For an exit, the
// public resolvers in the list are left out of the file and named in the
// error (the server refuses such a config: only a compromised or
// outdated server sends one).
func (f *File) SetServer(dns []string, exit bool) error {
	addrs := make([]netip.Addr, 0, len(dns))
	for _, s := range dns {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || !a.IsGlobalUnicast() && !a.IsPrivate() && !a.IsLoopback() {
			return fmt.Errorf("resolv: DNS server %q is not a unicast IP address", s)
		}
		addrs = append(addrs, a.Unmap())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.server, f.exit = addrs, exit
	if err := f.write(); err != nil {
		return err
	}
	if public := publicOf(addrs); exit && len(public) > 0 {
		return fmt.Errorf("resolv: not writing %s into resolv.conf: this node runs an exit relay, which must not resolve through a public resolver", strings.Join(public, ", "))
	}
	return nil
}

// publicOf names the public resolvers among addrs.
func publicOf(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		if op, ok := publicdns.Operator(a); ok {
			out = append(out, a.String()+" ("+op+")")
		}
	}
	return out
}

func (f *File) write() error {
	data := Render(f.active(), f.search)
	if f.wroteOnce && string(data) == string(f.written) {
		return nil
	}
	if err := writeAtomic(f.Path, data); err != nil {
		return fmt.Errorf("resolv: %w", err)
	}
	f.written, f.wroteOnce = data, true
	return nil
}

func (f *File) active() []netip.Addr {
	src := f.dhcp
	if len(f.server) > 0 {
		src = f.server
	}
	if !f.exit {
		return src
	}
	out := make([]netip.Addr, 0, len(src))
	for _, a := range src {
		if _, public := publicdns.Operator(a); !public {
			out = append(out, a)
		}
	}
	return out
}

// Render is the file's text. Search domains that could break the file
// (spaces, newlines, anything outside a host name) are dropped.
func Render(dns []netip.Addr, search []string) []byte {
	var b strings.Builder
	b.WriteString("# written by the patela agent\n")
	var ok []string
	for _, s := range search {
		if ValidDomain(s) {
			ok = append(ok, s)
		}
	}
	if len(ok) > 0 {
		b.WriteString("search " + strings.Join(ok, " ") + "\n")
	}
	if len(dns) == 0 {
		b.WriteString("# no DNS server known yet\n")
	}
	for i, d := range dns {
		if i == MaxNS {
			break
		}
		b.WriteString("nameserver " + d.String() + "\n")
	}
	return []byte(b.String())
}

// ValidDomain accepts a DNS name that cannot break resolv.conf.
func ValidDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// writeAtomic replaces path (temp file + rename): a reader never sees
// half a file.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o644)
}
