package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
)

// keysShow runs `keys show ID --json`.
func keysShow(t *testing.T, db, id string) keysView {
	t.Helper()
	out := ok(t, db, "keys", "show", id, "--json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("keys show --json: %v\n%s", err, out)
	}
	for _, k := range []string{"bundle", "ciphertext"} {
		if _, ok := raw[k]; ok {
			t.Fatalf("keys show --json prints the %s:\n%s", k, out)
		}
	}
	var v keysView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestKeysShowDrop: the operator's way out after a TPM clear. show reports
// the mirror copy without its contents; drop needs --yes, refuses unknown
// nodes and nodes without a bundle, is audited, and deletes only the
// bundle (the node keeps its relays, names and addresses). After a drop
// the node's next PUT is accepted at any version, and the "version must
// grow" rule holds again from there.
func TestKeysShowDrop(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "p.db")
	fails(t, db, "no such file", "keys", "show", "1")
	if _, err := os.Stat(db); err == nil {
		t.Fatal("keys show created the database")
	}

	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	n1, _, err := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-one"))), []byte("ek-one"), time.Now(), store.PendingLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-two"))), []byte("ek-two"), time.Now(), store.PendingLimits{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.AddPool(ctx, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("192.0.2.1"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if a, err := st.Allocate(ctx, n1.ID, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, time.Now()); err != nil || a.After != 2 {
		t.Fatalf("allocate: %+v %v", a, err)
	}
	cipher := make([]byte, 1000)
	rand.Read(cipher)
	updated := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	for v := uint64(1); v <= 3; v++ {
		if err := st.PutKeyBundle(ctx, n1.ID, &api.KeyBundle{Bundle: cipher, Version: v}, updated); err != nil {
			t.Fatal(err)
		}
	}
	relaysBefore, _ := st.Relays(ctx, n1.ID)
	st.Close()

	// show: version, size, time; never the contents.
	out := ok(t, db, "keys", "show", "1")
	for _, want := range []string{"version  3", "1000 bytes", updated.Format(time.RFC3339)} {
		if !strings.Contains(out, want) {
			t.Errorf("keys show 1: no %q in\n%s", want, out)
		}
	}
	for _, enc := range []string{base64.StdEncoding.EncodeToString(cipher), hex.EncodeToString(cipher)} {
		if strings.Contains(out, enc[:24]) {
			t.Fatalf("keys show prints the ciphertext:\n%s", out)
		}
	}
	if v := keysShow(t, db, "1"); !v.Present || v.NodeID != 1 || v.KeyBundleInfo == nil || v.Version != 3 || v.Size != 1000 || !v.Updated.Equal(updated) {
		t.Fatalf("keys show 1 --json: %+v", v)
	}
	if out := ok(t, db, "keys", "show", "2"); !strings.Contains(out, "no key bundle") {
		t.Fatalf("keys show 2 (no bundle): %s", out)
	}
	if v := keysShow(t, db, "2"); v.Present || v.NodeID != 2 || v.KeyBundleInfo != nil {
		t.Fatalf("keys show 2 --json: %+v", v)
	}

	// Refusals change nothing and write no audit row.
	audits := auditCount(t, db)
	usageErr(t, db, "--yes", "keys", "drop", "1")
	fails(t, db, "node 99: not found", "keys", "drop", "99", "--yes")
	fails(t, db, "node 99: not found", "keys", "show", "99")
	fails(t, db, "no key bundle", "keys", "drop", "2", "--yes")
	fails(t, db, "not a node id", "keys", "drop", "abc", "--yes")
	usageErr(t, db, "takes 1 argument", "keys", "drop", "--yes")
	usageErr(t, db, "unknown command keys frob", "keys", "frob", "1")
	usageErr(t, db, "keys needs a subcommand", "keys")
	if n := auditCount(t, db); n != audits {
		t.Fatalf("refused keys commands wrote %d audit rows", n-audits)
	}
	if v := keysShow(t, db, "1"); !v.Present || v.Version != 3 {
		t.Fatalf("a refused drop changed the bundle: %+v", v)
	}

	// drop.
	out = ok(t, db, "keys", "drop", "1", "--yes")
	for _, want := range []string{"version 3", "dropped", "new identities", "init tpm clear-vault --yes"} {
		if !strings.Contains(out, want) {
			t.Errorf("keys drop: no %q in %s", want, out)
		}
	}
	if out := ok(t, db, "keys", "show", "1"); !strings.Contains(out, "no key bundle") {
		t.Fatalf("keys show after drop: %s", out)
	}
	if v := keysShow(t, db, "1"); v.Present {
		t.Fatalf("keys show --json after drop: %+v", v)
	}
	var log []store.AuditEntry
	if err := json.Unmarshal([]byte(ok(t, db, "audit", "--json")), &log); err != nil {
		t.Fatal(err)
	}
	if n := auditCount(t, db); n != audits+1 {
		t.Fatalf("drop wrote %d audit rows, want 1", n-audits)
	}
	if a := log[0]; a.Action != "keys.drop" || a.Target != "node:1" || !strings.HasPrefix(a.Actor, "admin") ||
		!strings.Contains(a.Details, "version 3, 1000 bytes") {
		t.Fatalf("audit row: %+v", a)
	}
	fails(t, db, "no key bundle", "keys", "drop", "1", "--yes")

	// Only the bundle went: both nodes, node 1's relays, names and
	// addresses are as they were.
	st, err = store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if nodes, _ := st.Nodes(ctx); len(nodes) != 2 {
		t.Fatalf("nodes after drop: %+v", nodes)
	}
	relaysAfter, _ := st.Relays(ctx, n1.ID)
	b1, _ := json.Marshal(relaysBefore)
	b2, _ := json.Marshal(relaysAfter)
	if len(relaysAfter) != 2 || !bytes.Equal(b1, b2) {
		t.Fatalf("relays changed by keys drop:\n%s\n%s", b1, b2)
	}

	// The fresh vault's first PUT (version 1, below the dropped 3) is
	// accepted; from there versions must grow again.
	if err := st.PutKeyBundle(ctx, n1.ID, &api.KeyBundle{Bundle: []byte("new"), Version: 1}, time.Now()); err != nil {
		t.Fatalf("first PUT after drop: %v", err)
	}
	if err := st.PutKeyBundle(ctx, n1.ID, &api.KeyBundle{Bundle: []byte("old"), Version: 1}, time.Now()); !errors.Is(err, store.ErrStale) {
		t.Fatalf("same version again after drop: %v, want ErrStale", err)
	}
	if err := st.PutKeyBundle(ctx, n1.ID, &api.KeyBundle{Bundle: []byte("newer"), Version: 2}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if info, err := st.KeyBundleInfo(ctx, n1.ID); err != nil || info.Version != 2 || info.Size != 5 {
		t.Fatalf("bundle after drop and two PUTs: %+v %v", info, err)
	}
	if _, err := st.KeyBundleInfo(ctx, 2); !errors.Is(err, store.ErrNoKeyBundle) || !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("node 2 bundle info: %v", err)
	}
	if _, err := st.DropKeyBundle(ctx, 99); !errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNoKeyBundle) {
		t.Fatalf("drop for an unknown node: %v", err)
	}
}
