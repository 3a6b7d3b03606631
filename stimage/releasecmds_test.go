package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"patela/internal/release"
	"patela/internal/testutil"
)

func newcArchive(t *testing.T, recs ...cpio.Record) string {
	t.Helper()
	var b strings.Builder
	w := cpio.Newc.Writer(&b)
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	cpio.WriteTrailer(w)
	return b.String()
}

// TestReleaseFlow: policy key, a UKI release approved in one step, a
// second approved separately; a debug initramfs is never made a release;
// an ospkg release without a firmware anchor is refused.
func TestReleaseFlow(t *testing.T) {
	testutil.RequireTool(t, "objcopy", "apt-get install binutils")
	k := "../build/kernel/vmlinuz"
	if _, err := os.Stat(k); err != nil {
		testutil.SkipOrFail(t, "no kernel in build/kernel (just kernel)")
	}
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	stimage(t, "keygen", "policy-key", "--key-out", p("policy.key"), "--pub-out", p("policy.pub"))
	stimageFails(t, "keygen", "policy-key", "--key-out", p("policy.key"), "--pub-out", p("other.pub"))
	if fi, _ := os.Stat(p("policy.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("policy key mode %o", fi.Mode().Perm())
	}
	write(t, p("os-release"), "ID=patela\n")
	pub := policyKeyField(read(t, p("policy.pub")))
	cfg := func(sealing, key string) cpio.Record {
		return cpio.StaticFile("etc/patela/agent.json", `{"server_url":"https://x","sealing":"`+sealing+`","policy_key":"`+key+`"}`, 0o644)
	}
	write(t, p("prod.cpio"), newcArchive(t, cpio.StaticFile("init", "agent", 0o755), cfg("release", pub)))
	write(t, p("debug.cpio"), newcArchive(t, cpio.StaticFile("init", "agent", 0o755), cfg("release", pub), cpio.Symlink("bin/sh", "../bbin/gosh")))
	write(t, p("lab.cpio"), newcArchive(t, cpio.StaticFile("init", "agent", 0o755), cfg("unmeasured", "")))
	stimage(t, "keygen", "policy-key", "--key-out", p("other.key"), "--pub-out", p("other.pub"))
	write(t, p("other.cpio"), newcArchive(t, cpio.StaticFile("init", "agent", 0o755), cfg("release", policyKeyField(read(t, p("other.pub"))))))
	for _, n := range []string{"prod", "debug", "lab", "other"} {
		stimage(t, "uki", "create", "--kernel", k, "--initramfs", p(n+".cpio"), "--os-release", p("os-release"), "--out", p(n+".efi"))
	}
	stimage(t, "release", "create", "--name", "a-1", "--uki", p("prod.efi"), "--key", p("policy.key"), "--out", p("a.json"))
	r, err := release.Parse(read(t, p("a.json")))
	if err != nil || r.Approval == nil || r.Kind != release.KindUKI || r.Boot != "entry" {
		t.Fatalf("release %+v, %v", r, err)
	}
	stimage(t, "release", "create", "--name", "b-1", "--boot", "direct", "--uki", p("prod.efi"), "--out", p("b.json"))
	if r, _ := release.Parse(read(t, p("b.json"))); r.Approval != nil {
		t.Error("release created without --key is approved")
	}
	stimage(t, "release", "approve", "--key", p("policy.key"), "--release", p("b.json"))
	if r, _ := release.Parse(read(t, p("b.json"))); r.Approval == nil {
		t.Error("release approve did not approve")
	}
	stimageFails(t, "release", "create", "--name", "dbg", "--uki", p("debug.efi"), "--key", p("policy.key"), "--out", p("dbg.json"))
	if _, err := os.Stat(p("dbg.json")); err == nil {
		t.Error("a debug image became a release file")
	}
	stimageFails(t, "release", "approve", "--key", p("policy.pub"), "--release", p("b.json"))
	// An unmeasured image protects nothing; an image trusting another key
	// could never use this key's approval.
	stimageFails(t, "release", "create", "--name", "lab", "--uki", p("lab.efi"), "--out", p("lab.json"))
	stimage(t, "release", "create", "--name", "other", "--uki", p("other.efi"), "--out", p("other.json"))
	stimageFails(t, "release", "approve", "--key", p("policy.key"), "--release", p("other.json"))
	stimage(t, "release", "approve", "--key", p("other.key"), "--release", p("other.json"))
	stimageFails(t, "release", "create", "--name", "bad name", "--uki", p("prod.efi"), "--out", p("c.json"))
	stimageFails(t, "release", "create", "--name", "o", "--ospkg", p("os"), "--trust-policy", d, "--out", p("o.json"))
}
