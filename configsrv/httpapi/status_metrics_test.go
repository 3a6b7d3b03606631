package httpapi_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"patela/internal/api"
)

// A heartbeat whose metrics summary does not fit is refused whole: 400,
// and neither the node's row nor any figure changes.
func TestStatusMetricsRefused(t *testing.T) {
	l := newLocal(t, nil)
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	ctx := context.Background()
	node := func() string {
		n, err := l.st.Node(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return n.BootID + "|" + n.LastSeen.String()
	}
	before := node()
	l.clock.Add(time.Minute)
	relay := `{"name":"murazzano","bytes_read":%s,"bytes_written":0,"or_conns":0,"exit_conns":0,"circuits":0,` +
		`"onionskins_processed":0,"onionskins_dropped":0,"dns_queries":0,"dns_errors":0,"dns_timeouts":0,` +
		`"flags":%s,"overloaded":false,"signing_cert_expires":%s,"uptime_s":1,"tor_rss_bytes":0%s}`
	for name, r := range map[string][4]string{
		"counter above 2^63-1": {"9223372036854775808", `[]`, "0", ""},
		"negative counter":     {"-1", `[]`, "0", ""},
		"fractional counter":   {"1.5", `[]`, "0", ""},
		"negative expiry":      {"0", `[]`, "-5", ""},
		"long error":           {"0", `[]`, "0", `,"error":"` + strings.Repeat("x", 201) + `"`},
		"long flag":            {"0", `["` + strings.Repeat("F", 17) + `"]`, "0", ""},
		"too many flags":       {"0", `[` + strings.TrimSuffix(strings.Repeat(`"Exit",`, 17), ",") + `]`, "0", ""},
	} {
		body := `{"boot_id":"b2","uptime_s":5,"relays":[],"metrics":{"agent_rss_bytes":1,"mem_available_bytes":1,` +
			`"mem_total_bytes":1,"relays":[` + fmt.Sprintf(relay, r[0], r[1], r[2], r[3]) + `]}}`
		status, code, _ := raw(t, l.client, "POST", api.PathStatus, tok, []byte(body))
		if status != 400 || code != api.CodeBadRequest {
			t.Errorf("%s: %d %s, want 400 bad_request", name, status, code)
		}
	}
	if after := node(); after != before {
		t.Errorf("node row changed by refused heartbeats: %s → %s", before, after)
	}
	for _, table := range []string{"node_metrics", "relay_metrics"} {
		if n := countRows(t, l.st, table); n != 0 {
			t.Errorf("%d rows in %s after refused heartbeats", n, table)
		}
	}
}
