package torrc

import (
	"fmt"
	"strings"
	"testing"
)

// benchTorrc writes a realistic n-line torrc for one level: comments,
// blank lines, a long exit policy, family lines, a continued line, and
// options that the other levels replace, append to or remove.
func benchTorrc(level string, n int) []byte {
	var b strings.Builder
	for i := 0; i < n; i++ {
		switch i % 10 {
		case 0:
			fmt.Fprintf(&b, "# %s section %d\n", level, i/10)
		case 1:
			b.WriteString("\n")
		case 2:
			fmt.Fprintf(&b, "+ExitPolicy accept 198.51.100.%d/32:%d\n", i%250, 1000+i)
		case 3:
			fmt.Fprintf(&b, "ExitPolicy reject 192.0.2.%d/32:*  # block %d\n", i%250, i)
		case 4:
			fmt.Fprintf(&b, "+MyFamily $%040X\n", i)
		case 5:
			fmt.Fprintf(&b, "ContactInfo %s-%d@example.org\n", level, i)
		case 6:
			fmt.Fprintf(&b, "RelayBandwidthRate %d MBytes\n", 10+i%50)
		case 7:
			b.WriteString("exitrelay 1\n")
		case 8:
			fmt.Fprintf(&b, "AccountingMax %d TBytes\n", 1+i%9)
		case 9:
			fmt.Fprintf(&b, "MaxMemInQueues \\\n  %d MB\n", 256+i)
			i++ // the continuation is a second line
		}
	}
	return []byte(b.String())
}

func benchMerge(b *testing.B, global, node, relay int) {
	srcs := [][]byte{benchTorrc("global", global), benchTorrc("node", node), benchTorrc("relay", relay)}
	names := []string{"global", "node", "relay"}
	lines := 0
	for _, s := range srcs {
		lines += strings.Count(string(s), "\n")
	}
	b.ReportMetric(float64(lines), "lines")
	b.ReportAllocs()
	for b.Loop() {
		lv := make([]Level, len(srcs))
		for i, s := range srcs {
			c, err := ParseUser(s)
			if err != nil {
				b.Fatal(err)
			}
			lv[i] = Level{names[i], c}
		}
		if len(Merge(lv...).Render()) == 0 {
			b.Fatal("empty render")
		}
	}
}

// BenchmarkMerge500 parses, merges and renders a 500-line torrc spread over
// the three levels (300 global, 120 node, 80 relay).
func BenchmarkMerge500(b *testing.B) { benchMerge(b, 300, 120, 80) }

// BenchmarkMerge500PerLevel does the same with 500 lines at every level.
func BenchmarkMerge500PerLevel(b *testing.B) { benchMerge(b, 500, 500, 500) }
