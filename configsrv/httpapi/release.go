package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"patela/configsrv/store"
	"patela/configsrv/wirejson"
	"patela/internal/api"
)

func decodeRelease(r io.Reader) (*api.ReleaseRequest, error) {
	var v api.ReleaseRequest
	if err := wirejson.Decode(r, &v); err != nil {
		return nil, err
	}
	switch v.Sealing {
	case "release":
		if len(v.PCRs) == 0 {
			return nil, errors.New("pcrs are required with sealing release")
		}
		for n := range v.PCRs {
			if n < 0 || n > 15 {
				return nil, fmt.Errorf("pcrs: %d is not one of PCRs 0-15", n)
			}
		}
	case "unmeasured":
		if len(v.PCRs) != 0 {
			return nil, errors.New("pcrs are for sealing release only")
		}
	default:
		return nil, fmt.Errorf("sealing %q: want release or unmeasured", v.Sealing)
	}
	return &v, nil
}

// release records how the node seals its vault and, for release sealing,
// answers with the active release whose policy PCRs the node's PCRs have.
// The node's TPM checks the approval: a server that lies can only make a
// node refuse to start.
func (s *Server) release(w http.ResponseWriter, r *http.Request, id int64) {
	req, err := decodeRelease(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	if req.Sealing == "unmeasured" {
		if err := s.Store.RecordSealing(r.Context(), id, req.Sealing, ""); err != nil {
			s.internal(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, &api.ReleaseResponse{})
		return
	}
	rels, err := s.Store.Releases(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	var match *store.Release
	for i := range rels {
		if rels[i].Record.Matches(req.PCRs) {
			match = &rels[i]
			break
		}
	}
	name := ""
	if match != nil && match.Active() {
		name = match.Name
	}
	if err := s.Store.RecordSealing(r.Context(), id, req.Sealing, name); err != nil {
		s.internal(w, r, err)
		return
	}
	if name != "" {
		writeJSON(w, http.StatusOK, &api.ReleaseResponse{Release: match.Record})
		return
	}
	kind := ""
	if match != nil {
		kind = match.Kind
	}
	boot := activeNames(rels, kind)
	if match != nil {
		s.log().Warn("node booted a retired release", "node", id, "release", match.Name)
		writeErr(w, http.StatusGone, api.CodeReleaseRetired,
			fmt.Sprintf("release %s is retired, its approval is no longer served: boot %s", match.Name, boot))
		return
	}
	s.log().Warn("node's PCRs match no registered release", "node", id)
	writeErr(w, http.StatusNotFound, api.CodeReleaseUnknown,
		"this machine's PCRs match no registered release (an image that was never approved, or a release not added with `configsrv release add`): boot "+boot)
}

// activeNames says which releases a node may boot: the active ones of
// kind (all kinds if ""), newest first.
func activeNames(rels []store.Release, kind string) string {
	var names []string
	for _, r := range rels {
		if r.Active() && (kind == "" || r.Kind == kind) {
			names = append(names, fmt.Sprintf("%s (%s)", r.Name, r.Kind))
		}
	}
	if len(names) == 0 {
		return "an approved release (none is registered)"
	}
	return "one of the active releases: " + strings.Join(names, ", ")
}
