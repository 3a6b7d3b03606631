package httpapi

import (
	"strings"
	"testing"
)

// A held long poll's node keeps its ETag and digests in the cache, not
// its body; the byte count follows.
func TestConfigCacheDropBody(t *testing.T) {
	var c configCache
	served := []digest{{relay: "murazzano", sum: [32]byte{0xab}}}
	c.put(7, 3, `"3-x"`, []byte("{}\n"), served)
	c.put(8, 3, `"3-y"`, []byte("{ }\n"), nil)
	c.dropBody(7)
	c.dropBody(9) // not cached: nothing
	if etag, body, ok := c.get(7, 3); !ok || etag != `"3-x"` || body != nil {
		t.Errorf("after dropBody: %q %q %v", etag, body, ok)
	}
	if d, ok := c.servedAt(7, 3); !ok || servedMap(d)["murazzano"] != "ab"+strings.Repeat("0", 62) {
		t.Errorf("served digests lost: %v %v", d, ok)
	}
	if _, body, _ := c.get(8, 3); string(body) != "{ }\n" {
		t.Errorf("another node's body dropped: %q", body)
	}
	if c.bytes != 4 {
		t.Errorf("cache counts %d bytes, want 4", c.bytes)
	}
	c.put(7, 4, `"4-x"`, []byte("{}\n"), served)
	if c.bytes != 7 {
		t.Errorf("cache counts %d bytes after a new body, want 7", c.bytes)
	}
}
