package httpapi

import (
	"context"
	"sync"

	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
)

// enabledNodes remembers which node each EK identity was when it was last
// seen enabled, so a node's attestation reads nothing from the database
// before its challenge: the completion's transaction reads the node
// anyway, and refuses it there if an administrator (from another
// process, unseen here) removed, re-keyed, disabled or banned it since.
// A completion refused so forgets the EK, and the node's next attestation
// is answered from the database again. A reading from a connection that
// another has written behind is most of what a cached read costs.
type enabledNodes struct {
	mu sync.Mutex
	m  map[ekid.ID]int64
}

func (e *enabledNodes) get(ek ekid.ID) (int64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id, ok := e.m[ek]
	return id, ok
}

func (e *enabledNodes) set(ek ekid.ID, id int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil || len(e.m) >= 1<<20 {
		e.m = map[ekid.ID]int64{}
	}
	e.m[ek] = id
}

func (e *enabledNodes) forget(ek ekid.ID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.m, ek)
}

// nodeOf is the node of EK identity ek as an attestation needs it (its
// id and state): enabled as last seen, or as the database has it.
func (s *Server) nodeOf(ctx context.Context, ek ekid.ID) (*store.Node, error) {
	if id, ok := s.enabled.get(ek); ok {
		return &store.Node{ID: id, EKHash: ek[:], State: api.NodeEnabled}, nil
	}
	n, err := s.Store.NodeByEK(ctx, ek)
	if err == nil && n.State == api.NodeEnabled {
		s.enabled.set(ek, n.ID)
	}
	return n, err
}
