package pe

import (
	"bytes"
	"os"
	"testing"

	"patela/internal/testutil"
)

// TestChecksumOracle: the checksums Debian's build tools wrote into the
// stub and the (signed) kernel are what ComputeCheckSum gives; Pin keeps
// the checksum valid; the Authenticode digest ignores the checksum, the
// time stamp does not.
func TestChecksumOracle(t *testing.T) {
	for _, p := range []string{"/usr/lib/systemd/boot/efi/linuxx64.efi.stub", "../../build/kernel/vmlinuz"} {
		b, err := os.ReadFile(p)
		if err != nil {
			testutil.SkipOrFail(t, p+" missing (apt-get install systemd-boot-efi; just kernel): "+err.Error())
		}
		f, err := Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if f.CheckSum() == 0 || f.CheckSum() != f.ComputeCheckSum() {
			t.Errorf("%s: checksum %#x, computed %#x", p, f.CheckSum(), f.ComputeCheckSum())
		}
		a1, err := f.Authenticode()
		if err != nil {
			t.Fatal(err)
		}
		pinned, err := Pin(b, 12345)
		if err != nil {
			t.Fatal(err)
		}
		pf, _ := Parse(pinned)
		if pf.TimeDateStamp() != 12345 || pf.CheckSum() != pf.ComputeCheckSum() {
			t.Errorf("%s: Pin left stamp %d checksum %#x (computed %#x)", p, pf.TimeDateStamp(), pf.CheckSum(), pf.ComputeCheckSum())
		}
		a2, _ := pf.Authenticode()
		if bytes.Equal(a1, a2) {
			t.Errorf("%s: the time stamp is part of the Authenticode digest", p)
		}
		// Only the checksum changed: same digest.
		c := bytes.Clone(b)
		c[f.checksumOff()] ^= 0xff
		cf, _ := Parse(c)
		if a3, _ := cf.Authenticode(); !bytes.Equal(a1, a3) {
			t.Errorf("%s: the checksum field is part of the Authenticode digest", p)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("MZ"), append([]byte("MZ"), make([]byte, 100)...)} {
		if _, err := Parse(b); err == nil {
			t.Errorf("Parse accepted %q", b)
		}
	}
}
