package termsafe

import "testing"

func TestString(t *testing.T) {
	for in, want := range map[string]string{
		"EPYC 7302 16-Core":                 "EPYC 7302 16-Core",
		"Ünïcödé ok":                        "Ünïcödé ok",
		"\x1b[2J\x1b[1;1Hstate enabled":     `\x1b[2J\x1b[1;1Hstate enabled`,
		"x\rstate      enabled":             `x\rstate      enabled`,
		"a\nnode 2\n  state        enabled": `a\nnode 2\n  state        enabled`,
		"tab\there":                         `tab\there`,
		"\u009b31m C1 CSI":                  `\u009b31m C1 CSI`,
		"\x9b31m raw byte":                  `\x9b31m raw byte`,
		"del\x7f":                           `del\x7f`,
		"bad \xff\xfe utf8":                 `bad \xff\xfe utf8`,
		"abc\u202edelbane":                  `abc\u202edelbane`,
		"\u2066isolate\u2069":               `\u2066isolate\u2069`,
		"\x00nul":                           `\x00nul`,
	} {
		if got := String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}
