package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/pcr"
	"patela/internal/release"
)

// TestRolloutCommands: the rollout commands' refusals change nothing
// (exit 1 or 2, no audit row); start, status and stop do what they say.
func TestRolloutCommands(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n, _, _ := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-one"))), []byte("ek-one"), time.Now(), store.PendingLimits{}, nil)
	st.SetNodeState(ctx, n.ID, api.NodeEnabled)
	st.Close()
	r, err := release.New("rel-B", release.KindUKI, map[int]pcr.Value{4: {4}, 11: {11}, 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r.Approve(key)
	b, _ := r.Marshal()
	f := filepath.Join(t.TempDir(), "rel-B.json")
	os.WriteFile(f, b, 0o644)
	ok(t, db, "release", "add", f)

	audits := auditCount(t, db)
	usageErr(t, db, "", "rollout", "start")
	usageErr(t, db, "at least 1", "rollout", "start", "rel-B", "--max-unavailable", "0")
	fails(t, db, "not found", "rollout", "start", "rel-C")
	fails(t, db, "no rollout was ever started", "rollout", "status")
	fails(t, db, "no rollout is running", "rollout", "stop")
	if got := auditCount(t, db); got != audits {
		t.Fatalf("refused commands wrote %d audit rows", got-audits)
	}
	if out := ok(t, db, "rollout", "start", "rel-B"); !strings.Contains(out, "1 nodes, 1 at a time") {
		t.Errorf("start: %q", out)
	}
	fails(t, db, "is running", "rollout", "start", "rel-B")
	out := ok(t, db, "rollout", "status")
	if !strings.Contains(out, "to release rel-B: running") || !strings.Contains(out, fmt.Sprintf("%d  ", n.ID)) ||
		!strings.Contains(out, "unattested") {
		t.Errorf("status:\n%s", out)
	}
	ok(t, db, "rollout", "stop")
	if out := ok(t, db, "rollout", "status"); !strings.Contains(out, "stopped: stopped by an administrator") {
		t.Errorf("status after stop:\n%s", out)
	}
	if got := auditCount(t, db); got != audits+2 {
		t.Errorf("start and stop wrote %d audit rows, want 2", got-audits)
	}
}
