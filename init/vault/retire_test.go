package vault

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"
)

// clockSet advances the TPM's clock to ms by TPM2_ClockSet with the
// (empty) owner password, as whoever holds the machine could. go-tpm
// v0.9.8 has no ClockSet, so the command is marshalled here.
func clockSet(t *testing.T, m *machine, ms uint64) {
	t.Helper()
	cmd := binary.BigEndian.AppendUint16(nil, 0x8002) // TPM_ST_SESSIONS
	cmd = binary.BigEndian.AppendUint32(cmd, 0)       // size, below
	cmd = binary.BigEndian.AppendUint32(cmd, 0x128)   // TPM_CC_ClockSet
	cmd = binary.BigEndian.AppendUint32(cmd, 0x40000001)
	cmd = binary.BigEndian.AppendUint32(cmd, 9)          // authorization area
	cmd = binary.BigEndian.AppendUint32(cmd, 0x40000009) // TPM_RS_PW
	cmd = append(cmd, 0, 0, 0, 0, 0)                     // nonce, attributes, empty password
	cmd = binary.BigEndian.AppendUint64(cmd, ms)
	binary.BigEndian.PutUint32(cmd[2:], uint32(len(cmd)))
	rsp, err := m.Dev.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:]) != 0 {
		t.Fatalf("TPM2_ClockSet: %x %v", rsp, err)
	}
}

// A retired relay's keys are kept, saved, across reboots for the
// retention period on the TPM's clock, restored unchanged when it comes
// back, and purged only once the TPM's clock has moved past the period.
func TestRetiredKeysKeptForRetention(t *testing.T) {
	m := newMachine(t)
	v, dir := saveOne(t, m, Options{})
	ctx := context.Background()
	if err := v.Retire("murazzano"); err != nil {
		t.Fatal(err)
	}
	if !v.Unsaved("murazzano") {
		t.Error("a retirement not yet saved is not reported unsaved")
	}
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if v.Unsaved("murazzano") {
		t.Error("saved retirement still unsaved")
	}
	retiredAt := v.relays["murazzano"].RetiredAt
	m.boot()
	v = m.mustOpen(Options{})
	if len(v.Relays()) != 0 || !slices.Equal(v.Retired(), []string{"murazzano"}) {
		t.Fatalf("after reboot: active %v, retired %v", v.Relays(), v.Retired())
	}

	// Back in the config: the same keys, active again.
	out := t.TempDir()
	if ok, err := v.Restore("murazzano", out, 0, 0); !ok || err != nil {
		t.Fatalf("restore of a retired relay: %v %v", ok, err)
	}
	got, err := captureEntry(out + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := captureEntry(dir + "/keys")
	if got.Ed25519Master != nil {
		t.Error("the master secret was restored into the relay's directory")
	}
	got.Ed25519Master = want.Ed25519Master
	if !got.equal(want) {
		t.Error("the restored keys are not the relay's")
	}
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if len(v.Retired()) != 0 {
		t.Fatalf("still retired after coming back: %v", v.Retired())
	}

	// Retired again; a day short of the period on the TPM's clock keeps
	// the keys, past it purges them.
	if err := v.Retire("murazzano"); err != nil {
		t.Fatal(err)
	}
	retiredAt = v.relays["murazzano"].RetiredAt
	day := uint64(24 * time.Hour / time.Millisecond)
	clockSet(t, m, retiredAt+29*day)
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Retired(), []string{"murazzano"}) {
		t.Fatalf("purged after 29 days of 30: %v", v.Retired())
	}
	clockSet(t, m, retiredAt+30*day+1)
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	m.boot()
	if v := m.mustOpen(Options{}); len(v.Retired())+len(v.Relays()) != 0 {
		t.Fatalf("not purged after the retention period: %v %v", v.Relays(), v.Retired())
	}
}

// The figure of the closing note: the bundle with 8 active and 8
// retired relays, each with tor's real keys, and where it is kept.
func TestBundleSizeActiveAndRetired(t *testing.T) {
	m := newMachine(t)
	dirs, _ := torKeys(t, 16)
	v := m.mustOpen(Options{})
	for i, d := range dirs {
		if _, err := v.Capture(fmt.Sprintf("relay%02d", i), d); err != nil {
			t.Fatal(err)
		}
	}
	for i := 8; i < 16; i++ {
		if err := v.Retire(fmt.Sprintf("relay%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(v.Relays()) != 8 || len(v.Retired()) != 8 {
		t.Fatalf("active %v retired %v", v.Relays(), v.Retired())
	}
	pt, _ := encodeBundle(&Bundle{Relays: v.relays})
	where := map[byte]string{locNV: "TPM NV", locMirror: "mirror"}[v.hdr.location]
	t.Logf("8 active + 8 retired relays: bundle %d bytes plaintext, %d bytes envelope, in %s (%d NV indices)",
		len(pt), v.hdr.length, where, v.hdr.count)
}
