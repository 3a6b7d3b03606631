package vault

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/testsrv"
	"patela/init/attest"
	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/testutil"
)

// attested enrolls the machine's TPM with the server (enabling it when it
// shows up pending) and returns its session.
// mirrorOptions is a vault whose bundle cannot fit its 256 bytes of NV, so
// the ciphertext lives in the server's mirror, reached with sess's token.
func mirrorOptions(sess *attest.Session, c *api.Client) Options {
	return Options{EKName: sess.EKName(), Mirror: ServerMirror{c, sess}, NVMaxBytes: 256}
}

// savedInMirror opens the vault and saves one relay's keys from dir.
func (m *machine) savedInMirror(opts Options, name, dir string) *Vault {
	m.T.Helper()
	v := m.mustOpen(opts)
	if _, err := v.Capture(name, dir); err != nil {
		m.T.Fatal(err)
	}
	if err := v.Save(context.Background()); err != nil {
		m.T.Fatal(err)
	}
	return v
}

func attested(t *testing.T, m *machine, srv *testsrv.Server, c *api.Client) *attest.Session {
	var log testutil.SyncBuffer
	s, err := attest.NewSession(m.Cnt, c, slog.New(slog.NewTextHandler(&log, nil)), attest.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go enableWhenPending(ctx, s, srv, &log, 10*time.Millisecond)
	if _, err := s.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// enableWhenPending enables s's node as an administrator would, once the
// console names it pending: never a node already enabled, since every
// state change, enabled to enabled too, retires the tokens issued before.
func enableWhenPending(ctx context.Context, s *attest.Session, srv *testsrv.Server, log *testutil.SyncBuffer, every time.Duration) {
	for ctx.Err() == nil {
		if id := s.NodeID(); id != 0 && strings.Contains(log.String(), "configsrv node enable "+strconv.FormatInt(id, 10)) {
			srv.AdminErr("node", "enable", strconv.FormatInt(id, 10))
			return
		}
		time.Sleep(every)
	}
}

// leaks reports which secrets appear in a body, raw or inside any base64
// string of its JSON.
func leaks(body []byte, secrets map[string][]byte) []string {
	blobs := [][]byte{body}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if d, err := base64.StdEncoding.DecodeString(x); err == nil {
				blobs = append(blobs, d)
			}
			blobs = append(blobs, []byte(x))
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	var v any
	if json.Unmarshal(body, &v) == nil {
		walk(v)
	}
	var found []string
	for name, s := range secrets {
		for _, b := range blobs {
			if bytes.Contains(b, s) {
				found = append(found, name)
				break
			}
		}
	}
	return found
}

func TestMirrorWhenNVFull(t *testing.T) {
	const n = 3
	dirs, fps := torKeys(t, n)
	srv := testsrv.Start(t)
	c, rec := srv.Proxy(t, nil)
	m := newMachine(t)
	ctx := context.Background()

	sess := attested(t, m, srv, c)
	opts := Options{EKName: sess.EKName(), PCRs: []int{7}, Mirror: ServerMirror{c, sess}, NVMaxBytes: 256}
	v := m.mustOpen(opts)
	secrets := map[string][]byte{"vault key": bytes.Clone(v.key)}
	for i, d := range dirs {
		name := fmt.Sprintf("relay%d", i)
		if _, err := v.Capture(name, d); err != nil {
			t.Fatal(err)
		}
		e := v.relays[name]
		w := len(e.RSAIdentity) / 2
		secrets[name+" ed25519"] = e.Ed25519Master
		secrets[name+" ed25519 seed half"] = e.Ed25519Master[:32]
		secrets[name+" p"] = e.RSAIdentity[:w]
		secrets[name+" q"] = e.RSAIdentity[w:]
		secrets[name+" ntor"] = e.Ntor
		pemKey, _ := os.ReadFile(filepath.Join(d, "keys", fileRSAIdentity))
		secrets[name+" PEM"] = pemKey[40:100]
	}
	secrets["family"] = v.relays["relay0"].Family[0].Secret
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	nv, _ := newNVStore(m.Dev, 0)
	if h, _ := nv.readHeader(); h == nil || h.location != locMirror || h.version != 1 {
		t.Fatalf("header after a save that does not fit: %+v", h)
	}
	if cnt, size, _ := nv.usage(); cnt != 1 || size != headerLen {
		t.Fatalf("NV holds %d vault indices, %d bytes; want the header only", cnt, size)
	}
	if rec.Count("PUT /v1/node/keys") != 1 {
		t.Fatal("bundle not sent to the mirror")
	}

	// Reboot: the bundle comes back from the server.
	m.boot()
	sess = attested(t, m, srv, c)
	opts.Mirror = ServerMirror{c, sess}
	v = m.mustOpen(opts)
	for i := range n {
		dir := filepath.Join(t.TempDir(), "data")
		if ok, err := restoreIssued(t, v, fmt.Sprintf("relay%d", i), dir, os.Getuid(), os.Getgid()); !ok || err != nil {
			t.Fatalf("restore %d: %v %v", i, ok, err)
		}
		if got := fingerprints(t, dir); got != fps[i] {
			t.Errorf("relay %d: %q after restore from the mirror, %q before", i, got, fps[i])
		}
	}
	// A change goes out as a newer version.
	v.Forget("relay2")
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	kb, err := c.GetKeys(ctx, mustToken(t, sess))
	if err != nil || kb.Version != 2 {
		t.Fatalf("mirror after the second save: %+v %v", kb, err)
	}

	// The server never saw anything that decrypts without the TPM.
	bodies := rec.All()
	if len(bodies) < 5 {
		t.Fatalf("only %d requests recorded", len(bodies))
	}
	for _, b := range bodies {
		if found := leaks(b, secrets); len(found) > 0 {
			t.Fatalf("the server received %v in a request body", found)
		}
	}
	// The scan itself finds a leak when there is one.
	plain, _ := encodeBundle(&Bundle{Version: 9, Relays: v.relays})
	leaky, _ := json.Marshal(api.KeyBundle{Bundle: plain, Version: 9})
	if found := leaks(leaky, secrets); len(found) == 0 {
		t.Fatal("the leak scan misses a plaintext bundle")
	}
}

func mustToken(t *testing.T, s *attest.Session) string {
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestOrphanedMirrorBundle: a TPM without a vault key (cleared, or
// replaced) must not start a new bundle over the one the server keeps.
func TestOrphanedMirrorBundle(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	c := srv.Client(t)
	m := newMachine(t)
	sess := attested(t, m, srv, c)
	opts := mirrorOptions(sess, c)
	m.savedInMirror(opts, "murazzano", dirs[0])
	// The operator clears the vault in the TPM; the mirror copy stays.
	if err := tpmkeys.Evict(m.Dev, tpmkeys.SealHandle); err != nil {
		t.Fatal(err)
	}
	nv, _ := newNVStore(m.Dev, 0)
	nv.undefine(tpmkeys.NVHeader)
	m.boot()
	_, err := m.open(opts)
	if !errors.Is(err, ErrOrphaned) {
		t.Fatalf("vault key gone, mirror bundle present: %v", err)
	}
	if !strings.Contains(err.Error(), "refusing to replace") {
		t.Fatal(err)
	}
}

// TestMirrorDownAtOpen: the ciphertext is fetched before the key is
// unsealed and the vault locked, so a server that is briefly down costs a
// retry, not a reboot.
func TestMirrorDownAtOpen(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	c := srv.Client(t)
	m := newMachine(t)
	sess := attested(t, m, srv, c)
	opts := mirrorOptions(sess, c)
	v := m.savedInMirror(opts, "murazzano", dirs[0])
	m.boot()
	mustToken(t, sess)
	srv.Stop()
	if _, err := m.open(opts); err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("open with the mirror down: %v", err)
	}
	srv.Restart(t)
	v = m.mustOpen(opts)
	if got := v.Relays(); len(got) != 1 {
		t.Fatalf("relays %v", got)
	}
}

// TestTPMOutOfNVSpace: the TPM itself answers TPM_RC_NV_SPACE (its NV
// filled by other indices); the bundle goes to the mirror, and the NV the
// vault reserved for it is not left half-defined.
func TestTPMOutOfNVSpace(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	c := srv.Client(t)
	m := newMachine(t)
	sess := attested(t, m, srv, c)
	opts := Options{EKName: sess.EKName(), Mirror: ServerMirror{c, sess}}
	v := m.mustOpen(opts)
	nv, _ := newNVStore(m.Dev, 0)
	filled := 0
	for _, size := range []int{nv.indexMax, 256, 64} {
		for filled < 500 {
			err := nv.define(0x01500000+tpm2.TPMHandle(filled), size)
			if errors.Is(err, ErrNVFull) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			filled++
		}
	}
	if filled == 0 || filled == 500 {
		t.Fatalf("filled NV with %d indices", filled)
	}
	v.Capture("murazzano", dirs[0])
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h, _ := nv.readHeader(); h.location != locMirror {
		t.Fatalf("header location %d after NV ran out", h.location)
	}
	if n, _, _ := nv.usage(); n != 1 {
		t.Fatalf("%d vault indices left defined; want the header only", n)
	}
	m.boot()
	if got := m.mustOpen(opts).Relays(); len(got) != 1 {
		t.Fatalf("relays %v", got)
	}
	t.Logf("NV full after %d extra indices", filled)
}
