// Package api holds the wire types of the patela protocol (shared/API.md),
// shared by the agent and the config server so neither can drift from it.
package api

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// MaxBody is the largest request or response body either side accepts.
const MaxBody = 64 << 10

// Paths of the v1 endpoints.
const (
	PathAttest         = "/v1/attest"
	PathAttestComplete = "/v1/attest/complete"
	PathSpecs          = "/v1/node/specs"
	PathConfig         = "/v1/node/config"
	PathKeys           = "/v1/node/keys"
	PathStatus         = "/v1/node/status"
)

// AttestRequest is the body of POST /v1/attest. Publics are marshalled
// TPMT_PUBLIC structures; the certificate is DER.
type AttestRequest struct {
	EKPublic      []byte `json:"ek_public"`
	EKCertificate []byte `json:"ek_certificate,omitempty"`
	AKPublic      []byte `json:"ak_public"`
}

// AttestResponse carries a MakeCredential of a fresh secret to (EK, AK name).
type AttestResponse struct {
	NodeID          int64  `json:"node_id"`
	ChallengeID     string `json:"challenge_id"`
	CredentialBlob  []byte `json:"credential_blob"`
	EncryptedSecret []byte `json:"encrypted_secret"`
	// Nonce is what the node's quote must carry (quote.go); servers
	// before remote attestation send none, and then get no quote.
	Nonce []byte `json:"nonce,omitempty"`
}

// CompleteRequest is the body of POST /v1/attest/complete.
type CompleteRequest struct {
	ChallengeID string `json:"challenge_id"`
	Secret      []byte `json:"secret"`
	// Quote is the node's boot evidence (quote.go); older agents send
	// none and are unattested.
	Quote *Quote `json:"quote,omitempty"`
}

// CompleteResponse hands out the bearer token.
type CompleteResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	FirstBoot bool      `json:"first_boot"`
}

// Specs is the body of POST /v1/node/specs.
type Specs struct {
	CPUs        int    `json:"cpus"`
	MemoryBytes uint64 `json:"memory_bytes"`
	CPUModel    string `json:"cpu_model"`
	// Features lists what the agent can do beyond the first protocol
	// (family.go); absent from older agents.
	Features []string `json:"features,omitempty"`
}

// SpecsResponse says how many relays the node now has. When the address
// pools could not hold all it should have, RelaysWanted says how many
// that is and Unplaced how many are missing, with the reason; the node
// runs the RelayCount it got.
type SpecsResponse struct {
	RelayCount     int    `json:"relay_count"`
	RelaysWanted   int    `json:"relays_wanted,omitempty"`
	Unplaced       int    `json:"unplaced,omitempty"`
	UnplacedReason string `json:"unplaced_reason,omitempty"`
}

// NodeConfig is the node's whole desired state (GET /v1/node/config).
type NodeConfig struct {
	NodeID        int64   `json:"node_id"`
	Network       Network `json:"network"`
	PollIntervalS int     `json:"poll_interval_s"`
	// HeartbeatIntervalS is how often a node that long-polls sends a
	// heartbeat when nothing changes (issue 18; absent from older servers,
	// whose nodes send one every poll_interval_s round).
	HeartbeatIntervalS int     `json:"heartbeat_interval_s,omitempty"`
	Relays             []Relay `json:"relays"`
	// FamilyKeys are the Happy Families keys the relays' FamilyId lines
	// name (family.go); only for agents with FeatureFamilyKeys.
	FamilyKeys []FamilyKey `json:"family_keys,omitempty"`
	// Reboot, when set, is a rollout's turn for this node (rollout.go).
	Reboot *Reboot `json:"reboot,omitempty"`
}

// Network is the relay-side network of a node.
type Network struct {
	RelayInterface string   `json:"relay_interface"`
	IPv4Gateway    string   `json:"ipv4_gateway"`
	IPv6Gateway    string   `json:"ipv6_gateway"`
	DNS            []string `json:"dns"`
}

// Relay is one relay's desired state. Addresses are CIDR prefixes; IPv6 may
// be empty.
type Relay struct {
	Name        string `json:"name"`
	IPv4        string `json:"ipv4"`
	IPv6        string `json:"ipv6"`
	ORPort      int    `json:"or_port"`
	UID         int    `json:"uid"`
	Torrc       string `json:"torrc"`
	TorrcSHA256 string `json:"torrc_sha256"`
}

// KeyBundle is the ciphertext mirror of a node's relay keys. The server
// cannot decrypt it.
type KeyBundle struct {
	Bundle  []byte `json:"bundle"`
	Version uint64 `json:"version"`
}

// Status is the heartbeat body (POST /v1/node/status).
type Status struct {
	BootID  string        `json:"boot_id"`
	UptimeS int64         `json:"uptime_s"`
	Relays  []RelayStatus `json:"relays"`
	// Metrics is the node's metrics summary (metrics.go); optional.
	Metrics *NodeMetrics `json:"metrics,omitempty"`
}

// RelayStatus is one relay's state as the agent sees it.
type RelayStatus struct {
	Name        string     `json:"name"`
	Fingerprint string     `json:"fingerprint"`
	Ed25519ID   string     `json:"ed25519_id"`
	State       RelayState `json:"state"`
	Restarts    int        `json:"restarts"`
	// RefusedOptions are the options of the served torrc the node did
	// not pass to tor (not on its allowlist), in tor's spelling.
	RefusedOptions []string `json:"refused_options,omitempty"`
	// KeysUnsaved: the relay's current keys are not yet in the node's
	// vault storage (a save failed and is being retried); a reboot now
	// would lose its identity.
	KeysUnsaved bool `json:"keys_unsaved,omitempty"`
	// TorrcSHA256 is the torrc_sha256 of the served torrc the relay runs
	// (family.go); absent from older agents.
	TorrcSHA256 string `json:"torrc_sha256,omitempty"`
}

// Equal reports whether two relay reports say the same.
func (r RelayStatus) Equal(o RelayStatus) bool {
	return r.Name == o.Name && r.Fingerprint == o.Fingerprint && r.Ed25519ID == o.Ed25519ID &&
		r.State == o.State && r.Restarts == o.Restarts && r.KeysUnsaved == o.KeysUnsaved && r.TorrcSHA256 == o.TorrcSHA256 &&
		slices.Equal(r.RefusedOptions, o.RefusedOptions)
}

// Error is every non-2xx body. NodeID is set with the node-state codes
// (pending, disabled, banned).
type Error struct {
	Message string    `json:"error"`
	Code    ErrorCode `json:"code"`
	NodeID  int64     `json:"node_id,omitempty"`

	// Status is the HTTP status the error came with (client side only).
	Status int `json:"-"`
	// RetryAfter is the server's Retry-After hint (client side only).
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	}
	return string(e.Code) + ": " + e.Message
}

// IsCode reports whether err is an *Error with the given code.
func IsCode(err error, code ErrorCode) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
