package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"

	"patela/configsrv/resolve"
	"patela/configsrv/store"
	"patela/internal/api"
)

// configCache keeps each node's newest rendered config with its ETag,
// under the node's config generation (store.NodeConfigGen): a fleet asks
// far more often than administrators change anything, and resolving
// torrc cascades is most of a fetch's work otherwise. Bodies are bounded
// in bytes; ETags stay when a body is dropped, since a long poll that
// finds nothing changed needs only the tag.
type configCache struct {
	mu    sync.Mutex
	m     map[int64]*rendered
	bytes int
}

// rendered is one node's config at one generation; body is nil once
// dropped to bound the cache. served is each relay's torrc_sha256, which
// heartbeats are compared with, kept as bytes in a slice: every node has
// an entry, and a map of hex strings per node was half a kilobyte.
type rendered struct {
	gen    int64
	etag   string
	body   []byte
	served []digest
}

// digest is one relay's torrc_sha256 in a rendered config.
type digest struct {
	relay string
	sum   [sha256.Size]byte
}

// digestsOf is the torrc_sha256 of each relay of c.
func digestsOf(c *api.NodeConfig) ([]digest, error) {
	d := make([]digest, len(c.Relays))
	for i, r := range c.Relays {
		d[i].relay = r.Name
		if len(r.TorrcSHA256) != 2*sha256.Size {
			return nil, fmt.Errorf("relay %s: torrc_sha256 %q is not a SHA-256", r.Name, r.TorrcSHA256)
		}
		if _, err := hex.Decode(d[i].sum[:], []byte(r.TorrcSHA256)); err != nil {
			return nil, fmt.Errorf("relay %s: torrc_sha256: %w", r.Name, err)
		}
	}
	return d, nil
}

// servedMap is d as the store compares heartbeats with it: relay name →
// hex torrc_sha256.
func servedMap(d []digest) map[string]string {
	m := make(map[string]string, len(d))
	for _, x := range d {
		m[x.relay] = hex.EncodeToString(x.sum[:])
	}
	return m
}

const (
	maxCachedNodes = 1 << 17
	// Bodies matter for repeated plain GETs (older agents) only: a long
	// poll needs a node's body once per change.
	maxCachedBytes = 8 << 20
)

// etagOf is the entity tag of body at gen: the generation says when to
// look again, the digest keeps a tag from matching another body should
// generations repeat (a database restored from a backup).
func etagOf(gen int64, body []byte) string {
	h := sha256.Sum256(body)
	return `"` + strconv.FormatInt(gen, 10) + "-" + hex.EncodeToString(h[:8]) + `"`
}

func (c *configCache) get(node, gen int64) (etag string, body []byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[node]
	if e == nil || e.gen != gen {
		return "", nil, false
	}
	return e.etag, e.body, true
}

// servedAt returns the relays' torrc_sha256 of node's config at gen, if
// cached.
func (c *configCache) servedAt(node, gen int64) ([]digest, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[node]
	if e == nil || e.gen != gen {
		return nil, false
	}
	return e.served, true
}

func (c *configCache) put(node, gen int64, etag string, body []byte, served []digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedNodes {
		c.m, c.bytes = map[int64]*rendered{}, 0
	}
	if e := c.m[node]; e != nil {
		if e.gen > gen {
			return // a slower request resolved an older generation
		}
		c.bytes -= len(e.body)
	}
	c.m[node] = &rendered{gen: gen, etag: etag, body: body, served: served}
	c.bytes += len(body)
	if c.bytes > maxCachedBytes {
		// Drop bodies (any: map order) down to three quarters.
		for n, e := range c.m {
			if c.bytes <= maxCachedBytes*3/4 {
				break
			}
			if n != node && e.body != nil {
				c.bytes -= len(e.body)
				e.body = nil
			}
		}
	}
}

// dropBody forgets node's body, keeping its ETag and served digests: a
// node whose long poll is held has that body and will need the next one,
// so ten thousand waiting nodes need not keep ten thousand bodies.
func (c *configCache) dropBody(node int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[node]; e != nil && e.body != nil {
		c.bytes -= len(e.body)
		e.body = nil
	}
}

// fleetCache keeps the fleet every relay's family lines come from
// (resolve.Fleet) for one global config generation
// (store.ConfigGeneration): it reads every relay's fingerprint, so it is
// loaded once per change anywhere, not once per node.
type fleetCache struct {
	mu    sync.Mutex
	gen   int64
	fleet *resolve.Fleet
}

// at returns the fleet at the store's current generation, loading it on
// a change. Loaded outside the lock: concurrent misses may load it
// twice, but a slow load never stalls a cached answer.
func (c *fleetCache) at(ctx context.Context, st *store.Store) (*resolve.Fleet, error) {
	gen, err := st.ConfigGeneration(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.fleet != nil && c.gen == gen {
		f := c.fleet
		c.mu.Unlock()
		return f, nil
	}
	c.mu.Unlock()
	f, err := resolve.LoadFleet(ctx, st)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.fleet == nil || gen > c.gen {
		c.gen, c.fleet = gen, f
	}
	c.mu.Unlock()
	return f, nil
}
