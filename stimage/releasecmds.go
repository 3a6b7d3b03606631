package main

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"patela/initramfs/inspect"
	"patela/internal/atomicfile"
	"patela/internal/cmdline"
	"patela/internal/layout"
	"patela/internal/pcr"
	"patela/internal/release"
	"patela/stimage/keygen"
	"patela/stimage/ospkg"
	"patela/stimage/uki"
)

func keygenPolicyKey(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var keyOut, pubOut string
	f.str(&keyOut, "key-out", "keyOut", "policy.key", "private key output `FILE` (PKCS#8 PEM, 0600); keep it offline")
	f.str(&pubOut, "pub-out", "pubOut", "policy.pub", "public key output `FILE` (PEM)")
	if err := f.parse(args); err != nil {
		return err
	}
	for _, p := range []string{keyOut, pubOut} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists: refusing to overwrite a policy key (every vault sealed to it would need the old one)", p)
		}
	}
	k, err := keygen.NewPolicyKey()
	if err != nil {
		return err
	}
	priv, pub, err := keygen.MarshalPolicyKey(k)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyOut, priv, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(pubOut, pub, 0o644); err != nil {
		return err
	}
	p, _ := release.ParsePublicKey(pub)
	name, _ := release.KeyName(p)
	fmt.Fprintf(e.out, "wrote %s and %s (ECDSA P-256, TPM name %x)\n", keyOut, pubOut, name)
	fmt.Fprintf(e.out, "agent.json of release images: \"sealing\": \"release\", \"policy_key\": %q\n", policyKeyField(pub))
	return nil
}

// policyKeyField is the agent config's form of a public key: base64 DER.
func policyKeyField(pubPEM []byte) string {
	blk, _ := pem.Decode(pubPEM)
	if blk == nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(blk.Bytes)
}

// anchors is a repeatable --anchor-pcr N=HEX flag.
type anchors map[int]pcr.Value

func (a anchors) String() string { return fmt.Sprint(map[int]pcr.Value(a)) }

func (a anchors) Set(s string) error {
	ns, hx, ok := strings.Cut(s, "=")
	n, err := strconv.Atoi(ns)
	if !ok || err != nil || n < 0 || n > 7 {
		return fmt.Errorf("%q: want N=HEX with N a firmware PCR 0-7", s)
	}
	v, err := pcr.Parse(hx)
	if err != nil {
		return err
	}
	a[n] = v
	return nil
}

func releaseCreate(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var name, out, ukiPath, boot, pkg, policyDir, tlsRoots, keyPath string
	anch := anchors{}
	f.str(&name, "name", "", "", "release `NAME`, e.g. patela-2026.12.1 (required)")
	f.str(&out, "out", "", "", "release `FILE` to write (required)")
	f.str(&ukiPath, "uki", "", "", "the UKI `FILE` of a uki release")
	f.str(&boot, "boot", "", string(uki.BootEntry), "uki: how the firmware starts it (`MODE`: entry or direct), for PCR 4")
	f.str(&pkg, "ospkg", "", "", "the signed OS package `NAME` of an ospkg release")
	f.str(&policyDir, "trust-policy", "trustPolicy", "", "ospkg: stboot's trust policy `DIR`")
	f.str(&tlsRoots, "tls-roots", "tlsRoots", "", "ospkg: stboot's HTTPS roots `FILE` (default DIR/"+TLSRootsFile+")")
	f.Var(anch, "anchor-pcr", "ospkg: `N=HEX`, a firmware PCR (0-7) that pins stboot itself, e.g. its PCR 4 (repeatable; at least one)")
	f.str(&keyPath, "key", "", "", "approve at once with this policy key `FILE` (else: stimage release approve)")
	if err := f.parse(args); err != nil {
		return err
	}
	if name == "" || out == "" || (ukiPath == "") == (pkg == "") {
		return cmdline.Usagef("--name, --out and exactly one of --uki and --ospkg are required")
	}
	var r *release.Release
	var err error
	if ukiPath != "" {
		if len(anch) > 0 || policyDir != "" {
			return cmdline.Usagef("--anchor-pcr and --trust-policy are for ospkg releases")
		}
		r, err = ukiRelease(name, ukiPath, boot)
	} else {
		r, err = ospkgRelease(name, pkg, policyDir, tlsRoots, anch)
	}
	if err != nil {
		return err
	}
	if keyPath != "" {
		if err := approve(r, keyPath); err != nil {
			return err
		}
	}
	b, err := r.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(out, b, 0o644); err != nil {
		return err
	}
	state := "unapproved: run stimage release approve"
	if r.Approval != nil {
		state = "approved"
	}
	fmt.Fprintf(e.out, "wrote %s: release %s (%s), policy PCRs %v, digest %s, %s\n", out, r.Name, r.Kind, r.Policy.PCRs, r.Policy.Digest, state)
	return nil
}

// refuseDebug keeps a debug image (a shell on the console before the vault
// opens) out of every release.
func refuseDebug(initramfs []byte) error {
	sh, err := inspect.DebugShell(initramfs)
	if err != nil {
		return fmt.Errorf("cannot check the initramfs for a debug shell, refusing to make it a release: %w", err)
	}
	if sh != "" {
		return fmt.Errorf("the initramfs holds %s: a debug image can never be a release (its shell could reach the vault)", sh)
	}
	return nil
}

// imagePolicyKey reads the agent config in the initramfs: an image that
// seals unmeasured protects nothing when approved, so it is refused; the
// policy key it trusts is returned (PKIX DER) for the approval to match.
func imagePolicyKey(initramfs []byte) ([]byte, error) {
	cfg, ok, err := inspect.File(initramfs, strings.TrimPrefix(layout.AgentConfig, "/"))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("the initramfs has no %s: not a patela image", layout.AgentConfig)
	}
	var ac struct {
		Sealing   string `json:"sealing"`
		PolicyKey string `json:"policy_key"`
	}
	if err := json.Unmarshal(cfg, &ac); err != nil {
		return nil, fmt.Errorf("%s: %w", layout.AgentConfig, err)
	}
	if ac.Sealing == "unmeasured" {
		return nil, errors.New(`the image's agent seals "unmeasured" (any OS can unseal its vault): approving it would protect nothing; build it with -policy-key`)
	}
	der, err := base64.StdEncoding.DecodeString(ac.PolicyKey)
	if err != nil || ac.PolicyKey == "" {
		return nil, fmt.Errorf("the image's agent config has no valid policy_key")
	}
	return der, nil
}

func ukiRelease(name, path, bootName string) (*release.Release, error) {
	b, err := uki.ParseBoot(bootName)
	if err != nil {
		return nil, err
	}
	u, err := readLimited(path, uki.MaxKernel+uki.MaxInitramfs+1<<20)
	if err != nil {
		return nil, err
	}
	m, err := uki.Measure(u, b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	initrd, err := uki.Section(u, ".initrd")
	if err != nil || initrd == nil {
		return nil, fmt.Errorf("%s: no .initrd section (%v)", path, err)
	}
	if err := refuseDebug(initrd); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pk, err := imagePolicyKey(initrd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	arts := map[string]string{"uki": fmt.Sprintf("%x", m.FileSHA256), "uki_authenticode": fmt.Sprintf("%x", m.UKIAuthenticode),
		"policy_key": sha256hex(pk)}
	for _, s := range m.Sections {
		arts[strings.TrimPrefix(s.Name, ".")] = s.SHA256
	}
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: m.PCR4, 11: m.PCR11, 12: m.PCR12}, release.UKIPolicyPCRs, arts)
	if err != nil {
		return nil, err
	}
	r.Boot = string(b)
	return r, nil
}

func ospkgRelease(name, pkg, policyDir, tlsRoots string, anch anchors) (*release.Release, error) {
	if len(anch) == 0 {
		return nil, errors.New("an ospkg release needs --anchor-pcr: PCR 12 and 13 are extended by stboot, software any OS could imitate; " +
			"a firmware PCR (PCR 4 of the stboot image under UEFI: stimage uki pcrs STBOOT.efi) must pin stboot itself")
	}
	p12, p13, arts, err := ospkgMeasure(pkg, policyDir, tlsRoots)
	if err != nil {
		return nil, err
	}
	zb, _, _, _, err := load(pkg)
	if err != nil {
		return nil, err
	}
	p, err := ospkg.Open(zb)
	if err != nil {
		return nil, err
	}
	if err := refuseDebug(p.Initramfs); err != nil {
		return nil, fmt.Errorf("%s: %w", pkg, err)
	}
	pk, err := imagePolicyKey(p.Initramfs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pkg, err)
	}
	arts["policy_key"] = sha256hex(pk)
	v12, _ := pcr.Parse(p12)
	v13, _ := pcr.Parse(p13)
	pcrs := map[int]pcr.Value{12: v12, 13: v13}
	sel := append([]int{}, release.OSPkgPolicyPCRs...)
	for n, v := range anch {
		pcrs[n] = v
		sel = append(sel, n)
	}
	return release.New(name, release.KindOSPkg, pcrs, sel, arts)
}

func approve(r *release.Release, keyPath string) error {
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	k, err := keygen.ParsePolicyKey(kb)
	if err != nil {
		return fmt.Errorf("%s: %w", keyPath, err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return err
	}
	if want, ok := r.Artifacts["policy_key"]; ok && want != sha256hex(der) {
		return fmt.Errorf("release %s's image trusts another policy key than %s: its agent could never use this approval", r.Name, keyPath)
	}
	if err := r.Approve(k); err != nil {
		return err
	}
	return r.Check()
}

func releaseApprove(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var keyPath, path string
	f.str(&keyPath, "key", "", "", "the release policy key `FILE` (required)")
	f.str(&path, "release", "", "", "the release `FILE`, approved in place (required)")
	if err := f.parse(args); err != nil {
		return err
	}
	if keyPath == "" || path == "" {
		return cmdline.Usagef("--key and --release are required")
	}
	b, err := readLimited(path, 1<<20)
	if err != nil {
		return err
	}
	r, err := release.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	had := r.Approval != nil
	if err := approve(r, keyPath); err != nil {
		return err
	}
	out, err := r.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, out, 0o644); err != nil {
		return err
	}
	verb := "approved"
	if had {
		verb = "approved (replacing its earlier approval)"
	}
	fmt.Fprintf(e.out, "%s release %s: policy digest %s\n", verb, r.Name, r.Policy.Digest)
	return nil
}
