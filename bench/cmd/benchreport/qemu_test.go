package main

import (
	"testing"
	"time"
)

// The ratios compare medians of the measured boots with the same relay
// count; first boots and other counts do not count.
func TestBootMedians(t *testing.T) {
	s := time.Second
	b := &BootRun{
		Boots: []BootTimeline{{Relays: 1, AllRunning: 99 * s}, {Relays: 1, Measured: true, AllRunning: 30 * s},
			{Relays: 1, Measured: true, AllRunning: 10 * s}, {Relays: 1, Measured: true, AllRunning: 20 * s},
			{Relays: 8, Measured: true, AllRunning: 50 * s}, {Relays: 8, Measured: true, AllRunning: 40 * s}},
		Floors: []FloorBoot{{Relays: 1, Ready: 7 * s}, {Relays: 8, Ready: 9 * s}},
	}
	for _, c := range []struct {
		got, want time.Duration
	}{{b.boot(1).AllRunning, 20 * s}, {b.boot(8).AllRunning, 40 * s}, {b.floor(1).Ready, 7 * s}, {b.floor(8).Ready, 9 * s}} {
		if c.got != c.want {
			t.Errorf("median %v, want %v", c.got, c.want)
		}
	}
	if b.boot(2) != nil || b.floor(2) != nil {
		t.Error("a relay count never booted has a median")
	}
	if got := b.samples(1, false); len(got) != 3 || got[0] != ms(30*s) {
		t.Errorf("samples %v, want the three reboots in order", got)
	}
}
