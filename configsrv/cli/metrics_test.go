package cli

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"patela/configsrv/pki"
	"patela/internal/api"
	"patela/internal/testutil"
)

// serve --metrics-listen :PORT serves /metrics on loopback, plain HTTP,
// counting the API's requests by route; it stops with the server. A bad
// address is refused before anything listens.
func TestServeMetrics(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	ok(t, db, "init", "--dir", dir)
	fails(t, db, "--metrics-listen", "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", "no-port")

	var stderr testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"--db", db, "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--metrics-listen", ":0"},
			strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	serving := regexp.MustCompile(`serving (https://\S+)`)
	metricsOn := regexp.MustCompile(`metrics on (http://(\S+)/metrics)`)
	var url, murl, maddr string
	for i := 0; i < 500 && url == ""; i++ {
		if m := serving.FindStringSubmatch(stderr.String()); m != nil {
			url = m[1]
		}
		if m := metricsOn.FindStringSubmatch(stderr.String()); m != nil {
			murl, maddr = m[1], m[2]
		}
		time.Sleep(10 * time.Millisecond)
	}
	if url == "" || murl == "" {
		t.Fatalf("server did not start: %s", stderr.String())
	}
	if !strings.HasPrefix(maddr, "127.0.0.1:") || strings.Contains(stderr.String(), "warning") {
		t.Errorf("a bare :0 listens on %s: %s", maddr, stderr.String())
	}
	ca, _ := os.ReadFile(filepath.Join(dir, pki.CACert))
	c, err := api.NewClient(url, ca)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/nope", "/nope/again", api.PathConfig} {
		resp, err := c.HTTP.Get(url + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(murl)
	if err != nil {
		t.Fatal(err)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, m := range fams["patela_http_requests_total"].GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		got[strings.Join(ls, ",")] = m.GetCounter().GetValue()
	}
	want := map[string]float64{"code=404,endpoint=other": 2, "code=401,endpoint=" + api.PathConfig: 1}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("requests %s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("requests %v, want only %v", got, want)
	}
	if fams["patela_nodes"] == nil || fams["process_resident_memory_bytes"] == nil {
		t.Errorf("fleet or process families missing: %d families", len(fams))
	}
	if resp, err := http.Get("http://" + maddr + "/v1/node/config"); err != nil || resp.StatusCode != 404 {
		t.Errorf("the metrics port serves more than /metrics: %v %v", resp, err)
	}

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	if _, err := http.Get(murl); err == nil {
		t.Error("/metrics still answers after serve stopped")
	}
}
