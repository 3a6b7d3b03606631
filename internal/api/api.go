// Package api holds the wire types of the patela protocol (shared/API.md),
// shared by the agent and the config server so neither can drift from it.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
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

// Decode reads one JSON value into v the way both sides must: at most
// MaxBody bytes, no unknown fields, nothing after the value.
func Decode(r io.Reader, v any) error { return DecodeLimit(r, v, MaxBody) }

// DecodeLimit is Decode for a body of at most limit bytes.
func DecodeLimit(r io.Reader, v any, limit int) error {
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if len(data) > limit {
		return fmt.Errorf("body is larger than %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	if dec.More() {
		return errors.New("malformed JSON: data after the value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("malformed JSON: data after the value")
	}
	// encoding/json matches field names case-insensitively and lets the
	// last of two equal keys win; the protocol names each field exactly
	// once, so "EK_PUBLIC" is an unknown field and a repeated key is
	// refused (two parsers could read different values from one body).
	return exactKeys(data, reflect.TypeOf(v))
}

// exactKeys checks, in data (one JSON value that encoding/json has just
// decoded, so well formed), that no object repeats a key and, where t
// describes a struct, that every key is spelled exactly as one of its
// json tags, recursing into arrays, maps and nested structs. A byte scan:
// json.Decoder.Token allocates for every token, which made this check as
// dear as the decoding itself.
func exactKeys(data []byte, t reflect.Type) error {
	ks := keyScan{data: data}
	return ks.value(t)
}

type keyScan struct {
	data []byte
	i    int
}

func (s *keyScan) ws() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str reads the string at s.i (its opening quote) and returns its raw
// bytes and whether they need unescaping to be the string's value.
func (s *keyScan) str() (raw []byte, plain bool) {
	s.i++ // '"'
	start, plain := s.i, true
	for s.i < len(s.data) {
		switch c := s.data[s.i]; {
		case c == '"':
			raw = s.data[start:s.i]
			s.i++
			return raw, plain
		case c == '\\':
			plain = false
			s.i += 2
		case c >= 0x80:
			// encoding/json replaces invalid UTF-8 with U+FFFD: let it
			// say what the key is.
			plain = false
			s.i++
		default:
			s.i++
		}
	}
	return s.data[start:], plain
}

func (s *keyScan) value(t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	s.ws()
	if s.i >= len(s.data) {
		return errors.New("malformed JSON: unexpected end")
	}
	switch s.data[s.i] {
	case '{':
		s.i++
		var fields map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			fields = jsonFields(t)
		}
		var seen []string
		var seenSet map[string]bool // past a few keys, so a huge object stays linear
		for {
			s.ws()
			if s.i >= len(s.data) {
				return errors.New("malformed JSON: unexpected end")
			}
			if s.data[s.i] == '}' {
				s.i++
				return nil
			}
			if s.data[s.i] == ',' {
				s.i++
				s.ws()
			}
			raw, plain := s.str()
			k := string(raw)
			if !plain {
				if err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &k); err != nil {
					return fmt.Errorf("malformed JSON: %w", err)
				}
			}
			dup := seenSet[k]
			if seenSet == nil {
				dup = slices.Contains(seen, k)
				if seen = append(seen, k); len(seen) > 16 {
					seenSet = map[string]bool{}
					for _, k := range seen {
						seenSet[k] = true
					}
				}
			} else {
				seenSet[k] = true
			}
			if dup {
				return fmt.Errorf("malformed JSON: duplicate key %q", k)
			}
			var ft reflect.Type
			switch {
			case fields != nil:
				var ok bool
				if ft, ok = fields[k]; !ok {
					return fmt.Errorf("malformed JSON: unknown field %q", k)
				}
			case t != nil && t.Kind() == reflect.Map:
				ft = t.Elem()
			}
			s.ws()
			s.i++ // ':'
			if err := s.value(ft); err != nil {
				return err
			}
		}
	case '[':
		s.i++
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for {
			s.ws()
			if s.i >= len(s.data) {
				return errors.New("malformed JSON: unexpected end")
			}
			switch s.data[s.i] {
			case ']':
				s.i++
				return nil
			case ',':
				s.i++
			}
			if err := s.value(et); err != nil {
				return err
			}
		}
	case '"':
		s.str()
	default: // a number, true, false or null
		for s.i < len(s.data) {
			switch s.data[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return nil
			}
			s.i++
		}
	}
	return nil
}

// fieldsOf caches jsonFields by type: every request would build it again.
var fieldsOf sync.Map // reflect.Type -> map[string]reflect.Type

// jsonFields maps the json names of struct t's fields to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if f, ok := fieldsOf.Load(t); ok {
		return f.(map[string]reflect.Type)
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	fieldsOf.Store(t, fields)
	return fields
}
