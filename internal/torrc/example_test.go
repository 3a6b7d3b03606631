package torrc_test

import (
	"fmt"

	"patela/internal/torrc"
)

func ExampleMerge() {
	global, _ := torrc.ParseUser([]byte("ContactInfo ops@example.org\nExitPolicy accept *:443\n"))
	node, _ := torrc.ParseUser([]byte("+ExitPolicy reject *:*   # the rest\n"))
	relay, _ := torrc.ParseUser([]byte("contactinfo relay7@example.org\n"))
	// The system's own lines (Parse, not ParseUser) go in a level of their own.
	system, _ := torrc.Parse([]byte("Nickname relay7\nORPort 192.0.2.7:9001\n"))

	m := torrc.Merge(
		torrc.Level{Name: "global", Config: global},
		torrc.Level{Name: "node", Config: node},
		torrc.Level{Name: "relay", Config: relay},
		torrc.Level{Name: "system", Config: system},
	)
	fmt.Printf("%s\n%s", m.Render(), m.Explain())
	// Output:
	// ContactInfo relay7@example.org
	// ExitPolicy accept *:443
	// ExitPolicy reject *:*
	// Nickname relay7
	// ORPort 192.0.2.7:9001
	//
	// ContactInfo relay7@example.org  # relay, line 1
	// ExitPolicy accept *:443         # global, line 2
	// ExitPolicy reject *:*           # node, line 1
	// Nickname relay7                 # system, line 1
	// ORPort 192.0.2.7:9001           # system, line 2
}

func ExampleParseUser() {
	_, err := torrc.ParseUser([]byte("ExitRelay 1\nNickname mine\n"))
	fmt.Println(err)
	// Output: line 2: Nickname is managed by patela (the config server writes it for each relay) and cannot be set in an imported torrc
}
