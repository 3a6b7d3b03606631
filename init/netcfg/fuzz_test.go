package netcfg

import (
	"encoding/json"
	"testing"
)

// FuzzParse feeds node-config network sections (server input) to the
// validator: no panic, and whatever it accepts has unique names, uids and
// addresses of the right families with their gateways.
func FuzzParse(f *testing.F) {
	for _, r := range []Relays{relays(r1, r2), relays(r3), relays()} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"Network":{"relay_interface":"52:54:00:12:34:57","ipv4_gateway":"192.0.2.1"},"Relays":[{"name":"a","ipv4":"192.0.2.255/24","uid":1000}]}`))
	f.Add([]byte(`{"Network":{"relay_interface":"eth1","ipv6_gateway":"::ffff:192.0.2.1"},"Relays":[{"name":"b","ipv6":"::ffff:192.0.2.9/120","uid":2147483647}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var want Relays
		if json.Unmarshal(data, &want) != nil {
			return
		}
		p, err := parse(want)
		if err != nil {
			return
		}
		names, uids, addrs := map[string]bool{}, map[uint32]bool{}, map[string]bool{}
		for _, r := range p.relays {
			if names[r.name] || uids[r.uid] || r.uid < 1000 {
				t.Fatalf("accepted duplicate or low id: %+v", r)
			}
			names[r.name], uids[r.uid] = true, true
			if !r.v4.IsValid() && !r.v6.IsValid() {
				t.Fatalf("relay without address accepted: %+v", r)
			}
			if r.v4.IsValid() && (!r.v4.Addr().Is4() || !p.gw4.Is4()) {
				t.Fatalf("bad v4: %+v gw %v", r, p.gw4)
			}
			if r.v6.IsValid() && (!r.v6.Addr().Is6() || r.v6.Addr().Is4In6() || !p.gw6.Is6()) {
				t.Fatalf("bad v6: %+v gw %v", r, p.gw6)
			}
			for _, a := range []string{r.v4.Addr().String(), r.v6.Addr().String()} {
				if a != "invalid IP" && addrs[a] {
					t.Fatalf("address %s accepted twice", a)
				}
				addrs[a] = true
			}
		}
		if len(p.relays) > 0 && p.ifName == "" {
			t.Fatal("no interface")
		}
	})
}
