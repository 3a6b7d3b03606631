package vault

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/testsrv"
	"patela/init/attest"
	"patela/init/tpmdev"
	"patela/internal/api"
	"patela/internal/swtpmtest"
	"patela/internal/testutil"
)

// bootTPM runs the agent's TPM side of one boot against swtpm and the real
// configsrv: attest (enabling the node if it is new), open the vault, then
// restore every relay it knows and capture and save the rest, as the
// reconcile loop does. It returns the command counter.
func bootTPM(b *testing.B, tp *swtpmtest.TPM, srv *testsrv.Server, c *api.Client, dirs []string, opts ...attest.Option) *tpmdev.Counter {
	dev, err := tpmdev.Open("unix:" + tp.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	cnt := tpmdev.NewCounter(dev)
	ctx := context.Background()
	var log testutil.SyncBuffer
	sess, err := attest.NewSession(cnt, c, slog.New(slog.NewTextHandler(&log, nil)), append(opts, attest.WithBackoff(time.Millisecond, 10*time.Millisecond))...)
	if err != nil {
		b.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go enableWhenPending(wctx, sess, srv, &log, time.Millisecond)
	if _, err := sess.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	v, err := Open(ctx, cnt, Options{EKName: sess.EKName(), PCRs: []int{7}, Mirror: ServerMirror{c, sess}})
	if err != nil {
		b.Fatal(err)
	}
	for i, d := range dirs {
		name := fmt.Sprintf("relay%d", i)
		data := filepath.Join(b.TempDir(), "data")
		ok, err := v.Restore(name, data, 0, 0)
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			if _, err := v.Capture(name, d); err != nil {
				b.Fatal(err)
			}
		}
		// OfflineMasterKey: the signing key tor gets, issued in Go (no
		// TPM command).
		if _, err := v.Issue(name, data, 0, 0, time.Now().Add(30*24*time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Save(ctx); err != nil {
		b.Fatal(err)
	}
	return cnt
}

func report(b *testing.B, cmds, creates, primaries int, tpmTime time.Duration) {
	b.ReportMetric(float64(cmds)/float64(b.N), "tpm-cmds/boot")
	b.ReportMetric(float64(creates)/float64(b.N), "creates/boot")
	b.ReportMetric(float64(primaries)/float64(b.N), "primaries/boot")
	b.ReportMetric(float64(tpmTime.Microseconds())/1000/float64(b.N), "tpm-ms/boot")
}

// BenchmarkBoot measures a node's TPM work per boot with 8 relays: the
// first boot (AK and vault key created, bundle written) and later boots
// (everything loaded). tpm-ms is time inside TPM commands; ns/op is the
// whole of it, HTTPS to the config server included. creates counts new
// keys (AK, sealed vault key); primaries counts EK and SRK derivations,
// which re-derive the same keys from the hierarchy seeds.
func BenchmarkBoot(b *testing.B) {
	dirs, _ := torKeys(b, 8)
	srv := testsrv.Start(b)
	c := srv.Client(b)
	for _, ek := range []struct {
		name string
		opt  attest.Option
	}{{"ecc", attest.WithECCEK()}, {"rsa", attest.WithRSAEK()}} {
		b.Run(ek.name+"/first", func(b *testing.B) {
			var cmds, creates, primaries int
			var tpmTime time.Duration
			for range b.N {
				b.StopTimer()
				tp := swtpmtest.Start(b)
				b.StartTimer()
				cnt := bootTPM(b, tp, srv, c, dirs, ek.opt)
				cmds, tpmTime = cmds+cnt.Total(), tpmTime+cnt.Elapsed()
				creates += cnt.Count(tpm2.TPMCCCreate)
				primaries += cnt.Count(tpm2.TPMCCCreatePrimary)
				b.StopTimer()
				tp.Stop()
				b.StartTimer()
			}
			report(b, cmds, creates, primaries, tpmTime)
		})
		b.Run(ek.name+"/later", func(b *testing.B) {
			state := b.TempDir()
			tp := swtpmtest.StartState(b, state)
			bootTPM(b, tp, srv, c, dirs, ek.opt)
			var cmds, creates, primaries int
			var tpmTime time.Duration
			for range b.N {
				b.StopTimer()
				tp.Stop()
				tp = swtpmtest.StartState(b, state) // power cycle
				b.StartTimer()
				cnt := bootTPM(b, tp, srv, c, dirs, ek.opt)
				cmds, tpmTime = cmds+cnt.Total(), tpmTime+cnt.Elapsed()
				creates += cnt.Count(tpm2.TPMCCCreate)
				primaries += cnt.Count(tpm2.TPMCCCreatePrimary)
			}
			report(b, cmds, creates, primaries, tpmTime)
		})
	}
}
