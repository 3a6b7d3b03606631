package vault

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"patela/configsrv/testsrv"
	"patela/init/tpmkeys"
	"patela/internal/api"
)

// nvCopy is what an attacker with owner auth can copy out of NV and write
// back later: the header and, for an NV bundle, its ciphertext.
type nvCopy struct {
	hdr  *header
	data []byte
}

func copyNV(t *testing.T, m *machine) nvCopy {
	t.Helper()
	nv, err := newNVStore(m.Dev, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nv.readHeader()
	if err != nil || h == nil {
		t.Fatalf("header %v, %v", h, err)
	}
	c := nvCopy{hdr: h}
	if h.location == locNV {
		if c.data, err = nv.readData(h); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// writeBack writes a copy back raw, redefining freed indices as needed.
func writeBack(t *testing.T, m *machine, c nvCopy) {
	t.Helper()
	nv, _ := newNVStore(m.Dev, 0)
	if c.data != nil {
		if _, err := nv.writeData(c.hdr.slot, c.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nv.writeHeader(c.hdr); err != nil {
		t.Fatal(err)
	}
}

func tpmCounter(t *testing.T, m *machine) counterState {
	t.Helper()
	cs, err := readCounter(m.Dev)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func wantRollback(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrRollback) {
		t.Fatalf("want the rollback error, got %v", err)
	}
	for _, s := range []string{"refusing", "init tpm clear-vault --yes", "configsrv keys drop N --yes"} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("rollback error does not say %q: %v", s, err)
		}
	}
}

// TestRollbackNV: save v1, save v2, write the v1 NV bytes back as an
// attacker with owner auth would: Open refuses. Deleting the counter, or
// replacing it with a new one, does not help the attacker.
func TestRollbackNV(t *testing.T) {
	m := newMachine(t)
	v, dir := saveOne(t, m, Options{})
	old := copyNV(t, m)
	if c := tpmCounter(t, m); !c.written || v.counter != c.value || old.hdr.version != 1 {
		t.Fatalf("after the first save: counter %+v, bundle records %d, version %d", c, v.counter, old.hdr.version)
	}
	if _, err := v.Capture("gorgonzola", dir); err != nil {
		t.Fatal(err)
	}
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	cur := copyNV(t, m)
	if c := tpmCounter(t, m); c.value != v.counter || cur.hdr.version != 2 {
		t.Fatalf("after the second save: counter %d, bundle records %d", c.value, v.counter)
	}
	st, err := Inspect(m.Dev)
	if err != nil || !st.CounterWritten || st.Counter != v.counter {
		t.Fatalf("inspect: %+v %v", st, err)
	}

	writeBack(t, m, old)
	m.boot()
	_, err = m.open(Options{})
	wantRollback(t, err)
	t.Log(err)

	// The counter deleted: a bundle that records one is refused.
	m.boot()
	writeBack(t, m, old)
	if err := undefineCounter(m.Dev); err != nil {
		t.Fatal(err)
	}
	_, err = m.open(Options{})
	wantRollback(t, err)
	// Defined again (by the attacker, with an auth of their own) it starts
	// above every value the old one had.
	m.boot()
	if err := defineCounter(m.Dev, []byte("attacker")); err != nil {
		t.Fatal(err)
	}
	if err := incrementCounter(m.Dev, []byte("attacker"), tpmCounter(t, m).name); err != nil {
		t.Fatal(err)
	}
	if c := tpmCounter(t, m); c.value <= v.counter {
		t.Fatalf("a counter defined again starts at %d, the old one was at %d", c.value, v.counter)
	}
	_, err = m.open(Options{})
	wantRollback(t, err)
	// An ordinary index in the counter's place could hold any value.
	m.boot()
	undefineCounter(m.Dev)
	nv, _ := newNVStore(m.Dev, 0)
	if err := nv.define(tpmkeys.NVCounter, 8); err != nil {
		t.Fatal(err)
	}
	nv.write(tpmkeys.NVCounter, make([]byte, 8))
	_, err = m.open(Options{})
	wantRollback(t, err)
	// The operator can still see it and clear the vault.
	if st, err := Inspect(m.Dev); err != nil || !st.CounterForeign {
		t.Fatalf("inspect with a foreign index as counter: %+v %v", st, err)
	}
	if err := Clear(m.Dev); err != nil {
		t.Fatal(err)
	}
	if st, _ := Inspect(m.Dev); st.CounterDefined {
		t.Fatal("Clear left the foreign counter index")
	}
}

// TestRollbackNVNewestPutBack: once the newest bundle is written back, the
// vault opens again.
func TestRollbackNVNewestPutBack(t *testing.T) {
	m := newMachine(t)
	v, dir := saveOne(t, m, Options{})
	old := copyNV(t, m)
	v.Capture("gorgonzola", dir)
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	cur := copyNV(t, m)
	writeBack(t, m, old)
	m.boot()
	_, err := m.open(Options{})
	wantRollback(t, err)
	m.boot()
	writeBack(t, m, cur)
	if got := m.mustOpen(Options{}).Relays(); len(got) != 2 {
		t.Fatalf("relays %v", got)
	}
}

// TestRollbackMirror: the config server serves an older bundle. With the
// NV header intact its version gives it away; with the header written back
// too (owner auth), the counter does.
func TestRollbackMirror(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	var stale atomic.Pointer[api.KeyBundle]
	c, _ := srv.Proxy(t, func(w http.ResponseWriter, r *http.Request) bool {
		kb := stale.Load()
		if kb == nil || r.Method != http.MethodGet || r.URL.Path != api.PathKeys {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(kb)
		return true
	})
	m := newMachine(t)
	ctx := context.Background()
	sess := attested(t, m, srv, c)
	opts := mirrorOptions(sess, c)
	v := m.savedInMirror(opts, "murazzano", dirs[0])
	oldKB, err := c.GetKeys(ctx, mustToken(t, sess))
	if err != nil {
		t.Fatal(err)
	}
	old := copyNV(t, m)
	v.Capture("gorgonzola", dirs[0])
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	cur := copyNV(t, m)
	if old.hdr.location != locMirror || cur.hdr.location != locMirror || cur.hdr.version != 2 {
		t.Fatalf("headers %+v %+v", old.hdr, cur.hdr)
	}

	stale.Store(oldKB)
	m.boot()
	sess = attested(t, m, srv, c)
	opts.Mirror = ServerMirror{c, sess}
	_, err = m.open(opts)
	wantRollback(t, err)
	t.Log(err)

	m.boot()
	sess = attested(t, m, srv, c)
	opts.Mirror = ServerMirror{c, sess}
	writeBack(t, m, old)
	_, err = m.open(opts)
	wantRollback(t, err)
	if !strings.Contains(err.Error(), "records counter") {
		t.Fatalf("not refused by the counter: %v", err)
	}
	t.Log(err)

	// The server serves the newest again: the old header is no obstacle
	// (the mirror may be newer than the header) and the vault opens.
	stale.Store(nil)
	m.boot()
	sess = attested(t, m, srv, c)
	opts.Mirror = ServerMirror{c, sess}
	if got := m.mustOpen(opts).Relays(); len(got) != 2 {
		t.Fatalf("relays %v", got)
	}
}

var errPowerCut = errors.New("power cut (test)")

// crashAt makes the next save stop at step, as a power cut would.
func crashAt(t *testing.T, step string) {
	saveHook = func(s string) error {
		if s == step {
			return errPowerCut
		}
		return nil
	}
	t.Cleanup(func() { saveHook = nil })
}

// TestSaveCrashWindows interrupts a save between each two of its TPM
// steps. The next boot opens the newest consistent bundle, the next save
// works, and the bundle from before is still refused once written back.
func TestSaveCrashWindows(t *testing.T) {
	for _, w := range []struct {
		step   string
		relays int // the bundle the next boot opens
	}{
		{"bundle written", 1}, // new slot written, header not switched: old bundle, counter = its record
		{"header written", 2}, // header switched, counter not raised: new bundle one ahead, Open raises it
		{"counter raised", 2}, // committed, old slot not freed yet
	} {
		t.Run(strings.ReplaceAll(w.step, " ", "_"), func(t *testing.T) {
			m := newMachine(t)
			v, dir := saveOne(t, m, Options{})
			before := copyNV(t, m)
			c1 := tpmCounter(t, m).value
			v.Capture("gorgonzola", dir)
			crashAt(t, w.step)
			if err := v.Save(context.Background()); !errors.Is(err, errPowerCut) {
				t.Fatalf("save: %v", err)
			}
			saveHook = nil
			m.boot()
			v = m.mustOpen(Options{})
			if got := v.Relays(); len(got) != w.relays {
				t.Fatalf("after a power cut at %q: relays %v", w.step, got)
			}
			v.Capture("gorgonzola", dir)
			c := tpmCounter(t, m).value
			if v.counter != c || (w.relays == 1 && c != c1) || (w.relays == 2 && c != c1+1) {
				t.Fatalf("counter %d (was %d), bundle records %d", c, c1, v.counter)
			}
			v.Capture("tometta", dir)
			if err := v.Save(context.Background()); err != nil {
				t.Fatal(err)
			}
			m.boot()
			if got := m.mustOpen(Options{}).Relays(); !slices.Equal(got, []string{"gorgonzola", "murazzano", "tometta"}) {
				t.Fatalf("after the next save: relays %v", got)
			}
			m.boot()
			writeBack(t, m, before)
			_, err := m.open(Options{})
			wantRollback(t, err)
		})
	}
}

// legacy turns the machine's vault into one saved before the counter
// existed: envelope v1, no counter defined.
func legacy(t *testing.T, m *machine, v *Vault) {
	t.Helper()
	env, err := sealFormat(v.key, v.ekName, &Bundle{Version: v.version, Relays: v.relays}, formatV1)
	if err != nil {
		t.Fatal(err)
	}
	c := copyNV(t, m)
	c.data, c.hdr.length, c.hdr.sum = env, len(env), sha256.Sum256(env)
	writeBack(t, m, c)
	if err := undefineCounter(m.Dev); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeFromCounterlessVault: a vault saved before rollback
// protection opens, and its next save defines the counter, also when a
// power cut interrupts that save at any step.
func TestUpgradeFromCounterlessVault(t *testing.T) {
	for _, step := range []string{"", "counter defined", "counter initialized", "bundle written", "header written"} {
		t.Run(strings.ReplaceAll("at "+step, " ", "_"), func(t *testing.T) {
			m := newMachine(t)
			v, dir := saveOne(t, m, Options{})
			legacy(t, m, v)
			m.boot()
			v = m.mustOpen(Options{})
			if got := v.Relays(); len(got) != 1 {
				t.Fatalf("legacy vault: relays %v", got)
			}
			if st, _ := Inspect(m.Dev); st.CounterDefined {
				t.Fatal("counter defined by Open")
			}
			v.Capture("gorgonzola", dir)
			if step != "" {
				crashAt(t, step)
				if err := v.Save(context.Background()); !errors.Is(err, errPowerCut) {
					t.Fatalf("save: %v", err)
				}
				saveHook = nil
				m.boot()
				v = m.mustOpen(Options{})
				v.Capture("gorgonzola", dir)
			}
			if err := v.Save(context.Background()); err != nil {
				t.Fatal(err)
			}
			upgraded := copyNV(t, m)
			st, err := Inspect(m.Dev)
			if err != nil || !st.CounterWritten || st.Counter != v.counter {
				t.Fatalf("after the upgrade: %+v %v", st, err)
			}
			v.Capture("tometta", dir)
			if err := v.Save(context.Background()); err != nil {
				t.Fatal(err)
			}
			m.boot()
			if got := m.mustOpen(Options{}).Relays(); len(got) != 3 {
				t.Fatalf("relays %v", got)
			}
			m.boot()
			writeBack(t, m, upgraded)
			_, err = m.open(Options{})
			wantRollback(t, err)
		})
	}
}

// TestClearVaultRemovesCounter: a new vault after clear-vault gets a new
// counter (the old one takes the old key's auth), starting above the old.
func TestClearVaultRemovesCounter(t *testing.T) {
	m := newMachine(t)
	v, dir := saveOne(t, m, Options{})
	c1 := v.counter
	if err := Clear(m.Dev); err != nil {
		t.Fatal(err)
	}
	if st, _ := Inspect(m.Dev); st.CounterDefined || st.Sealed || st.Header {
		t.Fatalf("after Clear: %+v", st)
	}
	m.boot()
	v = m.mustOpen(Options{})
	v.Capture("murazzano", dir)
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v.counter <= c1 {
		t.Fatalf("new vault's counter %d, the cleared one's was %d", v.counter, c1)
	}
	// A counter left over from an older vault (cleared by hand) does not
	// take this key: a new vault replaces it.
	if err := tpmkeys.Evict(m.Dev, tpmkeys.SealHandle); err != nil {
		t.Fatal(err)
	}
	nv, _ := newNVStore(m.Dev, 0)
	nv.freeExcept(0, 0)
	nv.undefine(tpmkeys.NVHeader)
	m.boot()
	v = m.mustOpen(Options{})
	v.Capture("murazzano", dir)
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.boot()
	m.mustOpen(Options{})
}

// TestMirrorSaveCrashWindows: a save to the mirror cut before the NV
// header records it (or before the counter is raised) leaves the mirror a
// version ahead of the header and the bundle a count ahead of the TPM: the
// next boot opens it and completes the save.
func TestMirrorSaveCrashWindows(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	c := srv.Client(t)
	for _, step := range []string{"bundle written", "header written"} {
		t.Run(strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
			m := newMachine(t)
			sess := attested(t, m, srv, c)
			opts := mirrorOptions(sess, c)
			v := m.savedInMirror(opts, "murazzano", dirs[0])
			before, _ := c.GetKeys(context.Background(), mustToken(t, sess))
			c1 := tpmCounter(t, m).value
			v.Capture("gorgonzola", dirs[0])
			crashAt(t, step)
			if err := v.Save(context.Background()); !errors.Is(err, errPowerCut) {
				t.Fatalf("save: %v", err)
			}
			saveHook = nil
			m.boot()
			sess = attested(t, m, srv, c)
			opts.Mirror = ServerMirror{c, sess}
			v = m.mustOpen(opts)
			if got := v.Relays(); len(got) != 2 || tpmCounter(t, m).value != c1+1 {
				t.Fatalf("after a power cut at %q: relays %v, counter %d (was %d)", step, got, tpmCounter(t, m).value, c1)
			}
			v.Capture("tometta", dirs[0])
			if err := v.Save(context.Background()); err != nil {
				t.Fatal(err)
			}
			m.boot()
			sess = attested(t, m, srv, c)
			opts.Mirror = ServerMirror{c, sess}
			if got := m.mustOpen(opts).Relays(); len(got) != 3 {
				t.Fatalf("relays %v", got)
			}
			if before.Version != 1 {
				t.Fatalf("first mirror version %d", before.Version)
			}
		})
	}
}
