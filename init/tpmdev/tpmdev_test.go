package tpmdev

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/internal/swtpmtest"
)

func TestUnixFlushesLeakedTransients(t *testing.T) {
	tp := swtpmtest.Start(t)
	// A crashed earlier run: a primary left loaded on a TPM without a
	// resource manager.
	raw, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := (tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}).Execute(raw); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	dev, err := Open("unix:" + tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	left, err := Handles(dev, tpm2.TPMHTTransient)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("transients still loaded after Open: %v", left)
	}
}

func TestTCP(t *testing.T) {
	swtpmtest.Require(t)
	dir := t.TempDir()
	port := freePort(t)
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", "type=unixio,path="+filepath.Join(dir, "c"),
		"--flags", "not-need-init,startup-clear")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	spec := "tcp:127.0.0.1:" + strconv.Itoa(port)
	var dev transport.TPMCloser
	var err error
	for i := 0; i < 100; i++ {
		if dev, err = Open(spec); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	// A response larger than one small read: the framing must reassemble it.
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(dev)
	if err != nil {
		t.Fatal(err)
	}
	Flush(dev, rsp.ObjectHandle)
	if v, err := Property(dev, tpm2.TPMPTNVIndexMax); err != nil || v == 0 {
		t.Fatalf("NV_INDEX_MAX over TCP = %d, %v", v, err)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// flaky answers the first n commands with rc instead of passing them on,
// as a busy TPM does.
type flaky struct {
	transport.TPMCloser
	n  int
	rc tpm2.TPMRC
}

func (f *flaky) Send(cmd []byte) ([]byte, error) {
	if f.n > 0 {
		f.n--
		rsp := make([]byte, 10)
		binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
		binary.BigEndian.PutUint32(rsp[2:], 10)
		binary.BigEndian.PutUint32(rsp[6:], uint32(f.rc))
		return rsp, nil
	}
	return f.TPMCloser.Send(cmd)
}

func TestRetrying(t *testing.T) {
	tp := swtpmtest.Start(t)
	for _, rc := range []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting} {
		raw, err := tp.Open()
		if err != nil {
			t.Fatal(err)
		}
		f := &flaky{TPMCloser: raw, n: 3, rc: rc}
		if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(f); err == nil {
			t.Fatalf("%v: the unwrapped transport should fail", rc)
		}
		f.n = 3
		rsp, err := tpm2.GetRandom{BytesRequested: 8}.Execute(Retrying(f))
		if err != nil {
			t.Fatalf("%v: %v", rc, err)
		}
		if len(rsp.RandomBytes.Buffer) != 8 || f.n != 0 {
			t.Fatalf("%v: got %d bytes, %d retries left", rc, len(rsp.RandomBytes.Buffer), f.n)
		}
		raw.Close()
	}
}

func TestCounter(t *testing.T) {
	tp := swtpmtest.Start(t)
	dev, err := Open("unix:" + tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	c := NewCounter(dev)
	for range 3 {
		tpm2.GetRandom{BytesRequested: 4}.Execute(c)
	}
	if c.Count(tpm2.TPMCCGetRandom) != 3 || c.Total() != 3 || c.Count(tpm2.TPMCCCreate) != 0 {
		t.Fatalf("counts: GetRandom %d total %d", c.Count(tpm2.TPMCCGetRandom), c.Total())
	}
}

func TestOpenBadSpec(t *testing.T) {
	for _, s := range []string{"swtpm", "unix:/nonexistent/sock", "/nonexistent/tpm"} {
		if _, err := Open(s); err == nil {
			t.Errorf("Open(%q) succeeded", s)
		}
	}
}

func TestPropertyMissing(t *testing.T) {
	tp := swtpmtest.Start(t)
	dev, err := Open("unix:" + tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	// 0x1FF is not a defined property: the TPM answers with the next one.
	if _, err := Property(dev, tpm2.TPMPT(0x1FF)); err == nil {
		t.Fatal("Property accepted the TPM's answer for another property")
	}
}

// TestConcurrentUse: the agent's goroutines share one transport.
func TestConcurrentUse(t *testing.T) {
	tp := swtpmtest.Start(t)
	dev, err := Open("unix:" + tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			var err error
			for range 50 {
				var rsp *tpm2.GetRandomResponse
				if rsp, err = (tpm2.GetRandom{BytesRequested: 16}).Execute(dev); err == nil && len(rsp.RandomBytes.Buffer) != 16 {
					err = fmt.Errorf("%d random bytes", len(rsp.RandomBytes.Buffer))
				}
				if err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
