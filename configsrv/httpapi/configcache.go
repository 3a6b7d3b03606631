package httpapi

import (
	"sync"
)

// configCache keeps each node's rendered config for one database
// generation (store.ConfigGeneration): a fleet polls far more often than
// administrators change anything, and resolving torrc cascades is most of
// a fetch's work otherwise.
type configCache struct {
	mu  sync.Mutex
	gen int64
	m   map[int64][]byte
}

const maxCachedConfigs = 1 << 16

func (c *configCache) get(gen, node int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return nil
	}
	return c.m[node]
}

func (c *configCache) put(gen, node int64, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.m == nil || len(c.m) >= maxCachedConfigs {
		if gen < c.gen {
			return // a slower request resolved an older generation
		}
		c.gen, c.m = gen, map[int64][]byte{}
	}
	c.m[node] = body
}
