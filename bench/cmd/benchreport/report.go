package main

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Where the headline figures come from.
const (
	pkgHTTPAPI   = "patela/configsrv/httpapi"
	pkgTorrc     = "patela/internal/torrc"
	pkgVault     = "patela/init/vault"
	pkgReconcile = "patela/init/reconcile"
	pkgTor       = "patela/init/tor"
)

// metric formats one Go benchmark metric, or says why it is missing.
func (r *Report) metric(pkg, name, unit string, format func(float64) string) string {
	if r.GoBench == nil {
		return "not measured: " + r.why("gobench")
	}
	if b := r.GoBench.find(pkg, name); b != nil {
		if v, ok := b.Metrics[unit]; ok {
			return format(v)
		}
		return fmt.Sprintf("not measured: %s reports no %q", name, unit)
	}
	if f := r.GoBench.failure(pkg); f != "" {
		return "not measured: the benchmark run failed: " + firstLine(f)
	}
	return fmt.Sprintf("not measured: no %s in %s (not landed)", name, pkg)
}

// why says why a section has no result.
func (r *Report) why(section string) string {
	for _, s := range r.Skipped {
		if strings.HasPrefix(s, section+":") {
			return s
		}
	}
	return section + " did not run"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

func num(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

func mib(b int64) string {
	if b < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func us(d time.Duration) string { return num(float64(d)/float64(time.Microsecond)) + " µs" }

func ms(d time.Duration) string { return num(float64(d)/float64(time.Millisecond)) + " ms" }

func headline(r *Report) []Figure {
	var f []Figure
	add := func(what, value, source string) { f = append(f, Figure{what, value, source}) }
	perS := func(unit string) func(float64) string { return func(v float64) string { return num(v) + " " + unit } }

	// configsrv throughput at 10,000 nodes x 4 relays.
	hs := r.metric(pkgHTTPAPI, "BenchmarkHandshake", "handshakes/s", perS("handshakes/s"))
	if p99 := r.metric(pkgHTTPAPI, "BenchmarkHandshake", "p99-ms", num); !strings.HasPrefix(hs, "not") && !strings.HasPrefix(p99, "not") {
		hs += ", p99 " + p99 + " ms"
	}
	add("configsrv attestation handshakes, 10,000 nodes × 4 relays, HTTPS loopback", hs, pkgHTTPAPI+" BenchmarkHandshake (server in the benchmark process)")
	hq := r.metric(pkgHTTPAPI, "BenchmarkHandshakeQuote", "handshakes/s", perS("handshakes/s"))
	if p99 := r.metric(pkgHTTPAPI, "BenchmarkHandshakeQuote", "p99-ms", num); !strings.HasPrefix(hq, "not") && !strings.HasPrefix(p99, "not") {
		hq += ", p99 " + p99 + " ms"
	}
	add("configsrv attestation handshakes with quote verification (32-event log, release match), 10,000 nodes × 4 relays, HTTPS loopback",
		hq, pkgHTTPAPI+" BenchmarkHandshakeQuote (server and load generator in the benchmark process)")
	cf := r.metric(pkgHTTPAPI, "BenchmarkConfigFetch", "fetches/s", perS("fetches/s"))
	if p99 := r.metric(pkgHTTPAPI, "BenchmarkConfigFetch", "p99-ms", num); !strings.HasPrefix(cf, "not") && !strings.HasPrefix(p99, "not") {
		cf += ", p99 " + p99 + " ms"
	}
	add("configsrv config fetches, 10,000 nodes × 4 relays, HTTPS loopback", cf, pkgHTTPAPI+" BenchmarkConfigFetch (server in the benchmark process)")
	if s := r.Server; s != nil {
		for _, b := range s.Bursts() {
			add(fmt.Sprintf("configsrv binary, %d nodes × %d relays: %s", s.Nodes, s.Relays, b.Name),
				fmt.Sprintf("%s/s, p50 %s, p99 %s, %d errors of %d; CPU per request: server %s, load generator %s", num(b.PerSec), ms(b.P50), ms(b.P99), b.Errors, b.Requests, us(b.ServerCPU), us(b.LoadCPU)),
				fmt.Sprintf("benchreport: %d clients, one connection and loopback address each", s.Clients))
		}
		add(fmt.Sprintf("configsrv RSS at %d nodes × %d relays", s.Nodes, s.Relays),
			fmt.Sprintf("%s idle, %s after the bursts (peak %s); database %s", mib(s.RSSIdle), mib(s.RSSAfter), mib(s.RSSPeak), mib(s.DBBytes)),
			"benchreport: VmRSS/VmHWM of the configsrv process")
		if m := s.Metrics; m != nil {
			add(fmt.Sprintf("configsrv /metrics at %d nodes × %d relays, every relay's summary in", s.Nodes, s.Relays),
				fmt.Sprintf("%s gzip (%s text, %d samples); p50 %s, max %s of %d scrapes; RSS after %s (peak %s)",
					mib(m.GzipBytes), mib(m.TextBytes), m.Samples, ms(m.P50), ms(m.Max), m.Scrapes, mib(m.RSSAfter), mib(m.RSSPeak)),
				"benchreport: serve --metrics-listen, fetched as Prometheus does (gzip), request to last byte")
		}
	} else {
		add("configsrv binary at 10,000 nodes: fetches/s, handshakes/s, RSS", "not measured: "+r.why("server"), "benchreport")
	}

	for _, fl := range r.Flood {
		add(fmt.Sprintf("first-contact flood (%s): %v, a new EK per request, %d addresses, %d in flight, default limits", fl.Binary, fl.Duration, fl.Addresses, fl.Workers),
			fmt.Sprintf("%d pending rows written (cap 1,000), %d audit rows, database %s; %d requests: %s",
				fl.PendingRows, fl.AuditRows, mib(fl.DBBytes), fl.Sent, fl.answers()),
			"benchreport flood.go: the configsrv binary")
	}
	if len(r.Flood) == 0 {
		add("first-contact flood at the default limits", "not measured: "+r.why("flood"), "benchreport")
	}
	if lp := r.LongPoll; lp != nil {
		for i, c := range lp.Changes {
			add(fmt.Sprintf("config change → fetched by all %d long-polling nodes (global torrc change %d, from the start of `configsrv torrc import`)", c.Nodes, i+1),
				fmt.Sprintf("p50 %s, p99 %s, max %s (the import command itself %s; from its exit p50 %s, p99 %s)", ms(c.P50), ms(c.P99), ms(c.Max), ms(c.Admin), ms(c.P50Commit), ms(c.P99Commit)),
				fmt.Sprintf("benchreport: configsrv binary, %d nodes × %d relays seeded; each node its own connection and loopback address", lp.Nodes, lp.Relays))
		}
		add(fmt.Sprintf("configsrv RSS with %d long polls held", lp.Waiting),
			fmt.Sprintf("%s 3 s after the last was parked, %s after %s idle (%s before any; peak %s; %s of CPU to park them)", mib(lp.RSSHeld), mib(lp.RSSIdle), lp.RSSIdleAfter, mib(lp.RSSBefore), mib(lp.RSSHeldPeak), ms(lp.ParkCPU)),
			"benchreport: VmRSS/VmHWM and utime+stime of the configsrv process")
		if id := lp.Idle; id != nil {
			add("requests per node per hour while idle (the agent's reconcile loop)",
				fmt.Sprintf("%s (%d nodes over %s at 1/%d time scale: %v)", num(id.PerHour), id.Nodes, id.Window.Round(time.Second), id.Scale, id.ByRequest),
				"benchreport: init/reconcile against the configsrv binary, token, hold and heartbeat timers scaled; counted in the access log")
		}
	} else {
		add("config change → all long-polling nodes; RSS with 10,000 waits; idle requests per node per hour", "not measured: "+r.why("longpoll"), "benchreport")
	}

	add("torrc merge, 500-line cascade (global 300 + node 120 + relay 80)",
		r.metric(pkgTorrc, "BenchmarkMerge500", "ns/op", func(v float64) string { return num(v/1000) + " µs" }), pkgTorrc+" BenchmarkMerge500")

	if b := r.Boot; b != nil {
		for _, bt := range b.Boots {
			add(fmt.Sprintf("agent boot in QEMU (TCG, %d vCPUs), %s", b.CPUs, bt.Name),
				fmt.Sprintf("boot complete %s after QEMU start (guest uptime %s); all %d relays running (every READY=1, agent's console) at %s (guest %s), seen by the server at %s",
					ms(bt.BootComplete), bt.GuestUptime, bt.Relays, ms(bt.AllRunning), bt.GuestAllRunning, ms(bt.RelaysRunning)),
				"e2e/harness; per-phase timeline below")
		}
		for _, f := range b.Floors {
			add(fmt.Sprintf("boot floor in QEMU (same VM), %s", f.Name),
				fmt.Sprintf("all %d tors READY %s after QEMU start (guest %s)", f.Relays, ms(f.Ready), f.GuestUptime),
				"e2e/cmd/floorinit via harness.FloorImage: mounts, starts tor from a fixed torrc with its keys present")
		}
		med := fmt.Sprintf("median of %d", b.Repeat)
		one, eight := b.boot(1), b.boot(8)
		if one != nil && eight != nil {
			add("QEMU reboot → all relays running: 8 relays / 1 relay (goal ≤ 1.3)",
				fmt.Sprintf("%.2f (%s / %s, %s: %s and %s)", eight.AllRunning.Seconds()/one.AllRunning.Seconds(), ms(eight.AllRunning), ms(one.AllRunning),
					med, strings.Join(b.samples(8, false), ", "), strings.Join(b.samples(1, false), ", ")), "the reboots above")
		}
		if one, eight := b.floor(1), b.floor(8); one != nil && eight != nil {
			add(fmt.Sprintf("the floor's own 8 relays / 1 relay (what %d vCPUs on this host allow)", b.CPUs),
				fmt.Sprintf("%.2f (%s / %s, %s: %s and %s)", eight.Ready.Seconds()/one.Ready.Seconds(), ms(eight.Ready), ms(one.Ready),
					med, strings.Join(b.samples(8, true), ", "), strings.Join(b.samples(1, true), ", ")), "the floor boots above")
		}
		for _, n := range []int{1, 8} {
			if ours, fl := b.boot(n), b.floor(n); ours != nil && fl != nil {
				add(fmt.Sprintf("QEMU reboot → all relays running, ours / floor, %d relays (goal ≤ 1.3)", n),
					fmt.Sprintf("%.2f (%s / %s, %s: ours %s, floor %s)", ours.AllRunning.Seconds()/fl.Ready.Seconds(), ms(ours.AllRunning), ms(fl.Ready),
						med, strings.Join(b.samples(n, false), ", "), strings.Join(b.samples(n, true), ", ")), "the reboots and floor boots above")
			}
		}
		for _, f := range b.Failed {
			add("QEMU boot that failed", "not measured: "+firstLine(f), "benchreport qemu.go; its console is kept")
		}
		add("load average during the QEMU boots", fmt.Sprintf("%s at the first, %s after the last", b.LoadAvg, b.LoadAvgEnd), "/proc/loadavg")
		add("compressed initramfs", fmt.Sprintf("%s %s (%s cpio)", mib(b.InitramfsGzip), b.Compression, mib(b.InitramfsCPIO)), "initramfs/ramfs via e2e/harness.BuildImage")
		add("OS package", fmt.Sprintf("%s zip + %d B descriptor (kernel %s inside)", mib(b.PackageZip), b.PackageJSON, mib(b.Kernel)), "stimage ospkg create via e2e/harness")
	} else {
		add("agent boot timeline in QEMU; initramfs and OS package sizes", "not measured: "+r.why("qemu"), "e2e/harness")
	}

	for _, sub := range []string{"ecc/first", "ecc/later", "rsa/first", "rsa/later"} {
		kind, when, _ := strings.Cut(sub, "/")
		add(fmt.Sprintf("TPM commands per boot (%s boot, %s EK: attestation + vault, 8 relays)", when, strings.ToUpper(kind)),
			r.metric(pkgVault, "BenchmarkBoot/"+sub, "tpm-cmds/boot", func(v float64) string {
				return num(v) + " commands, " + r.metric(pkgVault, "BenchmarkBoot/"+sub, "tpm-ms/boot", num) + " ms in the TPM (swtpm)"
			}), pkgVault+" BenchmarkBoot/"+sub)
	}
	add("agent RSS with 8 relays (reconcile loop, agent process)",
		r.metric(pkgReconcile, "BenchmarkRound8Relays", "KiB-rss-8-relays", func(v float64) string { return num(v/1024) + " MiB" }),
		pkgReconcile+" BenchmarkRound8Relays")

	if fl := r.Fleet; fl != nil {
		var p99 []string
		for _, o := range fl.Ops {
			p99 = append(p99, o.Op+" "+ms(o.P99))
		}
		add(fmt.Sprintf("%d simulated nodes booting at once (attest, specs, config, heartbeat)", fl.Nodes),
			fmt.Sprintf("%d failed, %d 5xx, %d duplicate names/addresses, %d database problems; all booted in %s; p99 %s",
				fl.Failed, fl.ServerErrors, fl.Duplicates, len(fl.DBProblems), ms(fl.Boot), strings.Join(p99, ", ")),
			"bench/loadgen.RunFleet against the configsrv binary (default rate limits)")
		add("abusive client (127.0.0.2) during the fleet boot",
			fmt.Sprintf("%d requests: %d refused 429, %d let through (403 pending)", fl.AbuserSent, fl.Abuser[429], fl.Abuser[403]),
			"bench/loadgen.RunFleet")
	} else {
		add("2,000 simulated nodes booting at once", "not measured: "+r.why("fleet"), "bench/loadgen")
	}
	return f
}

func markdown(r *Report) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	m := r.Machine
	w("# patela benchmark report\n\n")
	w("Generated by `just bench` (bench/cmd/benchreport) on %s in %s. Raw Go benchmark output: `gobench.txt`; everything below is also in `report.json`.\n\n",
		r.Started.Format(time.RFC3339), r.Took.Round(time.Second))
	w("## Machine\n\n| | |\n|---|---|\n")
	w("| CPU | %s |\n| cores | %d |\n| memory | %s |\n| kernel | %s |\n| OS | %s |\n| Go | %s |\n| commit | %s |\n| load average at start | %s |\n\n",
		m.CPU, m.Cores, mib(m.MemoryBytes), m.Kernel, m.OS, m.Go, m.Commit, m.LoadAvg)
	w("The machine is shared with other work and has 2 cores: load generator and server compete for them, so rates are lower bounds.\n\n")

	w("## Headline figures\n\n| figure | value | source |\n|---|---|---|\n")
	for _, f := range r.Headline {
		w("| %s | %s | %s |\n", f.What, cell(f.Value), f.Source)
	}
	w("\n")

	if bt := r.Boot; bt != nil && len(bt.Boots) > 0 {
		w("## Agent boot timeline in QEMU (TCG, `-cpu max`, %d vCPUs, swtpm, real configsrv)\n\n", bt.CPUs)
		w("Clock points: every figure \"after QEMU start\" runs from the start of the QEMU process (firmware, kernel and initramfs load included) to the host's reading of a console line: for the agent, `all relays running` (logged once every relay's tor has sent READY=1), for the floor `floor: all N relays READY` (the same, from e2e/cmd/floorinit); the guest's own uptime at that line is given beside it. A reboot boots the same swtpm state again: keys in the TPM vault, node enabled. The floor boots the same kernel on the same VM (%d vCPUs, 1 GiB, the TPM and both NICs attached, unused). For each relay count the agent boots once with it (not measured), then %d times the agent's reboot and the floor alternately; the ratios compare the medians (tor's own start varies by seconds under TCG).\n\n", bt.CPUs, bt.Repeat)
		w("Phases as the agent prints them (`timeline phase=… start=… took=…`, guest uptime).\n\n| phase |")
		for _, x := range bt.Boots {
			w(" %s start | took |", x.Name)
		}
		w("\n|---|")
		for range bt.Boots {
			w("---|---|")
		}
		w("\n")
		var order []string
		seen := map[string]bool{}
		for _, x := range bt.Boots {
			for _, p := range x.Phases {
				if !seen[p.Name] {
					seen[p.Name] = true
					order = append(order, p.Name)
				}
			}
		}
		for _, name := range order {
			w("| %s |", name)
			for _, x := range bt.Boots {
				found := false
				for _, p := range x.Phases {
					if p.Name == name {
						w(" %s | %s |", p.Start, p.Took)
						found = true
						break
					}
				}
				if !found {
					w(" – | – |")
				}
			}
			w("\n")
		}
		for _, x := range bt.Boots {
			if x.Note != "" {
				w("\n%s: %s.", x.Name, x.Note)
			}
		}
		w("\nBuilding the tools, initramfs and signed OS package took %s.\n\n", bt.Build.Round(time.Second))
		w("Initramfs contents (uncompressed):\n\n| part | files | bytes |\n|---|---|---|\n")
		for _, p := range bt.InitramfsParts {
			w("| %s | %d | %s |\n", p.Name, p.Files, mib(p.Bytes))
		}
		w("\n")
	}

	if s := r.Server; s != nil {
		w("## configsrv binary at %d nodes × %d relays\n\n", s.Nodes, s.Relays)
		w("Seeded straight into SQLite in %s (database %s), then `configsrv serve --attest-rate 0` (one load generator stands for the fleet). %d clients, each with its own HTTPS connection and loopback address.\n\n",
			s.Seed.Round(time.Millisecond), mib(s.DBBytes), s.Clients)
		w("CPU per request is the server process's and the load generator's (this process) while the burst ran; the machine's two cores are shared by both.\n\n")
		w("| burst | requests | errors | took | per second | p50 | p99 | server CPU per request | load generator CPU per request |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, x := range s.Bursts() {
			w("| %s | %d | %d | %s | %s | %s | %s | %s | %s |\n", x.Name, x.Requests, x.Errors, x.Took.Round(time.Millisecond), num(x.PerSec), ms(x.P50), ms(x.P99), us(x.ServerCPU), us(x.LoadCPU))
		}
		for _, x := range s.Bursts() {
			if x.Errors > 0 {
				w("\n**%s: %d of %d failed**, the first: %s\n", x.Name, x.Errors, x.Requests, x.FirstError)
			}
		}
		if s.Heartbeat.Requests > 0 {
			w("\nAfter the heartbeats the database holds %d relay fingerprints, %d distinct (want %d: every relay's own).\n", s.Fingerprints, s.DistinctFingerprints, s.Nodes*s.Relays)
		}
		w("\nRSS: %s idle after start, %s after the bursts, peak %s.\n\n", mib(s.RSSIdle), mib(s.RSSAfter), mib(s.RSSPeak))
		if m := s.Metrics; m != nil {
			w("`/metrics` (`serve --metrics-listen`) after every node's heartbeat with a summary of its relays: %s gzip as Prometheus fetches it, %s as text, %d samples; %d scrapes, p50 %s, max %s (request to last byte); server RSS then %s (peak %s).\n\n",
				mib(m.GzipBytes), mib(m.TextBytes), m.Samples, m.Scrapes, ms(m.P50), ms(m.Max), mib(m.RSSAfter), mib(m.RSSPeak))
		}
	}

	if lp := r.LongPoll; lp != nil {
		w("## Long-polled config: %d nodes × %d relays seeded, the configsrv binary\n\n", lp.Nodes, lp.Relays)
		w("Each node its own HTTPS connection (HTTP/1.1, as the agent) and loopback address; it fetches its config, then waits with `If-None-Match` and `wait=1800`. A global torrc change (`configsrv torrc import --default`, another process) is timed from the command's start until every waiting node has the new config.\n\n")
		w("| change | nodes waiting | import command | p50 | p99 | max | p50 from its exit | p99 from its exit |\n|---|---|---|---|---|---|---|---|\n")
		for i, c := range lp.Changes {
			w("| %d | %d | %s | %s | %s | %s | %s | %s |\n", i+1, c.Nodes, ms(c.Admin), ms(c.P50), ms(c.P99), ms(c.Max), ms(c.P50Commit), ms(c.P99Commit))
		}
		w("\nServer RSS: %s before any long poll, %s with %d held 3 s after the last was parked (peak %s), %s after %s more with nothing to do; parking them took %s of the server's CPU.\n\n",
			mib(lp.RSSBefore), mib(lp.RSSHeld), lp.Waiting, mib(lp.RSSHeldPeak), mib(lp.RSSIdle), lp.RSSIdleAfter, ms(lp.ParkCPU))
		if id := lp.Idle; id != nil {
			w("Idle request rate: %d nodes run the agent's reconcile loop (tor and network faked) against the binary with the timers that set the rate scaled down %d times (token 1 min, hold ≤ 30 s, heartbeat 10 s); after a warm-up, the access log counts over %s (%s hours at scale): **%s requests per node per hour**, by request: %v.\n\n",
				id.Nodes, id.Scale, id.Window.Round(time.Second), num(id.Window.Hours()*float64(id.Scale)), num(id.PerHour), id.ByRequest)
		}
	}

	if fl := r.Fleet; fl != nil {
		w("## Fleet boot: %d simulated nodes at once, with an abuser\n\n", fl.Nodes)
		w("Each node: its own software EK, loopback address and HTTPS connection; first contact and enable beforehand, then all at once: attest, complete, specs (%d cpus, %s), config, heartbeat. Meanwhile 8 goroutines at 127.0.0.2 send POST /v1/attest as fast as they can. Server: the configsrv binary with its default limits (5/s, burst 20 per address).\n\n",
			fl.Specs.CPUs, mib(int64(fl.Specs.MemoryBytes)))
		w("| request | count | errors | statuses | p50 | p99 | max |\n|---|---|---|---|---|---|---|\n")
		for _, o := range fl.Ops {
			w("| %s | %d | %d | %v | %s | %s | %s |\n", o.Op, o.Count, o.Errors, o.Statuses, ms(o.P50), ms(o.P99), ms(o.Max))
		}
		w("\nAll nodes booted in %s; %d failed", ms(fl.Boot), fl.Failed)
		if fl.FirstFailure != "" {
			w(" (first: %s)", fl.FirstFailure)
		}
		w("; %d answers 5xx; %d duplicate relay names or addresses; database check: %d problems. Abuser: %d requests, statuses %v. Server RSS afterwards %s (peak %s).\n\n",
			fl.ServerErrors, fl.Duplicates, len(fl.DBProblems), fl.AbuserSent, fl.Abuser, mib(fl.ServerRSS), mib(fl.ServerPeak))
	}

	if g := r.GoBench; g != nil {
		w("## Go benchmarks (`go test -bench . -benchmem -benchtime %s`)\n\n| package | benchmark | n | results |\n|---|---|---|---|\n", g.Benchtime)
		res := append([]Benchmark(nil), g.Results...)
		sort.SliceStable(res, func(i, j int) bool { return res[i].Pkg < res[j].Pkg })
		for _, x := range res {
			var parts []string
			for _, u := range x.Units {
				parts = append(parts, num(x.Metrics[u])+" "+u)
			}
			w("| %s | %s | %d | %s |\n", strings.TrimPrefix(x.Pkg, "patela/"), x.Name, x.N, strings.Join(parts, ", "))
		}
		for _, f := range g.Failed {
			w("\nFailed: `%s`\n", firstLine(f))
		}
		w("\n")
	}
	if len(r.Skipped) > 0 {
		w("## Not measured\n\n")
		for _, s := range r.Skipped {
			w("- %s\n", cell(firstLine(s)))
		}
	}
	return b.String()
}

// cell keeps a value inside one table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
