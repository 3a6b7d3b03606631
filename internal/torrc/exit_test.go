package torrc

import "testing"

var exitCases = []struct {
	torrc string
	exit  bool
}{
	{"", false},
	{"ExitRelay 0\nExitPolicy accept *:*", false},
	{"ExitRelay 1", true},
	{"ExitRelay 1\nExitPolicy reject *:*", false},
	{"ExitPolicy accept *:443,reject *:*", true},
	{"ExitPolicy reject *:*", false},
	{"ExitPolicy reject *:25", true}, // tor appends its default policy
	{"ReducedExitPolicy 1", true},
	{"IPv6Exit 1", true},
	{"ExitRelay auto\nExitPolicy accept *:80", true},
	{"ExitPolicy accept *:80\n/ExitPolicy", false},
	{"ExitPolicy reject 192.0.2.0/24:*\nExitPolicy reject *:*", false},
}

func TestIsExit(t *testing.T) {
	for _, c := range exitCases {
		cfg, err := Parse([]byte(c.torrc))
		if err != nil {
			t.Fatal(err)
		}
		if got := IsExit(cfg); got != c.exit {
			t.Errorf("IsExit(%q) = %v, want %v", c.torrc, got, c.exit)
		}
	}
}
