// Package nsexec runs a function inside a network namespace. The agent
// itself lives in the initial namespace (ns 0 = "the current one"); tests
// hand the network packages a namespace they created, and only the few
// calls that depend on the calling thread's namespace (raw sockets,
// /proc/sys/net) go through Do.
package nsexec

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a locked OS thread switched into the namespace ns (an open
// netns file descriptor). ns 0 runs fn in the current namespace. Sockets
// fn opens stay in ns after Do returns.
func Do(ns int, fn func() error) error {
	if ns == 0 {
		return fn()
	}
	errc := make(chan error, 1)
	// A fresh goroutine: if restoring the namespace fails the thread is
	// left locked and dies with the goroutine instead of serving others.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(ns)); err != nil {
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leaving netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// WriteSysctl writes value to /proc/sys/<key> (key like
// "net/ipv4/conf/eth0/rp_filter") as seen from the namespace ns.
func WriteSysctl(ns int, key, value string) error {
	return Do(ns, func() error {
		p := filepath.Join("/proc/sys", key)
		if err := os.WriteFile(p, []byte(value), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}
