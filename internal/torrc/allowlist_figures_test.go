package torrc

import "testing"

// The figures of the allowlist for the closing note (go test -v -run
// TestAllowlistFigures).
func TestAllowlistFigures(t *testing.T) {
	counts := map[Owner]int{}
	for _, n := range torOptions {
		counts[OwnerOf(n)]++
	}
	if counts[OwnerAdmin] != len(Allowlist()) || counts[OwnerAdmin] == 0 {
		t.Fatalf("admin %d, allowlist %d", counts[OwnerAdmin], len(Allowlist()))
	}
	t.Logf("tor %s: %d options: admin %d, server %d, agent %d, forbidden %d",
		TorVersion, len(torOptions), counts[OwnerAdmin], counts[OwnerServer], counts[OwnerAgent], counts[OwnerForbidden])
}
