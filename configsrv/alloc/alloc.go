// Package alloc holds the pure allocation rules: how many relays a node
// gets, their names, uids and addresses. The store applies them inside one
// transaction.
package alloc

import (
	"net/netip"
	"strconv"
	"strings"
)

// FirstUID is the uid of a node's first relay; relay i gets FirstUID+i.
const FirstUID = 10001

// ORPort is the port every relay listens on (each relay has its own IP).
const ORPort = 9001

// Cheeses of Piedmont, the relay names. All are valid tor nicknames
// ([A-Za-z0-9]{1,19}); when the list is exhausted names get a numeric suffix.
var Cheeses = []string{
	"murazzano", "castelmagno", "raschera", "bra", "toma", "robiola",
	"tomino", "seirass", "montebore", "macagn", "bettelmatt", "ossolano",
	"paglierina", "testun", "plaisentif", "nostrale", "cevrin",
	"castelrosso", "blu", "roccaverano", "gorgonzola", "grassodalpe",
	"sola", "brus",
}

// RelayCount is min(cpus, memory / relay memory, maxRelays), at least one
// when the memory allows one relay and maxRelays is not zero.
func RelayCount(cpus int, memoryBytes uint64, relayMemoryMB, maxRelays int) int {
	if relayMemoryMB <= 0 || maxRelays <= 0 {
		return 0
	}
	byMem := memoryBytes / (uint64(relayMemoryMB) << 20)
	if byMem == 0 {
		return 0
	}
	n := maxRelays
	if byMem < uint64(n) {
		n = int(byMem)
	}
	if cpus < n {
		n = cpus
	}
	if n < 1 {
		n = 1
	}
	return n
}

// Name returns the i-th candidate relay name: the cheeses in order, then
// the cheeses again with suffix 2, 3, ...
func Name(i int) string {
	c := Cheeses[i%len(Cheeses)]
	if r := i / len(Cheeses); r > 0 {
		return c + strconv.Itoa(r+1)
	}
	return c
}

// NameIndex inverts Name: the index of a candidate name, if it is one.
func NameIndex(name string) (int, bool) {
	for ci, c := range Cheeses {
		rest, ok := strings.CutPrefix(name, c)
		if !ok {
			continue
		}
		if rest == "" {
			return ci, true
		}
		r, err := strconv.Atoi(rest)
		if err != nil || r < 2 || strconv.Itoa(r) != rest {
			continue // another cheese with this one as its prefix
		}
		return (r-1)*len(Cheeses) + ci, true
	}
	return 0, false
}

// FreeName returns the first candidate name not in used.
func FreeName(used map[string]bool) string {
	for i := 0; ; i++ {
		if n := Name(i); !used[n] {
			return n
		}
	}
}

// FreeIndex returns the lowest index >= 0 not in used.
func FreeIndex(used map[int]bool) int {
	for i := 0; ; i++ {
		if !used[i] {
			return i
		}
	}
}

// FreeAddr returns the lowest address of pool that is not the network
// address, the gateway, the IPv4 broadcast, or in used. ok is false when the
// pool is full.
func FreeAddr(pool netip.Prefix, gateway netip.Addr, used map[netip.Addr]bool) (netip.Addr, bool) {
	return FreeAddrFrom(pool, gateway, used, pool.Masked().Addr())
}

// FreeAddrFrom is FreeAddr starting the search at from (the caller knows
// everything below it is taken).
func FreeAddrFrom(pool netip.Prefix, gateway netip.Addr, used map[netip.Addr]bool, from netip.Addr) (netip.Addr, bool) {
	pool = pool.Masked()
	start := pool.Addr().Next()
	if pool.Contains(from) && start.Less(from) {
		start = from
	}
	for a := start; a.IsValid() && pool.Contains(a); a = a.Next() {
		if a == gateway || used[a] {
			continue
		}
		if a.Is4() && isBroadcast(pool, a) {
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

func isBroadcast(pool netip.Prefix, a netip.Addr) bool {
	if pool.Bits() >= 31 {
		return false // RFC 3021 point-to-point: no broadcast
	}
	n := a.Next()
	return !n.IsValid() || !pool.Contains(n)
}

// Size is how many addresses FreeAddr can hand out from pool, capped at
// max (IPv6 pools are astronomically large).
func Size(pool netip.Prefix, max uint64) uint64 {
	hostBits := pool.Addr().BitLen() - pool.Bits()
	if hostBits >= 63 {
		return max
	}
	n := uint64(1) << hostBits
	reserved := uint64(2) // network address and gateway
	if pool.Addr().Is4() && pool.Bits() < 31 {
		reserved++ // broadcast
	}
	if n <= reserved {
		return 0
	}
	if n-reserved > max {
		return max
	}
	return n - reserved
}
