package torrc

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// soupTokens are the pieces tor's reader treats specially, so random
// sequences of them reach the corners random bytes rarely do.
var soupTokens = []string{
	"ContactInfo", "+ExitPolicy", "/NumCPUs", "exitrelay", "MaxConn", "ExitPolicy",
	" ", "  ", "\t", "\n", "\r\n", "\r", "\\", "\\\n", "#", "# c\n", "\"", "\\\"", "\\x41", "\\101", "\\n",
	"a", "1", "accept *:80", "Zoë", "\v", "\\\\",
}

// TestParseTokenSoup checks the Parse/Render fixed point on random token
// sequences (fixed seed, so a failure reproduces).
func TestParseTokenSoup(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	accepted := 0
	for range n {
		var b strings.Builder
		for range 1 + r.IntN(12) {
			b.WriteString(soupTokens[r.IntN(len(soupTokens))])
		}
		if checkParse(t, []byte(b.String())) != nil {
			accepted++
		}
	}
	// The property means little if nearly everything is refused.
	if accepted < n/20 {
		t.Errorf("only %d of %d inputs parsed", accepted, n)
	}
	t.Logf("%d of %d inputs parsed", accepted, n)
}

// contactTokens build torrcs whose only option is ContactInfo, which tor
// takes with any value, so tor accepts whatever Parse accepts and the two
// readings can be compared value for value.
var contactTokens = []string{
	"ContactInfo", "+ContactInfo", "/ContactInfo", "contactinfo",
	" ", "\t", "\n", "\r\n", "\\", "\\\n", "#", "# c\n", "\"", "\\\"", "\\x41", "\\101", "\\t",
	"a", "b c", "Zoë", "\\\\", "\n\n",
}

// TestParseAgreesWithTorOnSoup: on random ContactInfo torrcs that Parse
// accepts, tor ends up with the value Parse gives, from the source and from
// its rendering alike.
func TestParseAgreesWithTorOnSoup(t *testing.T) {
	base, dir := baseLevel(t)
	r := rand.New(rand.NewPCG(3, 4))
	n := 120
	if testing.Short() {
		n = 20
	}
	for checked := 0; checked < n; {
		var b strings.Builder
		b.WriteString("ContactInfo ")
		for range 1 + r.IntN(10) {
			b.WriteString(contactTokens[r.IntN(len(contactTokens))])
		}
		src := b.String()
		c, err := Parse([]byte(src))
		if err != nil {
			continue
		}
		checked++
		var want []string
		if v := c.Values("ContactInfo"); len(v) > 0 {
			want = []string{unquote(v[len(v)-1])}
		}
		for _, text := range []string{src, string(c.Render())} {
			got := dumpValues(dumpConfig(t, dir, nil, []byte(text), cmdline(base.Config)...), "ContactInfo")
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("tor reads ContactInfo as %q, Parse as %q, from:\n%q", got, want, text)
			}
		}
	}
}
