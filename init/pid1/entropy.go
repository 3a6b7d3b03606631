package pid1

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rndAddEntropy is RNDADDENTROPY, _IOW('R', 0x03, int[2]).
const rndAddEntropy = 0x40085203

// EntropyReady reports whether getrandom(2) would not block.
func EntropyReady() bool {
	var b [1]byte
	_, err := unix.Getrandom(b[:], unix.GRND_NONBLOCK)
	return err == nil
}

// WaitEntropy returns once the kernel RNG is initialized: TLS, DHCP
// transaction ids and the TPM session nonces all read crypto/rand, which
// would otherwise block without a word. It waits up to wait; then, if
// seed is set, credits the kernel with seed's bytes (the TPM's RNG) and
// waits again.
func WaitEntropy(ctx context.Context, wait time.Duration, seed func() ([]byte, error), log *slog.Logger) error {
	if poll(ctx, wait) {
		return nil
	}
	if seed == nil {
		return fmt.Errorf("kernel RNG not ready after %v and no seed source", wait)
	}
	b, err := seed()
	if err != nil {
		return fmt.Errorf("kernel RNG not ready after %v; seeding failed: %w", wait, err)
	}
	if err := AddEntropy(b); err != nil {
		return fmt.Errorf("kernel RNG not ready after %v; seeding failed: %w", wait, err)
	}
	log.Info("kernel RNG seeded", "bytes", len(b))
	if !poll(ctx, 5*time.Second) {
		return errors.New("kernel RNG still not ready after seeding")
	}
	return nil
}

func poll(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if EntropyReady() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// AddEntropy mixes b into the kernel pool and credits it fully
// (RNDADDENTROPY; needs CAP_SYS_ADMIN). Only for a trusted source.
func AddEntropy(b []byte) error {
	if len(b) == 0 {
		return errors.New("no seed bytes")
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	return nil
}
