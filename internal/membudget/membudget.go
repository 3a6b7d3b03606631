// Package membudget divides a relay machine's memory among its relays:
// the one rule the agent (each relay's cgroup memory.max) and the config
// server (tor's MaxMemInQueues, `configsrv node show`) both apply, to the
// same inputs (the MemTotal the node reports in its specs, and its relay
// count).
package membudget

// MiB is a mebibyte.
const MiB = 1 << 20

// MinReserve is the least memory kept back for the kernel (its page
// tables, network buffers of its own, conntrack), the agent and the
// initramfs's tmpfs (some 30 MiB of tor, libraries and the agent itself).
const MinReserve = 256 * MiB

// Budget is how a node's memory is shared.
type Budget struct {
	Total    uint64 `json:"total_bytes"`     // MemTotal
	Reserve  uint64 `json:"reserve_bytes"`   // kept back for the kernel, agent and tmpfs
	Relays   int    `json:"relays"`          // among how many relays the rest is divided
	PerRelay uint64 `json:"per_relay_bytes"` // each relay's cgroup memory.max; 0: no budget
	// Queues is tor's MaxMemInQueues for each relay: three quarters of
	// its share, the rest for what tor holds besides cells and buffers
	// (consensus, descriptors, connections), rounded down to a MiB.
	Queues uint64 `json:"max_mem_in_queues_bytes"`
}

// For is the budget of total bytes of memory for relays relays: the
// reserve is a sixteenth of the memory, at least MinReserve; the rest is
// divided evenly. Nothing to divide (no relays, or less memory than the
// reserve) gives PerRelay 0.
func For(total uint64, relays int) Budget {
	b := Budget{Total: total, Reserve: max(MinReserve, total/16), Relays: relays}
	if relays <= 0 || total <= b.Reserve {
		return b
	}
	b.PerRelay = (total - b.Reserve) / uint64(relays)
	b.Queues = b.PerRelay * 3 / 4 / MiB * MiB
	return b
}
