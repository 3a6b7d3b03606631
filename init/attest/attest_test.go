package attest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/testsrv"
	"patela/init/tpmdev"
	"patela/init/tpmdev/tpmdevtest"
	"patela/internal/api"
	"patela/internal/testutil"
)

var fast = WithBackoff(20*time.Millisecond, 100*time.Millisecond)

// enroll attests a new node, enabling it when it shows up pending, and
// returns its session and first token.
func enroll(t *testing.T, m *tpmdevtest.Machine, srv *testsrv.Server, log *testutil.SyncBuffer) (*Session, Token) {
	t.Helper()
	s, err := NewSession(m.Cnt, srv.Client(t), nil, fast)
	if err != nil {
		t.Fatal(err)
	}
	return s, enrollSession(t, s, srv, log)
}

// enrollSession gets a first token for s, enabling the node as an
// administrator would once the console names it.
func enrollSession(t *testing.T, s *Session, srv *testsrv.Server, log *testutil.SyncBuffer) Token {
	t.Helper()
	s.log = slog.New(slog.NewTextHandler(log, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		// The administrator reads the console and enables the node.
		for ctx.Err() == nil {
			if id := s.NodeID(); id != 0 && strings.Contains(log.String(), "configsrv node enable "+strconv.FormatInt(id, 10)) {
				srv.Admin(t, "node", "enable", strconv.FormatInt(id, 10))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	tok, err := s.Wait(ctx)
	if err != nil {
		t.Fatalf("attesting: %v\n%s", err, log)
	}
	return tok
}

func TestAttestAgainstConfigsrv(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	s, tok := enroll(t, m, srv, &log)
	if tok.NodeID == 0 || tok.NodeID != s.NodeID() || !tok.FirstBoot || time.Until(tok.ExpiresAt) <= 0 {
		t.Fatalf("token %+v, node %d", tok, s.NodeID())
	}
	// The token opens the node endpoints.
	if _, err := srv.Client(t).Specs(context.Background(), tok.Value,
		&api.Specs{CPUs: 2, MemoryBytes: 4 << 30, CPUModel: "test"}); err != nil {
		t.Fatalf("using the token: %v", err)
	}
	// Cached: no second activation.
	m.Cnt.Reset()
	again, err := s.Token(context.Background())
	if err != nil || again != tok.Value || m.Cnt.Total() != 0 {
		t.Fatalf("second Token: same=%v err=%v, %d TPM commands", again == tok.Value, err, m.Cnt.Total())
	}
	if hs, _ := tpmdev.Handles(m.Dev, tpm2.TPMHTTransient); len(hs) != 0 {
		t.Fatalf("transients leaked: %v", hs)
	}
	t.Logf("console:\n%s", log.String())
}

func TestRebootSameNodeNoNewAK(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	first, tok1 := enroll(t, m, srv, &log)

	m.Boot()
	start := time.Now()
	s, err := NewSession(m.Cnt, srv.Client(t), nil, fast)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := s.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tok2.NodeID != tok1.NodeID || tok2.FirstBoot {
		t.Fatalf("after reboot: node %d (was %d), first_boot %v", tok2.NodeID, tok1.NodeID, tok2.FirstBoot)
	}
	if !bytes.Equal(s.EKName(), first.EKName()) || !bytes.Equal(s.ak.Name.Buffer, first.ak.Name.Buffer) {
		t.Fatal("EK or AK changed across the reboot")
	}
	// No key generated: EK and AK are loaded from their persistent handles.
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCCreate, tpm2.TPMCCCreatePrimary, tpm2.TPMCCEvictControl} {
		if n := m.Cnt.Count(cc); n != 0 {
			t.Fatalf("second boot ran %d %v", n, cc)
		}
	}
	t.Logf("second boot: %d TPM commands, %v", m.Cnt.Total(), time.Since(start))
}

func TestRefreshBeforeExpiry(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	enroll(t, m, srv, &log)
	// A margin longer than the token's life: every call re-attests.
	s, err := NewSession(m.Cnt, srv.Client(t), nil, fast, WithRefreshMargin(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m.Cnt.Reset()
	for range 2 {
		if _, err := s.Token(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.Cnt.Count(tpm2.TPMCCActivateCredential); n != 2 {
		t.Fatalf("%d activations for 2 tokens inside the margin", n)
	}
	// Invalidate forces one too.
	s2, _ := NewSession(m.Cnt, srv.Client(t), nil, fast)
	tok, _ := s2.Token(context.Background())
	s2.Invalidate(tok)
	m.Cnt.Reset()
	s2.Token(context.Background())
	if n := m.Cnt.Count(tpm2.TPMCCActivateCredential); n != 1 {
		t.Fatalf("%d activations after Invalidate", n)
	}
}

func TestServerDownAtBoot(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	enroll(t, m, srv, &log)
	srv.Stop()
	m.Boot()
	var log2 testutil.SyncBuffer
	s, err := NewSession(m.Cnt, srv.Client(t), slog.New(slog.NewTextHandler(&log2, nil)), fast)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for !strings.Contains(log2.String(), "attempt=3") {
			time.Sleep(10 * time.Millisecond)
		}
		srv.Restart(t)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.Wait(ctx); err != nil {
		t.Fatalf("%v\n%s", err, log2.String())
	}
}

// A banned node waits with a clear console line, asking again rarely,
// and Wait never gives up on its own (the boot would reboot otherwise);
// Token, for the reconcile loop, answers the refusal at once.
func TestBannedWaitsWithoutReboot(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	_, tok := enroll(t, m, srv, &log)
	srv.Admin(t, "node", "ban", strconv.FormatInt(tok.NodeID, 10))
	var attempts atomic.Int32
	c, _ := srv.Proxy(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == api.PathAttest {
			attempts.Add(1)
		}
		return false
	})
	var log2 testutil.SyncBuffer
	s, err := NewSession(m.Cnt, c, slog.New(slog.NewTextHandler(&log2, nil)), fast)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(context.Background()); !api.IsCode(err, api.CodeBanned) {
		t.Fatalf("Token of a banned node: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	attempts.Store(0)
	if _, err := s.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait of a banned node: %v", err)
	}
	// Banned: ten times the largest delay (100 ms here) between attempts.
	want := "this node is BANNED by the config server: it runs no relays and does not reboot; `configsrv node enable " +
		strconv.FormatInt(tok.NodeID, 10) + "` lifts the ban"
	if n := attempts.Load(); !strings.Contains(log2.String(), want) || n < 1 || n > 3 {
		t.Fatalf("%d attempts in 1.5 s; console:\n%s", n, log2.String())
	}
	// Disabled: the same wait, at the ordinary pace, and the message says so.
	srv.Admin(t, "node", "disable", strconv.FormatInt(tok.NodeID, 10))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if _, err := s.Wait(ctx2); !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(log2.String(), "this node is disabled by the config server") {
		t.Fatalf("Wait of a disabled node: %v\n%s", err, log2.String())
	}
}

func TestPendingUntilContextEnds(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	s, err := NewSession(m.Cnt, srv.Client(t), slog.New(slog.NewTextHandler(&log, nil)), fast)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := s.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pending node: %v", err)
	}
	want := "waiting for an administrator: configsrv node enable " + strconv.FormatInt(s.NodeID(), 10)
	if s.NodeID() == 0 || strings.Count(log.String(), want) < 2 {
		t.Fatalf("console does not say %q repeatedly:\n%s", want, log.String())
	}
}

func TestRateLimitedHonoursRetryAfter(t *testing.T) {
	srv := testsrv.Start(t)
	m := tpmdevtest.New(t)
	var log testutil.SyncBuffer
	enroll(t, m, srv, &log)
	limited := 0
	c, _ := srv.Proxy(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != api.PathAttest || limited > 0 {
			return false
		}
		limited++
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"error":"slow down","code":"rate_limited"}`))
		return true
	})
	var log2 testutil.SyncBuffer
	s, err := NewSession(m.Cnt, c, slog.New(slog.NewTextHandler(&log2, nil)), fast)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	// The backoff would have been 10-20 ms; the server asked for 1 s, and
	// the node waits that and up to a quarter more.
	m2 := regexp.MustCompile(`msg="rate limited by the config server" retry_in=([0-9.]+m?s)`).FindStringSubmatch(log2.String())
	if limited != 1 || m2 == nil {
		t.Fatalf("limited %d times; console:\n%s", limited, log2.String())
	}
	wait, err := time.ParseDuration(m2[1])
	if err != nil || wait < time.Second || wait > 1250*time.Millisecond || took < time.Second {
		t.Fatalf("waited %v (said %s), want 1-1.25 s; console:\n%s", took, m2[1], log2.String())
	}
}
