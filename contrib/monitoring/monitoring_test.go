// Package monitoring holds the alert rules and the Grafana dashboard for
// a patela fleet (README.md); its test checks them with promtool and
// against the metrics a real configsrv exports.
package monitoring

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/configsrv/testsrv"
	"patela/internal/api"
	"patela/internal/testutil"
)

func promtool(t *testing.T, args ...string) {
	t.Helper()
	tool := testutil.RequireTool(t, "promtool", "apt-get install prometheus")
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The rules are valid and each alert fires where its test says.
func TestAlertRules(t *testing.T) {
	promtool(t, "check", "rules", "alerts.yml")
	promtool(t, "test", "rules", "alerts_test.yml")
}

// exported is every metric family a real server exports once a node has
// reported a relay with a full summary and the API has answered.
func exported(t *testing.T) map[string]bool {
	s := testsrv.Start(t)
	_, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	ctx := context.Background()
	if _, err := c.Specs(ctx, tok, &api.Specs{CPUs: 1, MemoryBytes: 4 << 30}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.Config(ctx, tok)
	if err != nil || len(cfg.Relays) != 1 {
		t.Fatalf("config: %+v %v", cfg, err)
	}
	name := cfg.Relays[0].Name
	err = c.Status(ctx, tok, &api.Status{BootID: "b", UptimeS: 60, Relays: []api.RelayStatus{
		{Name: name, Fingerprint: strings.Repeat("AB", 20), State: api.RelayRunning, KeysUnsaved: true}},
		Metrics: &api.NodeMetrics{AgentRSSBytes: 1, MemAvailableBytes: 1, MemTotalBytes: 2, Relays: []api.RelayMetrics{{
			Name: name, BytesRead: 1, BytesWritten: 1, ORConns: 1, ExitConns: 1, Circuits: 1, OnionskinsProcessed: 1,
			OnionskinsDropped: 1, DNSQueries: 1, DNSErrors: 1, DNSTimeouts: 1, Flags: []string{"Running"},
			Overloaded: true, SigningCertExpires: time.Now().Add(time.Hour).Unix(), UptimeS: 1, TorRSSBytes: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for n, f := range s.Metrics(t) {
		names[n] = true
		if f.GetType().String() == "HISTOGRAM" || f.GetType().String() == "SUMMARY" {
			for _, sfx := range []string{"_bucket", "_sum", "_count"} {
				names[n+sfx] = true
			}
		}
	}
	return names
}

var (
	strLit   = regexp.MustCompile(`"(\\.|[^"\\])*"`)
	matchers = regexp.MustCompile(`\{[^}]*\}`)
	ranges   = regexp.MustCompile(`\[[^\]]*\]`)
	grouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)

// metricNames are the metric names a PromQL expression reads: what is
// left of its identifiers once strings, label matchers, ranges, grouping
// label lists, function names and keywords are taken out.
func metricNames(expr string) []string {
	e := strLit.ReplaceAllString(expr, `""`)
	e = matchers.ReplaceAllString(e, "")
	e = ranges.ReplaceAllString(e, "")
	e = grouping.ReplaceAllString(e, "")
	var out []string
	for _, m := range ident.FindAllStringIndex(e, -1) {
		name, rest := e[m[0]:m[1]], strings.TrimLeft(e[m[1]:], " ")
		if m[0] > 0 && strings.ContainsAny(e[m[0]-1:m[0]], "0123456789.") {
			continue // inside a number: 1e9, 0.5
		}
		if strings.HasPrefix(rest, "(") || slices.Contains(keywords, strings.ToLower(name)) {
			continue // a function or an aggregation, or a keyword
		}
		out = append(out, name)
	}
	return out
}

// ruleExprs are the expressions of alerts.yml (one line each).
func ruleExprs(t *testing.T) []string {
	b, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, l := range strings.Split(string(b), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(l), "expr: "); ok {
			exprs = append(exprs, e)
		}
	}
	if n := strings.Count(string(b), "- alert: "); n == 0 || n != len(exprs) {
		t.Fatalf("%d alerts, %d one-line exprs", n, len(exprs))
	}
	return exprs
}

// dashboardExprs are the PromQL expressions of dashboard.json: every
// "expr" of a panel target and the variables' queries.
func dashboardExprs(t *testing.T) []string {
	b, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Type  string
				Query json.RawMessage
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has a target without an expression", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		var q struct{ Query string }
		if v.Type == "query" && json.Unmarshal(v.Query, &q) == nil {
			// label_values(METRIC, LABEL) is Grafana's, not PromQL.
			if m := regexp.MustCompile(`^label_values\((\w+),\s*\w+\)$`).FindStringSubmatch(q.Query); m != nil {
				exprs = append(exprs, m[1])
			} else {
				t.Errorf("variable query %q is not label_values(METRIC, LABEL)", q.Query)
			}
		}
	}
	return exprs
}

// Every expression of the dashboard parses as PromQL (promtool checks it
// as a recording rule, Grafana's $variables filled in) and it and the
// alert rules name only metrics a real server exports.
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	dash := dashboardExprs(t)
	if len(dash) < 20 {
		t.Fatalf("only %d dashboard expressions", len(dash))
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range dash {
		q, _ := json.Marshal(strings.ReplaceAll(e, "$node", ".*"))
		rules.WriteString("      - record: dashboard:expr_" + strings.Repeat("i", i+1) + "\n        expr: " + string(q) + "\n")
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", f)

	names := exported(t)
	used := map[string]bool{}
	for what, exprs := range map[string][]string{"dashboard": dash, "alerts.yml": ruleExprs(t)} {
		for _, e := range exprs {
			ms := metricNames(e)
			if len(ms) == 0 {
				t.Errorf("%s: %q names no metric", what, e)
			}
			for _, m := range ms {
				used[m] = true
				if !names[m] {
					t.Errorf("%s: %q reads %s, which the server does not export", what, e, m)
				}
			}
		}
	}
	t.Logf("%d metrics used, of %d exported", len(used), len(names))
}

// The extractor finds the names and only them.
func TestMetricNames(t *testing.T) {
	for expr, want := range map[string]string{
		`sum by (direction) (rate(patela_relay_traffic_bytes_total{node=~"$node",direction="read"}[15m]))`: "patela_relay_traffic_bytes_total",
		`a_metric > 900 and on(node) b_metric{state="enabled"} == 1`:                                       "a_metric b_metric",
		`histogram_quantile(0.99, sum by (endpoint, le) (rate(x_bucket[5m])))`:                             "x_bucket",
		`count(up == 0) or vector(0)`: "up",
		`x - time() < 7 * 86400`:      "x",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}
