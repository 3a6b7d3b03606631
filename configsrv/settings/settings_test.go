package settings

import "testing"

func TestNormalize(t *testing.T) {
	good := map[[2]string]string{
		{RelayInterface, "eth1"}:          "eth1",
		{IPv4Gateway, "192.0.2.1"}:        "192.0.2.1",
		{IPv6Gateway, "2001:DB8::1"}:      "2001:db8::1",
		{DNS, "192.0.2.53, 2001:db8::53"}: "192.0.2.53,2001:db8::53",
		{RelayMemoryMB, "512"}:            "512",
		{MaxRelays, "0"}:                  "0",
		{MaxRelays, "64"}:                 "64",
		{PollIntervalS, "10"}:             "10",
		{PollIntervalS, "86400"}:          "86400",
		{Family, " eu-1 "}:                "eu-1",
		{HeartbeatIntervalS, " 600 "}:     "600",
	}
	for in, want := range good {
		if got, err := Normalize(in[0], in[1]); err != nil || got != want {
			t.Errorf("%s %q: %q %v, want %q", in[0], in[1], got, err, want)
		}
	}
	for _, in := range [][2]string{
		{RelayInterface, "eth/1"}, {RelayInterface, "averyveryverylongname"}, {RelayInterface, ""},
		{IPv4Gateway, "2001:db8::1"}, {IPv4Gateway, "nope"}, {IPv6Gateway, "192.0.2.1"}, {IPv6Gateway, "::ffff:192.0.2.1"},
		{DNS, ""}, {DNS, "192.0.2.53,"}, {DNS, "dns.example"},
		{RelayMemoryMB, "0"}, {RelayMemoryMB, "-5"}, {RelayMemoryMB, "1k"},
		{MaxRelays, "65"}, {MaxRelays, "-1"}, {PollIntervalS, "9"}, {PollIntervalS, "86401"}, {HeartbeatIntervalS, "9"},
		{Family, ""}, {Family, "EU"}, {Family, "-eu"}, {Family, "e/u"}, {Family, "a23456789012345678901234567890123"},
		{"colour", "blue"},
	} {
		if got, err := Normalize(in[0], in[1]); err == nil {
			t.Errorf("%s %q accepted as %q", in[0], in[1], got)
		}
	}
}

func TestResolve(t *testing.T) {
	e := Resolve(map[string]string{MaxRelays: "4", DNS: "192.0.2.53", RelayInterface: "eth1"},
		map[string]string{MaxRelays: "2", RelayInterface: "eth2"})
	if e.MaxRelays != 2 || e.RelayInterface != "eth2" || len(e.DNS) != 1 || e.RelayMemoryMB != DefaultRelayMemoryMB || e.PollIntervalS != DefaultPollIntervalS || e.HeartbeatIntervalS != DefaultHeartbeatIntervalS {
		t.Fatalf("%+v", e)
	}
}

// The relay NIC defaults to the agent's second one; either level overrides it.
func TestRelayInterfaceDefault(t *testing.T) {
	if e := Resolve(nil, nil); e.RelayInterface != "eth1" || DefaultRelayInterface != "eth1" {
		t.Fatalf("default relay_interface %q", e.RelayInterface)
	}
	if e := Resolve(map[string]string{RelayInterface: "ens4"}, nil); e.RelayInterface != "ens4" {
		t.Fatalf("global relay_interface: %q", e.RelayInterface)
	}
}

// Without a family setting the whole fleet is one family; a node can
// leave it for another.
func TestFamilyDefault(t *testing.T) {
	if e := Resolve(nil, nil); e.Family != DefaultFamily {
		t.Fatalf("default family %q", e.Family)
	}
	if e := Resolve(map[string]string{Family: "eu"}, map[string]string{Family: "us"}); e.Family != "us" {
		t.Fatalf("node family %q", e.Family)
	}
	if e := Resolve(map[string]string{Family: "eu"}, nil); e.Family != "eu" {
		t.Fatalf("global family %q", e.Family)
	}
}
