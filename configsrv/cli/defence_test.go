package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"patela/configsrv/store"
)

// Each class of option the nodes never pass to tor is refused by `torrc
// import` from the ownership table, naming the option and the class,
// with nothing stored: the stored torrc and the audit log are unchanged.
func TestImportRefusesForbiddenClasses(t *testing.T) {
	tmp := t.TempDir()
	db := filepath.Join(tmp, "p.db")
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	good := filepath.Join(tmp, "good")
	os.WriteFile(good, []byte("ContactInfo ops@example.org\nExitRelay 1\nDirPort 9030\nMyFamily $0000000000000000000000000000000000000000\n"), 0o644)
	ok(t, db, "torrc", "import", good, "--default")
	before, audits := ok(t, db, "torrc", "show", "--default"), auditCount(t, db)
	for opt, why := range map[string]string{
		"ServerTransportPlugin x exec /bin/sh":             "it runs a program on the node",
		"DirPortFrontPage /var/lib/tor/keys/secret_id_key": "it names a file or directory on the node",
		"KeyDirectory /tmp/k":                              "it names a file or directory",
		"Log notice file /tmp/tor.log":                     "it names a file or directory",
		"SocksPort 9050":                                   "the agent on the node writes it",
		"MetricsPort 0.0.0.0:9035":                         "the agent on the node writes it",
		"ControlPort 9051":                                 "it opens a listener",
		"HiddenServiceDir /tmp/hs":                         "a relay node runs no onion services",
		"User root":                                        "changes the relay's identity, keys, user or confinement",
		"OutboundBindAddressExit 203.0.113.9":              "changes the relay's identity",
		"NoExec 0":                                         "the agent on the node writes it",
		"OfflineMasterKey 0":                               "the agent on the node writes it",
		"TestingTorNetwork 1":                              "not on the node's allowlist",
		"Nickname evil":                                    "the config server writes it",
	} {
		f := filepath.Join(tmp, "bad")
		os.WriteFile(f, []byte("ExitRelay 0\n"+opt+"\n"), 0o644)
		name := strings.Fields(opt)[0]
		fails(t, db, "line 2: "+name, "torrc", "import", f, "--default")
		fails(t, db, why, "torrc", "import", f, "--default")
	}
	if after := ok(t, db, "torrc", "show", "--default"); after != before {
		t.Errorf("a refused import changed the stored torrc:\n%s\nwas\n%s", after, before)
	}
	if n := auditCount(t, db); n != audits {
		t.Errorf("refused imports were audited as changes: %d entries, were %d", n, audits)
	}
}
