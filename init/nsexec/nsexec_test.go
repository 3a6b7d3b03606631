package nsexec_test

import (
	"os"
	"strings"
	"testing"

	"patela/init/netnstest"
	"patela/init/nsexec"
)

func TestDoAndSysctlStayInTheNamespace(t *testing.T) {
	ns := netnstest.New(t)
	host, _ := os.Readlink("/proc/thread-self/ns/net")
	var inside string
	if err := nsexec.Do(ns.Fd(), func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside == host || inside == "" {
		t.Fatalf("Do ran in %q, host is %q", inside, host)
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != host {
		t.Fatalf("caller left in %q", now)
	}
	hostVal, _ := os.ReadFile("/proc/sys/net/ipv4/conf/lo/rp_filter")
	want := "2"
	if strings.TrimSpace(string(hostVal)) == "2" {
		want = "1"
	}
	if err := nsexec.WriteSysctl(ns.Fd(), "net/ipv4/conf/lo/rp_filter", want); err != nil {
		t.Fatal(err)
	}
	if got := ns.Run(t, "cat", "/proc/sys/net/ipv4/conf/lo/rp_filter"); strings.TrimSpace(got) != want {
		t.Errorf("namespace rp_filter = %q, want %s", got, want)
	}
	if after, _ := os.ReadFile("/proc/sys/net/ipv4/conf/lo/rp_filter"); string(after) != string(hostVal) {
		t.Errorf("host sysctl changed: %q → %q", hostVal, after)
	}
	if err := nsexec.WriteSysctl(ns.Fd(), "net/ipv4/conf/nope0/rp_filter", "1"); err == nil {
		t.Error("sysctl of a missing interface accepted")
	}
}
