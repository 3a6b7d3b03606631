package dbcheck

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/store"
	"patela/internal/api"
)

// A database the store built passes; each kind of damage the fault tests
// look for is reported.
func TestCheckFindsDamage(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(filepath.Join(t.TempDir(), "patela.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for _, p := range [][2]string{{"192.0.2.0/24", "192.0.2.1"}, {"2001:db8::/64", "2001:db8::1"}} {
		if err := st.AddPool(ctx, netip.MustParsePrefix(p[0]), netip.MustParseAddr(p[1]), now); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		ek, _ := softek.New()
		parsed, err := attest.NewEK(ek.Public)
		if err != nil {
			t.Fatal(err)
		}
		n, _, err := st.AddPending(ctx, parsed.ID, ek.Public, now, store.PendingLimits{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Allocate(ctx, n.ID, &api.Specs{CPUs: 3, MemoryBytes: 8 << 30}, now); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := Check(ctx, st); err != nil || len(p) != 0 {
		t.Fatalf("a sound database: %v %v", p, err)
	}
	for _, c := range []struct{ damage, want string }{
		{`UPDATE nodes SET cpus = 4 WHERE id = 1`, "the rules give 4"},
		{`UPDATE relays SET ipv6 = NULL, ipv6_pool = NULL WHERE node_id = 1 AND idx = 0`, "has no IPv6 address"},
		{`UPDATE relays SET idx = 7 WHERE node_id = 2 AND idx = 1`, "are not 0..2"},
		{`UPDATE relays SET ipv4 = '198.51.100.7' WHERE node_id = 2 AND idx = 0`, "is not an address of its pool"},
		{`DELETE FROM nodes WHERE id = 2`, "which does not exist"},
	} {
		// Foreign keys off for this connection only, to plant damage the
		// schema would otherwise refuse.
		conn, err := st.DB().Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, c.damage); err != nil {
			t.Fatalf("%s: %v", c.damage, err)
		}
		conn.ExecContext(ctx, `PRAGMA foreign_keys = ON`)
		conn.Close()
		p, err := Check(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(p, "\n"), c.want) {
			t.Errorf("after %s: problems %q lack %q", c.damage, p, c.want)
		}
	}
}
