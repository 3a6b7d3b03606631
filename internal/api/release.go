package api

import (
	"context"
	"net/http"

	"patela/internal/pcr"
	"patela/internal/release"
)

// PathRelease is where a node reports its sealing mode and, sealing to
// the release policy key, fetches the approval of the release it booted.
const PathRelease = "/v1/node/release"

// Error codes of PathRelease.
const (
	// CodeReleaseUnknown (404): no registered release has this node's PCRs.
	CodeReleaseUnknown ErrorCode = "release_unknown"
	// CodeReleaseRetired (410): the node booted a retired release.
	CodeReleaseRetired ErrorCode = "release_retired"
)

// ReleaseRequest is the body of POST /v1/node/release.
type ReleaseRequest struct {
	// Sealing is the agent's sealing mode: "release" or "unmeasured".
	Sealing string `json:"sealing"`
	// PCRs are the node's SHA-256 PCRs 0-15 before the vault opens
	// (release sealing only). They are not evidence (a TPM quote would
	// be): the server only picks the matching approval, which the TPM
	// checks.
	PCRs map[int]pcr.Value `json:"pcrs,omitempty"`
}

// ReleaseResponse answers a release-sealing node with the active release
// whose policy PCRs equal its PCRs, approval included. An unmeasured node
// gets an empty answer.
type ReleaseResponse struct {
	Release *release.Release `json:"release,omitempty"`
}

// Release reports the sealing mode and fetches the approval.
func (c *Client) Release(ctx context.Context, token string, r *ReleaseRequest) (*ReleaseResponse, error) {
	var out ReleaseResponse
	return &out, c.do(ctx, http.MethodPost, PathRelease, token, r, &out)
}
