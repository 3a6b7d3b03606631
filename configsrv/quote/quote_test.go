package quote_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"patela/configsrv/quote"
	"patela/configsrv/quote/quotetest"
	"patela/init/attest"
	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
	"patela/internal/swtpmtest"
)

// node is a swtpm that "booted": the log's events extended into its PCRs,
// the log written where the agent reads it, and the agent's AK.
type node struct {
	tpm transport.TPMCloser
	ak  *tpmkeys.Key
	key *quote.Key
	log *quotetest.Log
	// logPath is the event log file the agent sends.
	logPath string
}

func boot(t *testing.T, seed string) *node {
	t.Helper()
	sw := swtpmtest.Start(t)
	tpm, err := linuxudstpm.Open(sw.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	l := quotetest.Boot(seed)
	if err := l.Extend(tpm); err != nil {
		t.Fatal(err)
	}
	ak, _, err := tpmkeys.AK(tpm)
	if err != nil {
		t.Fatal(err)
	}
	key, err := quote.NewKey(tpm2.Marshal(ak.Public))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(p, l.Bytes(), 0o444); err != nil {
		t.Fatal(err)
	}
	return &node{tpm: tpm, ak: ak, key: key, log: l, logPath: p}
}

func nonce(t *testing.T) []byte {
	n := make([]byte, api.NonceSize)
	rand.Read(n)
	return n
}

func (n *node) quote(t *testing.T, nonce []byte) *api.Quote {
	t.Helper()
	log, err := attest.ReadEventLog(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	q, err := attest.Quote(n.tpm, n.ak, nonce, log)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// ukiRelease is a release record expecting the PCRs a boot of seed shows
// (4, 11, 12 and the lock PCR 15 zero, as stimage release create makes).
func ukiRelease(t *testing.T, name, seed string) *release.Release {
	t.Helper()
	l := quotetest.Boot(seed)
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: l.PCRs[4], 11: l.PCRs[11], 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestQuoteVerifies: a swtpm quote after a boot's extends verifies, its
// event log replays, and it matches the release of that boot, also after
// the agent locked the vault (PCR 15).
func TestQuoteVerifies(t *testing.T) {
	n := boot(t, "A")
	rels := []*release.Release{ukiRelease(t, "B", "B"), ukiRelease(t, "A", "A")}
	for _, locked := range []bool{false, true} {
		if locked {
			if err := quotetest.ExtendPCR(n.tpm, release.LockPCR, release.LockDigest[:]); err != nil {
				t.Fatal(err)
			}
		}
		no := nonce(t)
		ev, err := quote.Verify(n.key, no, n.quote(t, no))
		if err != nil {
			t.Fatalf("locked %v: %v", locked, err)
		}
		if ev.Log != quote.LogReplayed {
			t.Errorf("locked %v: event log %s (%s), want replayed", locked, ev.Log, ev.LogDetail)
		}
		for k, v := range n.log.AllPCRs() {
			if k != release.LockPCR && ev.PCRs[k] != v {
				t.Errorf("PCR %d: quoted %s, the boot extended %s", k, ev.PCRs[k], v)
			}
		}
		if m := quote.Match(rels, ev.PCRs); m == nil || m.Name != "A" {
			t.Errorf("locked %v: matched %v, want release A", locked, m)
		}
		t.Logf("locked %v: %s, %s, PCR digest %s", locked, ev.Log, ev.LogDetail, quote.Digest(ev.PCRs)[:16])
	}
}

// TestQuoteRefused: each forgery is refused with ErrBad.
func TestQuoteRefused(t *testing.T) {
	n := boot(t, "A")
	other := boot(t, "A") // another machine, same image
	no := nonce(t)
	good := n.quote(t, no)
	if _, err := quote.Verify(n.key, no, good); err != nil {
		t.Fatal(err)
	}
	soft, err := quotetest.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	few := n.log.AllPCRs()
	delete(few, 14)
	softFew, err := soft.Quote(no, few, nil)
	if err != nil {
		t.Fatal(err)
	}
	softKey, err := quote.NewKey(soft.Public)
	if err != nil {
		t.Fatal(err)
	}
	lied := *good
	lied.PCRs = map[int]pcr.Value{}
	for k, v := range good.PCRs {
		lied.PCRs[k] = v
	}
	lied.PCRs[4] = quotetest.Boot("B").PCRs[4]
	flipped := *good
	flipped.Quoted = append([]byte(nil), good.Quoted...)
	flipped.Quoted[len(flipped.Quoted)-1] ^= 1
	for _, c := range []struct {
		name  string
		key   *quote.Key
		nonce []byte
		q     *api.Quote
		why   string
	}{
		{"wrong nonce", n.key, nonce(t), good, "nonce"},
		{"replayed quote (an earlier challenge's)", n.key, nonce(t), n.quote(t, no), "nonce"},
		{"quote by another AK", n.key, no, other.quote(t, no), "signature"},
		{"PCR values that are not the quoted ones", n.key, no, &lied, "digest"},
		{"signed bytes altered", n.key, no, &flipped, "signature"},
		{"PCR 14 not quoted", softKey, no, softFew, "PCR 14"},
		{"signature missing", n.key, no, &api.Quote{Quoted: good.Quoted, PCRs: good.PCRs}, "signature"},
	} {
		_, err := quote.Verify(c.key, c.nonce, c.q)
		if !errors.Is(err, quote.ErrBad) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want ErrBad about %q", c.name, err, c.why)
		}
	}
}

// TestEventLogTampered: a log that does not replay is flagged, the quote
// still verifies (its PCRs are the evidence); garbage is no panic.
func TestEventLogTampered(t *testing.T) {
	n := boot(t, "A")
	no := nonce(t)
	q := n.quote(t, no)
	// The kernel's event replaced by another's: PCR 4 no longer replays.
	l := quotetest.Boot("A")
	for i := range l.Events {
		if string(l.Events[i].Data) == "linux" {
			l.Events[i].Digest = quotetest.Boot("evil").Events[i].Digest
		}
	}
	for _, c := range []struct {
		name string
		log  []byte
		why  string
	}{
		{"event swapped", l.Bytes(), "PCRs 4 do not replay"},
		{"truncated", n.log.Bytes()[:200], "unparsable"},
		{"garbage", []byte("not an event log at all, not even close"), "unparsable"},
	} {
		tq := *q
		tq.EventLog = c.log
		ev, err := quote.Verify(n.key, no, &tq)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if ev.Log != quote.LogFailed || !strings.Contains(ev.LogDetail, c.why) {
			t.Errorf("%s: log %s (%s), want failed: %s", c.name, ev.Log, ev.LogDetail, c.why)
		}
	}
	tq := *q
	tq.EventLog = nil
	if ev, err := quote.Verify(n.key, no, &tq); err != nil || ev.Log != quote.LogAbsent {
		t.Errorf("no log: %v, %v", ev, err)
	}
}

// TestUnknownRelease: a boot of an image no release names, and a lock
// PCR something else extended, match nothing.
func TestUnknownRelease(t *testing.T) {
	rels := []*release.Release{ukiRelease(t, "A", "A"), ukiRelease(t, "B", "B")}
	n := boot(t, "C")
	no := nonce(t)
	ev, err := quote.Verify(n.key, no, n.quote(t, no))
	if err != nil {
		t.Fatal(err)
	}
	if m := quote.Match(rels, ev.PCRs); m != nil {
		t.Errorf("image C matched release %s", m.Name)
	}
	a := boot(t, "A")
	if err := quotetest.ExtendPCR(a.tpm, release.LockPCR, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	ev, err = quote.Verify(a.key, no, a.quote(t, no))
	if err != nil {
		t.Fatal(err)
	}
	if m := quote.Match(rels, ev.PCRs); m != nil {
		t.Errorf("PCR 15 extended by someone else: matched release %s", m.Name)
	}
}

// TestSoftwareAK: the load generator's quotes have the TPM's layout.
func TestSoftwareAK(t *testing.T) {
	ak, err := quotetest.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	key, err := quote.NewKey(ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	l := quotetest.Boot("A")
	no := nonce(t)
	q, err := ak.Quote(no, l.AllPCRs(), l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	ev, err := quote.Verify(key, no, q)
	if err != nil || ev.Log != quote.LogReplayed {
		t.Fatalf("%v %v", ev, err)
	}
}

// BenchmarkVerify: one quote verification as the server makes it per
// handshake (software AK, an OVMF-like log of 32 events); "cold" replays
// a log never seen, "warm" finds the outcome of an identical log and
// PCRs cached (a fleet's re-attestations).
func BenchmarkVerify(b *testing.B) {
	ak, _ := quotetest.NewAK()
	key, _ := quote.NewKey(ak.Public)
	no := make([]byte, api.NonceSize)
	warm := quotetest.Boot("warm")
	wq, _ := ak.Quote(no, warm.AllPCRs(), warm.Bytes())
	for _, c := range []string{"cold", "warm"} {
		b.Run(c, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				q := wq
				if c == "cold" {
					b.StopTimer()
					l := quotetest.Boot(fmt.Sprint("cold", i))
					q, _ = ak.Quote(no, l.AllPCRs(), l.Bytes())
					b.StartTimer()
				}
				if ev, err := quote.Verify(key, no, q); err != nil || ev.Log != quote.LogReplayed {
					b.Fatal(ev, err)
				}
			}
		})
	}
}
