// Package rollout decides the next step of a release rollout: which nodes
// to ask to reboot, which have come back on the release, and when the
// rollout must stop because a node came back on something else. It only
// decides; configsrv/store loads the facts and applies the step in one
// transaction, and the server runs it every second.
//
// What image a node boots is decided by what stboot fetches or what the
// hypervisor boots; the rollout decides when. A node is done when it has
// rebooted (its heartbeat names another boot than the one asked to end),
// its last attestation quoted the target release, and every one of its
// relays runs again. It has failed when a new boot of it attested as
// anything else (another release, an unknown image, or no quote at all).
package rollout

import "fmt"

// Node states within a rollout.
const (
	Waiting   = "waiting"   // its turn has not come
	Rebooting = "rebooting" // asked to reboot, not back yet
	Done      = "done"
	Failed    = "failed"
)

// Node is what the step needs to know of one node of the rollout.
type Node struct {
	ID    int64
	State string
	// AskedBoot and AskedReset are the boot asked to end and the TPM
	// reset count its attestation carried (HasAskedReset false: none).
	AskedBoot     string
	AskedReset    int64
	HasAskedReset bool

	Enabled bool   // still enabled by the administrator
	BootID  string // of its last heartbeat
	// Its last attestation: status ("release", "unknown", "unattested"),
	// the release it matched, and its reset count (HasReset: quoted).
	Attest   string
	Release  string
	Reset    int64
	HasReset bool
	// RelaysRunning: every relay of the node reported running in its
	// last heartbeat.
	RelaysRunning bool
}

// Step is what to change.
type Step struct {
	Ask  []int64 // to reboot now
	Done []int64
	// Failed names the node that stops the rollout, and why.
	Failed *Failure
	// Finished: every node is done.
	Finished bool
}

// Failure stops a rollout.
type Failure struct {
	Node   int64
	Reason string
}

// Decide computes the step for a rollout to target with at most
// maxUnavailable nodes rebooting at once; nodes are in turn order.
func Decide(target string, maxUnavailable int, nodes []Node) Step {
	var st Step
	busy := 0
	for _, n := range nodes {
		if n.State != Rebooting {
			continue
		}
		newBoot := n.BootID != n.AskedBoot
		// A quote from another boot than the one asked to end: the
		// reset count moved (it is obfuscated per AK, so only compared).
		reattested := n.HasReset && (!n.HasAskedReset || n.Reset != n.AskedReset)
		switch {
		case (reattested || newBoot) && n.Attest != "release":
			what := "an image no release names"
			if n.Attest == "unattested" {
				what = "no quote (unattested)"
			}
			st.Failed = &Failure{n.ID, fmt.Sprintf("node %d came back with %s, not release %s", n.ID, what, target)}
			return st
		case (reattested || newBoot) && n.Release != target:
			st.Failed = &Failure{n.ID, fmt.Sprintf("node %d came back on release %s, not %s", n.ID, n.Release, target)}
			return st
		case newBoot && reattested && n.RelaysRunning:
			st.Done = append(st.Done, n.ID)
		default:
			busy++
		}
	}
	waiting := 0
	for _, n := range nodes {
		if n.State != Waiting {
			continue
		}
		if n.Attest == "release" && n.Release == target && n.RelaysRunning {
			st.Done = append(st.Done, n.ID) // it got there on its own
			continue
		}
		waiting++
		if busy < maxUnavailable && n.Enabled {
			st.Ask = append(st.Ask, n.ID)
			busy++
			waiting--
		}
	}
	if waiting == 0 && busy == 0 {
		st.Finished = true
	}
	return st
}
