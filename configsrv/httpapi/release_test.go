package httpapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"patela/configsrv/testsrv"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
)

func releaseFile(t *testing.T, dir, name, sections string, key *ecdsa.PrivateKey) (string, map[int]pcr.Value) {
	t.Helper()
	var p4, p11 pcr.Value
	p4.Measure([]byte("uki " + name))
	p11.Measure([]byte(sections))
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: p4, 11: p11, 12: {}}, release.UKIPolicyPCRs,
		map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := r.Approve(key); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := r.Marshal()
	p := filepath.Join(dir, name+".json")
	os.WriteFile(p, b, 0o644)
	have := map[int]pcr.Value{}
	for n := 0; n < 16; n++ {
		have[n] = pcr.Value{}
	}
	have[4], have[11] = p4, p11
	return p, have
}

// TestReleases: releases added with the CLI are matched to a node's PCRs
// and their approval served; retired or unknown ones are refused with the
// releases to boot; the node's sealing mode shows in node list; bad
// release files and bad requests change nothing.
func TestReleases(t *testing.T) {
	s := testsrv.Start(t)
	id, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	ctx := context.Background()
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fa, pcrsA := releaseFile(t, dir, "A", "sections A", key)
	fb, _ := releaseFile(t, dir, "B", "sections B", key)
	unapproved, _ := releaseFile(t, dir, "U", "sections U", nil)
	s.Admin(t, "release", "add", fa)
	s.Admin(t, "release", "add", fb)
	tampered := filepath.Join(dir, "T.json")
	b, _ := os.ReadFile(fb)
	os.WriteFile(tampered, []byte(strings.Replace(string(b), `"name": "B"`, `"name": "T"`, 1)), 0o644) // same policy as B
	for _, bad := range []string{fa, unapproved, tampered, filepath.Join(dir, "missing.json")} {
		if out, err := s.AdminErr("release", "add", bad); err == nil {
			t.Errorf("release add %s accepted: %s", bad, out)
		}
	}
	var list []struct {
		Name    string `json:"name"`
		Retired string `json:"retired"`
	}
	json.Unmarshal([]byte(s.Admin(t, "release", "list", "--json")), &list)
	if len(list) != 2 {
		t.Fatalf("release list: %+v", list)
	}

	rsp, err := c.Release(ctx, tok, &api.ReleaseRequest{Sealing: "release", PCRs: pcrsA})
	if err != nil || rsp.Release == nil || rsp.Release.Name != "A" || rsp.Release.Approval == nil {
		t.Fatalf("approval of A: %+v %v", rsp, err)
	}
	if err := rsp.Release.Check(); err != nil {
		t.Fatalf("served record: %v", err)
	}
	nodes := func() map[int64]string {
		var ns []struct {
			ID      int64  `json:"id"`
			Sealing string `json:"sealing"`
			Release string `json:"release"`
		}
		json.Unmarshal([]byte(s.Admin(t, "node", "list", "--json")), &ns)
		out := map[int64]string{}
		for _, n := range ns {
			out[n.ID] = n.Sealing + "/" + n.Release
		}
		return out
	}
	if got := nodes()[id]; got != "release/A" {
		t.Errorf("node list: %q, want release/A", got)
	}

	other := map[int]pcr.Value{4: {1}, 11: {2}, 12: {}, 15: {}}
	_, err = c.Release(ctx, tok, &api.ReleaseRequest{Sealing: "release", PCRs: other})
	if e, _ := api.AsError(err); e == nil || e.Code != api.CodeReleaseUnknown || e.Status != http.StatusNotFound ||
		!strings.Contains(e.Message, "B (uki), A (uki)") {
		t.Errorf("unknown PCRs: %v", err)
	}
	s.Admin(t, "release", "retire", "A")
	if _, err := s.AdminErr("release", "retire", "A"); err == nil {
		t.Error("retiring twice succeeded")
	}
	_, err = c.Release(ctx, tok, &api.ReleaseRequest{Sealing: "release", PCRs: pcrsA})
	if e, _ := api.AsError(err); e == nil || e.Code != api.CodeReleaseRetired || e.Status != http.StatusGone ||
		!strings.Contains(e.Message, "release A is retired") || !strings.Contains(e.Message, "B (uki)") {
		t.Errorf("retired release: %v", err)
	} else {
		t.Logf("retired: %s", e.Message)
	}
	if got := nodes()[id]; got != "release/" {
		t.Errorf("node list after a refusal: %q", got)
	}
	if _, err := c.Release(ctx, tok, &api.ReleaseRequest{Sealing: "unmeasured"}); err != nil {
		t.Fatal(err)
	}
	if got := nodes()[id]; got != "unmeasured/" {
		t.Errorf("node list: %q, want unmeasured", got)
	}
	if !strings.Contains(s.Admin(t, "node", "list"), "unmeasured") {
		t.Error("the node list table does not show unmeasured")
	}
	for name, req := range map[string]*api.ReleaseRequest{
		"no mode":          {},
		"bad mode":         {Sealing: "none"},
		"release, no pcrs": {Sealing: "release"},
		"pcr 16":           {Sealing: "release", PCRs: map[int]pcr.Value{16: {}}},
		"unmeasured pcrs":  {Sealing: "unmeasured", PCRs: pcrsA},
	} {
		if _, err := c.Release(ctx, tok, req); !api.IsCode(err, api.CodeBadRequest) {
			t.Errorf("%s: %v, want bad_request", name, err)
		}
	}
	if got := nodes()[id]; got != "unmeasured/" {
		t.Errorf("a bad request changed the node: %q", got)
	}
	if _, err := c.Release(ctx, "", &api.ReleaseRequest{Sealing: "unmeasured"}); !api.IsCode(err, api.CodeUnauthorized) {
		t.Errorf("no token: %v", err)
	}
}
