package httpapi

import (
	"net/http"
	"testing"
)

func TestLimitKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:4433":               "192.0.2.7",
		"[::ffff:192.0.2.7]:4433":      "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:4433":  "2001:db8:1:2::/64",
		"[2001:db8:1:2::99%eth0]:4433": "2001:db8:1:2::/64",
		"garbage":                      "garbage",
	} {
		if got := limitKey(&http.Request{RemoteAddr: in}); got != want {
			t.Errorf("limitKey(%s) = %s, want %s", in, got, want)
		}
	}
}
