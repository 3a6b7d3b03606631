// Package tpmdev opens the node's TPM behind one transport: the kernel
// resource manager (/dev/tpmrm0), a swtpm unix socket or a swtpm TCP port.
// Every transport it returns retries the TPM's "try again" answers
// (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING) with a short backoff, which
// go-tpm's transports do not all do.
package tpmdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// Default is the kernel's resource-managed TPM device.
const Default = "/dev/tpmrm0"

// Open opens the TPM named by spec:
//
//	/dev/tpmrm0 (or "")         kernel resource manager (or any TPM character device)
//	unix:/path/to/swtpm-sock    swtpm --server type=unixio
//	tcp:127.0.0.1:2321          swtpm --server type=tcp (raw TPM commands)
//
// Emulators have no resource manager: transient objects and sessions left
// by an earlier, crashed run stay loaded and fill the TPM's few slots, so
// Open flushes them for the unix: and tcp: forms.
func Open(spec string) (transport.TPMCloser, error) {
	var (
		t        transport.TPMCloser
		err      error
		emulated bool
	)
	switch {
	case spec == "":
		t, err = linuxtpm.Open(Default)
	case strings.HasPrefix(spec, "unix:"):
		t, err = linuxudstpm.Open(strings.TrimPrefix(spec, "unix:"))
		emulated = true
	case strings.HasPrefix(spec, "tcp:"):
		t, err = openTCP(strings.TrimPrefix(spec, "tcp:"))
		emulated = true
	case strings.HasPrefix(spec, "/"):
		t, err = linuxtpm.Open(spec)
	default:
		return nil, fmt.Errorf("tpm %q: want a device path, unix:PATH or tcp:HOST:PORT", spec)
	}
	if err != nil {
		return nil, fmt.Errorf("opening TPM %s: %w", spec, err)
	}
	t = Retrying(t)
	if emulated {
		// An emulator that was just started may have bound its socket
		// without listening yet: give it a moment.
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, err = FlushTransients(t)
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("TPM %s: flushing leaked handles: %w", spec, err)
		}
	}
	return t, nil
}

// Retry policy: the TPM asks to be asked again; it did not run the command,
// so resending the same bytes (same session nonces) is correct.
var (
	retryBase  = 2 * time.Millisecond
	retryMax   = 250 * time.Millisecond
	retryTotal = 10 * time.Second
)

type retrying struct {
	transport.TPMCloser
	mu sync.Mutex
}

// Retrying wraps t so that commands answered with TPM_RC_RETRY,
// TPM_RC_YIELDED or TPM_RC_TESTING are sent again after a short backoff.
// It also serializes commands: the agent's attestation and vault share one
// TPM from several goroutines, and go-tpm's transports pair each write
// with the next read.
func Retrying(t transport.TPMCloser) transport.TPMCloser {
	if _, ok := t.(*retrying); ok {
		return t
	}
	return &retrying{TPMCloser: t}
}

func (r *retrying) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.TPMCloser.Close()
}

func (r *retrying) Send(cmd []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delay := retryBase
	deadline := time.Now().Add(retryTotal)
	for {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil {
			return rsp, err
		}
		rc, ok := ResponseCode(rsp)
		if !ok || !retryable(rc) || time.Now().After(deadline) {
			return rsp, nil
		}
		time.Sleep(delay)
		delay = min(delay*2, retryMax)
	}
}

func retryable(rc tpm2.TPMRC) bool {
	return rc == tpm2.TPMRCRetry || rc == tpm2.TPMRCYielded || rc == tpm2.TPMRCTesting
}

// ResponseCode returns the response code in a TPM response header.
func ResponseCode(rsp []byte) (tpm2.TPMRC, bool) {
	if len(rsp) < 10 {
		return 0, false
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])), true
}

// CommandCode returns the command code in a TPM command header.
func CommandCode(cmd []byte) (tpm2.TPMCC, bool) {
	if len(cmd) < 10 {
		return 0, false
	}
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])), true
}

// Counter is a transport that counts the commands sent through it by
// command code, and the time spent waiting for the TPM. Tests use it to
// prove what a boot did (and did not do); benchmarks to measure it.
type Counter struct {
	transport.TPM
	mu      sync.Mutex
	counts  map[tpm2.TPMCC]int
	total   int
	elapsed time.Duration
}

// NewCounter counts the commands sent to t.
func NewCounter(t transport.TPM) *Counter {
	return &Counter{TPM: t, counts: map[tpm2.TPMCC]int{}}
}

// Send implements transport.TPM.
func (c *Counter) Send(cmd []byte) ([]byte, error) {
	start := time.Now()
	rsp, err := c.TPM.Send(cmd)
	d := time.Since(start)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := CommandCode(cmd); ok {
		c.counts[cc]++
		c.total++
	}
	c.elapsed += d
	return rsp, err
}

// Elapsed returns the time spent in the TPM (transport included).
func (c *Counter) Elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.elapsed
}

// Count returns how many commands with code cc were sent.
func (c *Counter) Count(cc tpm2.TPMCC) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[cc]
}

// Total returns how many commands were sent.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Reset forgets all counts.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts = map[tpm2.TPMCC]int{}
	c.total = 0
	c.elapsed = 0
}

// Handles lists the TPM's handles of one type (transient, persistent, NV
// index, sessions).
func Handles(t transport.TPM, ht tpm2.TPMHT) ([]tpm2.TPMHandle, error) {
	var out []tpm2.TPMHandle
	next := uint32(ht) << 24
	for {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapHandles,
			Property:      next,
			PropertyCount: 64,
		}.Execute(t)
		if err != nil {
			return nil, err
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, err
		}
		for _, h := range hl.Handle {
			if uint32(h)>>24 != uint32(ht) {
				return out, nil
			}
			out = append(out, h)
			next = uint32(h) + 1
		}
		if !rsp.MoreData || len(hl.Handle) == 0 {
			return out, nil
		}
	}
}

// FlushTransients flushes every loaded transient object and session (on a
// TPM without a resource manager, those of earlier runs) and returns how
// many it flushed.
func FlushTransients(t transport.TPM) (int, error) {
	n := 0
	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		hs, err := Handles(t, ht)
		if err != nil {
			return n, err
		}
		for _, h := range hs {
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(t); err != nil {
				return n, fmt.Errorf("flushing 0x%08x: %w", uint32(h), err)
			}
			n++
		}
	}
	return n, nil
}

// Flush flushes a transient handle, for use in defers; errors are ignored
// because the handle is gone either way once the TPM restarts.
func Flush(t transport.TPM, h tpm2.TPMHandle) {
	tpm2.FlushContext{FlushHandle: h}.Execute(t)
}

// Property reads one TPM property and checks that the TPM answered the one
// asked for (a TPM lacking it answers with the next one).
func Property(t transport.TPM, p tpm2.TPMPT) (uint32, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(p),
		PropertyCount: 1,
	}.Execute(t)
	if err != nil {
		return 0, err
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return 0, err
	}
	if len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != p {
		return 0, fmt.Errorf("%w: 0x%x", ErrNoProperty, uint32(p))
	}
	return props.TPMProperty[0].Value, nil
}

// ErrNoProperty is returned by Property when the TPM does not report it.
var ErrNoProperty = errors.New("TPM does not report property")

// openTCP connects to swtpm's raw command port. swtpm answers each command
// with one response on the same connection.
func openTCP(addr string) (transport.TPMCloser, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return transport.FromReadWriteCloser(&framed{Conn: c}), nil
}

// framed reads one whole TPM response per Read: a stream socket may split
// it, and go-tpm reads once.
type framed struct {
	net.Conn
}

func (f *framed) Read(p []byte) (int, error) {
	var hdr [10]byte
	if _, err := io.ReadFull(f.Conn, hdr[:]); err != nil {
		return 0, err
	}
	size := int(binary.BigEndian.Uint32(hdr[2:6]))
	if size < len(hdr) || size > len(p) {
		return 0, fmt.Errorf("TPM response of %d bytes does not fit", size)
	}
	copy(p, hdr[:])
	if _, err := io.ReadFull(f.Conn, p[len(hdr):size]); err != nil {
		return 0, err
	}
	return size, nil
}
