package membudget

import "testing"

func TestFor(t *testing.T) {
	for _, c := range []struct {
		total          uint64
		relays         int
		reserve, share uint64
	}{
		{1024 * MiB, 8, 256 * MiB, 96 * MiB}, // the QEMU test machine
		{16 << 30, 8, 1 << 30, 1920 * MiB},   // a sixteenth reserved
		{64 << 30, 64, 4 << 30, 960 * MiB},   // the target: 64 relays
		{200 * MiB, 1, 256 * MiB, 0},         // less than the reserve
		{8 << 30, 0, 512 * MiB, 0},           // no relays
	} {
		b := For(c.total, c.relays)
		if b.Reserve != c.reserve || b.PerRelay != c.share {
			t.Errorf("For(%d MiB, %d) = %+v, want reserve %d MiB, %d MiB each", c.total/MiB, c.relays, b, c.reserve/MiB, c.share/MiB)
		}
		if b.PerRelay > 0 && (b.Queues > b.PerRelay || b.Queues%MiB != 0 || b.Queues < b.PerRelay/2) {
			t.Errorf("For(%d MiB, %d): queues %d of %d", c.total/MiB, c.relays, b.Queues, b.PerRelay)
		}
		if uint64(c.relays)*b.PerRelay+b.Reserve > c.total && b.PerRelay > 0 {
			t.Errorf("For(%d MiB, %d) hands out more than there is", c.total/MiB, c.relays)
		}
	}
}
