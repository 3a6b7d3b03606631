package tor

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/init/netnstest"
	"patela/init/nsexec"
	"patela/internal/testutil"
	"patela/internal/torrc"
)

// attackLines are what a server whose database an attacker edited could
// send, one line per class of forbidden option, each aimed at relay
// name's files (dataDir) or at a program: serve the RSA identity key on
// the DirPort, run a program, move the keys, write files, open
// listeners. canary is a path the program would create.
func attackLines(dataDir, canary string, dirPort int) []string {
	return []string{
		fmt.Sprintf("DirPort 127.0.0.1:%d", dirPort),
		"DirPortFrontPage " + filepath.Join(dataDir, "keys", "secret_id_key"),
		"ServerTransportPlugin obfs4 exec /bin/sh -c \"touch " + canary + "\"",
		"KeyDirectory " + canary + ".keys",
		"CacheDirectory " + canary + ".cache",
		"Log notice file " + canary + ".log",
		"GeoIPFile " + filepath.Join(dataDir, "keys", "secret_id_key"),
		"HiddenServiceDir " + canary + ".hs",
		"HiddenServicePort 80 127.0.0.1:80",
		"SocksPort 127.0.0.1:39250",
		"ControlPort 127.0.0.1:39251",
		"MetricsPort 127.0.0.1:39252",
		"MetricsPortPolicy accept *",
		"ExtORPort 127.0.0.1:39253",
		"NoExec 0",
		"Sandbox 0",
		"User root",
		"TestingTorNetwork 1",     // not on the allowlist
		"Socks5Proxy 127.0.0.1:1", // nor this
	}
}

// attackRefused are the option names attackLines should be refused as.
var attackRefused = "CacheDirectory,ControlPort,DirPortFrontPage,ExtORPort,GeoIPFile,HiddenServiceDir,HiddenServicePort," +
	"KeyDirectory,Log,MetricsPort,MetricsPortPolicy,NoExec,Sandbox,ServerTransportPlugin,Socks5Proxy,SocksPort,TestingTorNetwork,User"

// fetchAll asks tor's DirPort for its front page and directory documents
// and returns every byte it answered, from inside namespace ns.
func fetchAll(t *testing.T, ns, port int) []byte {
	t.Helper()
	var all []byte
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = nsexec.Do(ns, func() error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	for _, p := range []string{"/", "/index.html", "/tor/server/authority", "/tor/keys/all", "/tor/server/all", "/tor/micro/all"} {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, p))
		if err != nil {
			t.Fatalf("GET %s from the DirPort: %v", p, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		all = append(append(all, resp.Status...), b...)
	}
	return all
}

// attackTorrc is a relay torrc that listens (DisableNetwork 0, in a
// namespace with nothing but lo, so it reaches no Tor network), plus
// extra.
func attackTorrc(name string, port int, extra []string) []byte {
	lines := []string{
		"ContactInfo patela test <ops@example.org>",
		"ExitRelay 0",
		"ShutdownWaitLength 1",
		"AssumeReachable 1",
		"PublishServerDescriptor 0",
		"Nickname " + name,
		fmt.Sprintf("ORPort 127.0.0.1:%d", port),
		"Address 192.0.2.10",
	}
	return []byte(strings.Join(append(lines, extra...), "\n") + "\n")
}

// The attack of issue 11: a served torrc with DirPortFrontPage naming the
// relay's secret_id_key would make tor serve the RSA identity key to
// whoever fetches the DirPort. The supervisor drops it with every other
// forbidden option, reports them, and tor runs, confined, serving no key
// byte. A control run of the same tor without the filter shows the scan
// finds the key when it is served.
func TestDirPortFrontPageAttack(t *testing.T) {
	ns := netnstest.New(t)
	h := newHarness(t, func(o *Options) { o.NetNS = ns.Fd() })
	name, dirPort := "victim", 39230
	dataDir := filepath.Join(h.root, "state", name)
	canary := filepath.Join(h.root, "pwned")
	spec := Spec{Name: name, UID: 20301, Torrc: attackTorrc(name, 39231, attackLines(dataDir, canary, dirPort))}
	if err := h.sup.Apply(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(t, name)
	if st.Refused != attackRefused {
		t.Errorf("refused %q\nwant    %q", st.Refused, attackRefused)
	}
	live, err := os.ReadFile(filepath.Join(h.root, "run", name+".torrc"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := torrc.Parse(live)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range c.Lines {
		if o := torrc.OwnerOf(l.Key); o == torrc.OwnerForbidden {
			t.Errorf("live torrc has forbidden %s %s", l.Key, l.Value)
		}
	}
	for _, want := range []string{"NoExec 1", "Sandbox 1", "SocksPort 0"} {
		if !strings.Contains(string(live), "\n"+want+"\n") {
			t.Errorf("live torrc lacks %q", want)
		}
	}
	ps := procStatus(t, st.PID)
	if ps["Seccomp"] != "2" || ps["NoNewPrivs"] != "1" {
		t.Errorf("tor runs with Seccomp %q NoNewPrivs %q; want the sandbox's filter mode 2 and 1", ps["Seccomp"], ps["NoNewPrivs"])
	}

	key := readKeyFile(t, filepath.Join(dataDir, "keys", "secret_id_key"))
	waitFor(t, "the DirPort to listen", func() bool {
		return nsexec.Do(ns.Fd(), func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", dirPort), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}) == nil
	})
	body := fetchAll(t, ns.Fd(), dirPort)
	if how := testutil.KeyLeak(body, key); how != "" {
		t.Fatalf("the DirPort served %s", how)
	}
	for _, p := range []int{39250, 39251, 39252, 39253} {
		err := nsexec.Do(ns.Fd(), func() error {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			t.Errorf("port %d, which only a forbidden option opens, accepts connections", p)
		}
	}
	for _, f := range []string{canary, canary + ".keys", canary + ".cache", canary + ".log", canary + ".hs"} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s exists: a forbidden option reached tor", f)
		}
	}
	if now := h.status(t, name); now.State != st.State || now.PID != st.PID {
		t.Errorf("tor did not keep running: %+v", now)
	}

	// The control: the same attack lines given to tor directly.
	ctl := t.TempDir()
	ctlData := filepath.Join(ctl, "data")
	if err := os.MkdirAll(filepath.Join(ctlData, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(ctlData, "keys", "secret_id_key")
	if err := os.WriteFile(secret, key, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(ctl, "torrc")
	text := string(attackTorrc("control", 39241, nil)) + fmt.Sprintf("SocksPort 0\nDataDirectory %s\nDirPort 127.0.0.1:39240\nDirPortFrontPage %s\n", ctlData, secret)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tor", "--defaults-torrc", "/dev/null", "-f", conf)
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := nsexec.Do(ns.Fd(), cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "the control tor's DirPort", func() bool {
		return nsexec.Do(ns.Fd(), func() error {
			c, err := net.DialTimeout("tcp", "127.0.0.1:39240", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}) == nil
	})
	if how := testutil.KeyLeak(fetchAll(t, ns.Fd(), 39240), key); how == "" {
		t.Fatalf("control: tor without the allowlist did not serve its key; the test proves nothing\n%s", out.String())
	}
}

func readKeyFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
