package reconcile

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"patela/init/tor"
	"patela/init/tpmdev"
	"patela/init/vault"
	"patela/internal/api"
	"patela/internal/swtpmtest"
)

type keysView struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	KeysUnsaved bool   `json:"keys_unsaved"`
}

// testVault is the real vault on a swtpm of the test's own, keeping its
// bundle in NV, or in mirror (NV capped below one relay) when set.
func testVault(tb testing.TB, mirror vault.Mirror) *vault.Vault {
	tb.Helper()
	swtpmtest.Require(tb)
	tp := swtpmtest.StartState(tb, tb.TempDir())
	dev, err := tpmdev.Open("unix:" + tp.Socket)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dev.Close() })
	opts := vault.Options{EKName: []byte("test EK name"), NoLock: true}
	if mirror != nil {
		opts.Mirror, opts.NVMaxBytes = mirror, 256
	}
	v, err := vault.Open(context.Background(), dev, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func serverKeys(t *testing.T, w *world) map[string]keysView {
	t.Helper()
	var rs []keysView
	if err := json.Unmarshal([]byte(w.s.Admin(t, "relay", "list", "--node", w.ids, "--json")), &rs); err != nil {
		t.Fatal(err)
	}
	m := map[string]keysView{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

// Relay keys through config changes and a failing key store, the whole
// agent against the real server, with the real vault on swtpm keeping
// its bundle in the server's mirror (NV capped below one relay): a save
// that fails (the mirror refuses PUT) is retried with backoff until it
// succeeds, and meanwhile the server shows that a reboot would lose the
// relay's identity; a relay the server takes away (max_relays lowered)
// is retired, not deleted, and comes back with the same fingerprint.
func TestKeysThroughConfigChanges(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	var v *vault.Vault
	w := newWorld(t, 1, 300*time.Millisecond, func(w *world, o *tor.Options) {
		c, _ := w.s.Proxy(t, func(rw http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodPut && r.URL.Path == api.PathKeys && failing.Load() {
				http.Error(rw, `{"error":"store down","code":"internal"}`, http.StatusInternalServerError)
				return true
			}
			return false
		})
		w.tokens.Invalidate("not-a-token") // the vault opens after attestation, with a good token
		v = testVault(t, vault.ServerMirror{Client: c, Tokens: w.tokens})
		o.Keys, o.SaveRetryMin, o.SaveRetryMax = v, 100*time.Millisecond, 400*time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var first tor.Status
	waitFor(t, "the relay running with its keys unsaved", func() bool {
		st := w.sup.Status()
		if len(st) == 1 && st[0].State == api.RelayRunning && st[0].KeysUnsaved {
			first = st[0]
			return true
		}
		return false
	})
	waitFor(t, "the server showing the unsaved keys", func() bool { return serverKeys(t, w)[first.Name].KeysUnsaved })
	if out := w.s.Admin(t, "relay", "list"); !strings.Contains(out, "a reboot now would lose this relay's identity") {
		t.Errorf("relay list does not warn:\n%s", out)
	}
	if !strings.Contains(w.logs.String(), "retrying") {
		t.Error("the failed save is not logged as retried")
	}

	failing.Store(false) // the store is back: the saver's next retry succeeds
	waitFor(t, "the keys saved and the server told", func() bool {
		st, _ := statusOf(w.sup, first.Name)
		return !st.KeysUnsaved && !serverKeys(t, w)[first.Name].KeysUnsaved
	})
	waitFor(t, "the fingerprint reported", func() bool { return serverKeys(t, w)[first.Name].Fingerprint != "" })
	first, _ = statusOf(w.sup, first.Name)

	// A second relay, then the server takes it away and gives it back.
	w.s.Admin(t, "node", "set", w.ids, "max_relays", "2")
	var second tor.Status
	waitFor(t, "a second relay running, saved", func() bool {
		for _, st := range w.sup.Status() {
			if st.Name != first.Name && st.State == api.RelayRunning && st.Fingerprint != "" && !st.KeysUnsaved {
				second = st
				return true
			}
		}
		return false
	})
	w.s.Admin(t, "node", "set", w.ids, "max_relays", "1")
	waitFor(t, "the second relay retired and saved", func() bool {
		_, running := statusOf(w.sup, second.Name)
		return !running && slices.Contains(v.Retired(), second.Name) && !v.Unsaved(second.Name)
	})
	w.s.Admin(t, "node", "set", w.ids, "max_relays", "2")
	var back tor.Status
	waitFor(t, "the second relay back", func() bool {
		st, ok := statusOf(w.sup, second.Name)
		back = st
		return ok && st.State == api.RelayRunning && st.Fingerprint != ""
	})
	if back.Fingerprint != second.Fingerprint || back.Ed25519ID != second.Ed25519ID {
		t.Errorf("the relay that came back has a new identity: %s/%s → %s/%s",
			second.Fingerprint, second.Ed25519ID, back.Fingerprint, back.Ed25519ID)
	}
	if st, _ := statusOf(w.sup, first.Name); st.PID != first.PID {
		t.Errorf("the first relay was disturbed: pid %d → %d", first.PID, st.PID)
	}
}
