// Command pcrprobe is /init of a test initramfs: it prints the kernel
// command line and every SHA-256 PCR as the kernel reads them
// (/sys/class/tpm/tpm0/pcr-sha256/N), one "pcrprobe pcr N HEX" line each,
// then powers the machine off. e2e tests compare the lines with stimage's
// predictions.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := syscall.Mount(m.src, m.dst, m.fs, 0, ""); err != nil {
			fmt.Printf("pcrprobe: mount %s: %v\n", m.dst, err)
		}
	}
	dir := "/sys/class/tpm/tpm0/pcr-sha256"
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cl, _ := os.ReadFile("/proc/cmdline")
	fmt.Printf("pcrprobe cmdline %q\n", strings.TrimSpace(string(cl)))
	for i := 0; i < 24; i++ {
		b, err := os.ReadFile(fmt.Sprintf("%s/%d", dir, i))
		if err != nil {
			fmt.Printf("pcrprobe: PCR %d: %v\n", i, err)
			continue
		}
		fmt.Printf("pcrprobe pcr %d %s\n", i, strings.ToLower(strings.TrimSpace(string(b))))
	}
	fmt.Println("pcrprobe done")
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
