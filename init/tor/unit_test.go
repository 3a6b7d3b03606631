package tor

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/internal/layout"
)

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

func TestFilesAccounts(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	f := Files{Root: root}
	if err := f.Ensure("_tor-a", 10001, 10001); err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure("_tor-b", 10002, 10002); err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure("_tor-a", 10003, 10003); err != nil { // new uid replaces
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err := f.Ensure("_tor-c", 10002, 10002); err == nil {
		t.Fatal("uid of _tor-b given to _tor-c")
	}
	after, _ := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if string(before) != string(after) {
		t.Fatal("refused Ensure changed passwd")
	}
	want := "root:x:0:0:root:/root:/bin/sh\n" +
		"_tor-b:x:10002:10002:tor relay:/nonexistent:/usr/sbin/nologin\n" +
		"_tor-a:x:10003:10003:tor relay:/nonexistent:/usr/sbin/nologin\n"
	if string(after) != want {
		t.Fatalf("passwd:\n%s\nwant:\n%s", after, want)
	}
	if err := f.Remove("_tor-a"); err != nil {
		t.Fatal(err)
	}
	g, _ := os.ReadFile(filepath.Join(root, "etc", "group"))
	if string(g) != "_tor-b:x:10002:\n" {
		t.Fatalf("group:\n%s", g)
	}
	if err := f.Ensure("bad:name", 1, 1); err == nil {
		t.Fatal("name with ':' accepted")
	}
}

func TestBuildTorrc(t *testing.T) {
	server := []byte("Nickname murazzano\nORPort 192.0.2.10:443\nORPort [2001:db8::10]:443\n" +
		"DataDirectory /var/lib/tor-instances/murazzano\nUser _tor-murazzano\nContactInfo x\n")
	c, dropped, err := buildTorrc(server, "/run/patela/state/murazzano", "/run/patela/run/murazzano/control", layout.MetricsAddr(10001))
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 2 || dropped[0].Key != "DataDirectory" || dropped[1].Key != "User" {
		t.Errorf("dropped %v, want the server's DataDirectory and User", dropped)
	}
	got := string(c.Render())
	want := "Nickname murazzano\nORPort 192.0.2.10:443\nORPort [2001:db8::10]:443\nContactInfo x\n" +
		"DataDirectory /run/patela/state/murazzano\nControlSocket /run/patela/run/murazzano/control\n" +
		"CookieAuthentication 1\nRunAsDaemon 0\nSocksPort 0\nNoExec 1\nSandbox 1\nOfflineMasterKey 1\n" +
		"MetricsPort 127.66.39.17:9035\nMetricsPortPolicy accept 127.0.0.1\n"
	if got != want {
		t.Fatalf("torrc:\n%s\nwant:\n%s", got, want)
	}
	if !needsBindCap(c) {
		t.Error("ORPort 443 needs CAP_NET_BIND_SERVICE")
	}
	high, _, _ := buildTorrc([]byte("ORPort 9001\nORPort [2001:db8::10]:9001 IPv6Only\nDirPort auto\n"), "/d", "/c", layout.MetricsAddr(1))
	if needsBindCap(high) {
		t.Error("ports >= 1024 need no capability")
	}
	if _, _, err := buildTorrc([]byte("Bogus 1\n"), "/d", "/c", layout.MetricsAddr(1)); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("unknown option: %v", err)
	}
}

func TestRestartPolicy(t *testing.T) {
	o := &Options{BackoffMin: time.Second, BackoffMax: 5 * time.Second, StableAfter: time.Minute,
		CrashLimit: 5, CrashWindow: 5 * time.Minute}
	p := restartPolicy{o: o}
	now := time.Unix(1e9, 0)
	var got []time.Duration
	// Four quick crashes: 1, 2, 4, 5 (capped) seconds; the fifth within
	// the window is a crash loop.
	for i := 0; i < 5; i++ {
		d, _ := p.exited(now, now.Add(time.Second))
		got = append(got, d)
		now = now.Add(d + time.Second)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, -1}
	if !slices.Equal(got, want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
	// After a config change: counting starts over.
	p.reset()
	if d, n := p.exited(now, now.Add(time.Second)); d != time.Second || n != 1 {
		t.Fatalf("after reset: %v %d", d, n)
	}
	// A run longer than StableAfter resets the backoff and the count.
	p.exited(now, now.Add(time.Second))
	now = now.Add(10 * time.Second)
	if d, n := p.exited(now, now.Add(2*time.Minute)); d != time.Second || n != 1 {
		t.Fatalf("after a stable run: delay %v, %d exits counted", d, n)
	}
	// Exits spread wider than the window never add up to a crash loop.
	p.reset()
	for i := 0; i < 20; i++ {
		now = now.Add(2 * time.Minute)
		if d, _ := p.exited(now.Add(-50*time.Second), now); d < 0 {
			t.Fatalf("exit %d every 2 min counted as a crash loop", i)
		}
	}
}
