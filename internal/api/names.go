package api

import (
	"errors"
	"net/http"
)

// ErrorCode is the machine word of an Error (docs/protocol.md lists them).
type ErrorCode string

// Error codes carried in Error.Code.
const (
	CodeBadRequest       ErrorCode = "bad_request"
	CodePending          ErrorCode = "pending"
	CodeBanned           ErrorCode = "banned"
	CodeDisabled         ErrorCode = "disabled"
	CodeBadAK            ErrorCode = "bad_ak"
	CodeBadEK            ErrorCode = "bad_ek"
	CodeEKUntrusted      ErrorCode = "ek_untrusted"
	CodeRateLimited      ErrorCode = "rate_limited"
	CodePendingFull      ErrorCode = "pending_full" // 429: too many nodes wait for an administrator
	CodeBadSecret        ErrorCode = "bad_secret"
	CodeChallengeExpired ErrorCode = "challenge_expired"
	CodeUnauthorized     ErrorCode = "unauthorized"
	CodeNotFound         ErrorCode = "not_found"
	CodeConflict         ErrorCode = "conflict"
	CodeExhausted        ErrorCode = "exhausted"
	CodeUnsafeConfig     ErrorCode = "unsafe_config"
	CodeInternal         ErrorCode = "internal"
)

// NodeState is a node's administrative state on the config server.
type NodeState string

// Node states.
const (
	NodePending  NodeState = "pending"  // seen, waiting for an administrator
	NodeEnabled  NodeState = "enabled"  // may attest and fetch its config
	NodeDisabled NodeState = "disabled" // refused until enabled again
	NodeBanned   NodeState = "banned"   // refused for good
)

// NodeStates lists every node state, for validation.
var NodeStates = []NodeState{NodePending, NodeEnabled, NodeDisabled, NodeBanned}

// RefusalCode is the error code a node in state st is refused with.
func (st NodeState) RefusalCode() ErrorCode {
	switch st {
	case NodeBanned:
		return CodeBanned
	case NodePending:
		return CodePending
	}
	return CodeDisabled
}

// RelayState is a relay's state as the agent reports it in the heartbeat.
type RelayState string

// Relay states.
const (
	RelayStarting  RelayState = "starting"  // tor started, READY=1 not yet received
	RelayRunning   RelayState = "running"   // READY=1 received
	RelayReloading RelayState = "reloading" // SIGHUP sent, READY=1 pending
	RelayStopping  RelayState = "stopping"
	RelayBackoff   RelayState = "backoff" // exited, restart pending
	RelayFailed    RelayState = "failed"  // crash loop: no restart until the config changes
	RelayStopped   RelayState = "stopped"
	RelayRefused   RelayState = "refused" // the agent would not use the relay's configuration
)

// Known reports whether s is one of the states above.
func (s RelayState) Known() bool {
	switch s {
	case RelayStarting, RelayRunning, RelayReloading, RelayStopping, RelayBackoff, RelayFailed, RelayStopped, RelayRefused:
		return true
	}
	return false
}

// Permanent reports whether retrying the same request cannot succeed
// until an administrator acts or the node changes: the node is banned, or
// the server refuses what this node is (its EK, its AK, the request).
func (e *Error) Permanent() bool {
	switch e.Code {
	case CodeBanned, CodeBadAK, CodeBadEK, CodeBadRequest:
		return true
	}
	return false
}

// Revoked reports whether the server withdrew the node's right to act
// (disabled, banned, or sent back to pending): its relays must stop.
func (e *Error) Revoked() bool {
	switch e.Code {
	case CodeDisabled, CodeBanned, CodePending:
		return e.Status == 0 || e.Status == http.StatusForbidden
	}
	return false
}

// TokenRefused reports whether the server refused the bearer token itself
// (expired, forged, or its node gone): the agent attests again.
func (e *Error) TokenRefused() bool { return e.Status == http.StatusUnauthorized }

// AsError returns err's *Error, if it is one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
