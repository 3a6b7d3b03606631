package api

import "patela/internal/pcr"

// Remote attestation (issue 14): POST /v1/attest answers with a nonce, and
// POST /v1/attest/complete may carry a TPM2_Quote over the boot PCRs made
// with that nonce by the AK the credential was activated for.

// NonceSize is the size of the quote nonce the server sends.
const NonceSize = 32

// QuotePCRs are the SHA-256 PCRs the agent quotes: the firmware's (0-7),
// the kernel's EFI stub (8, 9), systemd-stub's (11, 12), stboot's (12-14)
// and the vault's lock PCR (15). PCR 10 (IMA, unused) comes along so the
// selection is one contiguous mask.
var QuotePCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// MaxEventLog bounds the firmware event log a quote carries (real
// machines with Secure Boot databases log some tens of KiB).
const MaxEventLog = 256 << 10

// MaxCompleteBody is the largest POST /v1/attest/complete body: a quote
// with the largest event log, base64-encoded, and room for the rest.
const MaxCompleteBody = MaxEventLog*4/3 + 16<<10

// Quote is the boot evidence of POST /v1/attest/complete.
type Quote struct {
	// Quoted is the TPMS_ATTEST the TPM signed (TPM2B_ATTEST contents).
	Quoted []byte `json:"quoted"`
	// Signature is the marshalled TPMT_SIGNATURE over Quoted.
	Signature []byte `json:"signature"`
	// PCRs are the SHA-256 values of the quoted PCRs; the quote's digest
	// proves them.
	PCRs map[int]pcr.Value `json:"pcrs"`
	// EventLog is the firmware's TCG event log
	// (/sys/kernel/security/tpm0/binary_bios_measurements), if any.
	EventLog []byte `json:"event_log,omitempty"`
}

// Error codes of remote attestation.
const (
	// CodeBadQuote (401): the quote does not verify (signature, nonce,
	// PCR digest); the challenge is spent.
	CodeBadQuote ErrorCode = "bad_quote"
	// CodeUnknownRelease (403): the server requires an active release
	// (serve --require-release) and the node's quote matches none, or
	// the node sent no quote.
	CodeUnknownRelease ErrorCode = "unknown_release"
)
