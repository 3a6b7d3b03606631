// Package publicdns knows the big public DNS resolvers an exit relay must
// not use: whoever runs one sees (and can correlate) the DNS queries of
// every exit that uses it. The list is the one ansible-relayor refuses on
// exits (its abort_on_big_dns_operators check: Google, Cloudflare, Quad9,
// OpenDNS, Level3), with the same operators' other documented service
// addresses (IPv6, filtering variants). Both the config server (the
// node's dns setting) and the agent (resolv.conf) check it.
package publicdns

import "net/netip"

var operators = map[string][]string{
	"Google Public DNS": {"8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"},
	"Cloudflare": {"1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
		"2606:4700:4700::1111", "2606:4700:4700::1001", "2606:4700:4700::1112", "2606:4700:4700::1002",
		"2606:4700:4700::1113", "2606:4700:4700::1003"},
	"Quad9": {"9.9.9.9", "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11",
		"2620:fe::fe", "2620:fe::9", "2620:fe::10", "2620:fe::fe:10", "2620:fe::11", "2620:fe::fe:11"},
	"OpenDNS": {"208.67.222.222", "208.67.220.220", "208.67.222.123", "208.67.220.123",
		"2620:119:35::35", "2620:119:53::53", "2620:119:35::123", "2620:119:53::123"},
	"Level3": {"4.2.2.1", "4.2.2.2", "4.2.2.3", "4.2.2.4", "4.2.2.5", "4.2.2.6"},
}

var byAddr = map[netip.Addr]string{}

func init() {
	for op, addrs := range operators {
		for _, a := range addrs {
			byAddr[netip.MustParseAddr(a)] = op
		}
	}
}

// Operator names the public resolver operator of addr (an IPv4-mapped
// IPv6 address counts as its IPv4 address); ok is false for any other
// address.
func Operator(addr netip.Addr) (name string, ok bool) {
	name, ok = byAddr[addr.Unmap().WithZone("")]
	return name, ok
}
