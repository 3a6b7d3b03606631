package api

// Reboot is a rollout's request in the node's config (NodeConfig.Reboot):
// the node whose current boot is BootID drains its relays (SIGINT, tor's
// ShutdownWaitLength) and reboots; what it boots next is up to stboot or
// the hypervisor. A node in another boot ignores it, so a request the
// server has not yet withdrawn never reboots a node twice.
type Reboot struct {
	BootID  string `json:"boot_id"`
	Release string `json:"release"` // the release the rollout moves it to
}
