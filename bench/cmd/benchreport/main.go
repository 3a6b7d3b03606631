// Command benchreport measures the whole system on the machine it runs on
// and writes bench/REPORT.md and bench/report.json: every Go benchmark in
// the tree, a fleet of simulated nodes booting at once, the configsrv
// binary's throughput and memory at 10,000 nodes, and the agent's boot in
// QEMU with the sizes of what it boots. `just bench` runs it.
//
// A figure whose producer is missing or failed is reported as "not
// measured" with the reason, never estimated.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"patela/bench/srvproc"
)

// Report is everything one run measured; report.json is this value.
type Report struct {
	Started  time.Time     `json:"started"`
	Took     time.Duration `json:"took_ns"`
	Machine  Machine       `json:"machine"`
	Headline []Figure      `json:"headline"`
	GoBench  *GoBenchRun   `json:"go_benchmarks,omitempty"`
	Fleet    *FleetRun     `json:"fleet,omitempty"`
	Server   *ServerRun    `json:"configsrv_10k,omitempty"`
	Flood    []*FloodRun   `json:"enroll_flood,omitempty"`
	LongPoll *LongPollRun  `json:"long_poll,omitempty"`
	Boot     *BootRun      `json:"qemu_boot,omitempty"`
	Skipped  []string      `json:"not_measured,omitempty"` // sections not run, with why
}

// Figure is one headline number (or why it is missing).
type Figure struct {
	What   string `json:"what"`
	Value  string `json:"value"` // "not measured: …" when missing
	Source string `json:"source"`
}

func main() {
	out := flag.String("out", "bench", "directory for REPORT.md, report.json and gobench.txt")
	benchtime := flag.String("benchtime", "1s", "go test -benchtime for the Go benchmarks")
	fleetN := flag.Int("fleet", 2000, "simulated nodes booting at once")
	nodes := flag.Int("nodes", 10000, "nodes seeded for the configsrv throughput and memory run")
	relays := flag.Int("relays", 4, "relays per seeded node")
	skip := flag.String("skip", "", "comma-separated sections not to run: gobench, fleet, server, flood, longpoll, qemu; heartbeat: the server section's heartbeat burst and /metrics after it")
	floodFor := flag.Duration("flood", time.Minute, "how long the enrollment flood lasts")
	floodBin := flag.String("flood-configsrv", "", "also flood this configsrv binary (say, one built from an older tree), for comparison")
	pollers := flag.Int("pollers", 1000, "long-polling nodes a global change is timed on (then every seeded node waits)")
	qemuRelays := flag.String("qemu-relays", "1,8", "relay counts the QEMU section boots the agent and the floor with, in order")
	qemuRepeat := flag.Int("qemu-repeat", 3, "measured reboots and floor boots per relay count (the medians are compared)")
	keepWork := flag.Bool("keep", false, "keep the work directory (QEMU consoles, server logs) also when nothing failed")
	flag.Parse()
	var counts []int
	for _, f := range strings.Split(*qemuRelays, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			log.Fatalf("-qemu-relays: %q is not a relay count", f)
		}
		counts = append(counts, n)
	}
	log.SetFlags(log.Ltime)
	skipped := map[string]bool{}
	for _, s := range strings.Split(*skip, ",") {
		if s = strings.TrimSpace(s); s != "" {
			skipped[s] = true
		}
	}
	root, err := srvproc.ModuleRoot()
	if err != nil {
		log.Fatal(err)
	}
	if !filepath.IsAbs(*out) {
		*out = filepath.Join(root, *out)
	}
	work, err := os.MkdirTemp("", "patela-bench-")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	r := &Report{Started: time.Now().UTC()}
	r.Machine = machine(ctx, root)
	log.Printf("machine: %s, %d cores, %d MiB, kernel %s, %s, load %s", r.Machine.CPU, r.Machine.Cores,
		r.Machine.MemoryBytes>>20, r.Machine.Kernel, r.Machine.Go, r.Machine.LoadAvg)
	bin, err := srvproc.Build(root, work)
	if err != nil {
		log.Fatal(err)
	}

	keep := *keepWork // a failed section's logs (QEMU consoles among them) stay in work
	section := func(name, why string, run func() error) {
		if skipped[name] {
			r.Skipped = append(r.Skipped, name+": skipped with -skip")
			return
		}
		log.Printf("%s: %s", name, why)
		t0 := time.Now()
		if err := run(); err != nil {
			log.Printf("%s failed: %v", name, err)
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: failed: %v", name, err))
			keep = true
			return
		}
		log.Printf("%s: done in %v", name, time.Since(t0).Round(time.Second))
	}
	section("gobench", "every Go benchmark in the tree", func() (err error) {
		r.GoBench, err = runGoBenchmarks(ctx, root, *benchtime, filepath.Join(*out, "gobench.txt"))
		return err
	})
	section("fleet", fmt.Sprintf("%d simulated nodes boot at once under an abuser", *fleetN), func() (err error) {
		r.Fleet, err = runFleet(ctx, bin, work, *fleetN)
		return err
	})
	section("server", fmt.Sprintf("configsrv binary at %d nodes x %d relays", *nodes, *relays), func() (err error) {
		if skipped["heartbeat"] {
			r.Skipped = append(r.Skipped, "heartbeat: skipped with -skip (the server section's heartbeat burst and /metrics)")
		}
		r.Server, err = runServer(ctx, bin, work, *nodes, *relays, !skipped["heartbeat"])
		return err
	})
	section("flood", fmt.Sprintf("a %v flood of first contacts (a new EK each) from %d addresses at the default limits", *floodFor, floodAddrs), func() error {
		bins := [][2]string{{bin, "this tree"}}
		if *floodBin != "" {
			bins = append(bins, [2]string{*floodBin, *floodBin})
		}
		for _, b := range bins {
			f, err := runFlood(ctx, b[0], b[1], work, *floodFor, floodAddrs, floodWorkers)
			if err != nil {
				return fmt.Errorf("%s: %w", b[1], err)
			}
			r.Flood = append(r.Flood, f)
		}
		return nil
	})
	section("longpoll", fmt.Sprintf("%d long-polling nodes, a global change; %d waits held; idle request rate", *pollers, *nodes), func() (err error) {
		r.LongPoll, err = runLongPoll(ctx, bin, work, *nodes, *relays, *pollers)
		return err
	})
	section("qemu", "the agent's boot in QEMU (first boot, reboot) and image sizes", func() (err error) {
		r.Boot, err = runBoot(ctx, work, counts, max(*qemuRepeat, 1))
		return err
	})
	r.Took = time.Since(r.Started)
	r.Headline = headline(r)

	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*out, "report.json"), append(js, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*out, "REPORT.md"), []byte(markdown(r)), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s and %s (%v)", filepath.Join(*out, "REPORT.md"), filepath.Join(*out, "report.json"), r.Took.Round(time.Second))
	if bad := r.failures(); keep || len(bad) > 0 {
		log.Printf("kept %s (the QEMU consoles are in qemu/)", work)
	} else {
		os.RemoveAll(work)
	}
	if bad := r.failures(); len(bad) > 0 {
		for _, b := range bad {
			log.Printf("FAILED: %s", b)
		}
		os.Exit(1)
	}
}

// The enrollment flood's shape: more addresses than the pending cap
// divided by the per-address burst, so the cap is what must hold.
const (
	floodAddrs   = 256
	floodWorkers = 32
)

// failures are the correctness checks the run makes on the way: a
// benchmark that failed, a node that did not boot, a 5xx, a duplicate
// address, a damaged database, a request that failed in a burst.
func (r *Report) failures() []string {
	var bad []string
	if r.GoBench != nil {
		bad = append(bad, r.GoBench.Failed...)
	}
	if f := r.Fleet; f != nil {
		if f.Failed+f.ServerErrors+f.Duplicates+len(f.DBProblems) > 0 {
			bad = append(bad, fmt.Sprintf("fleet: %d failed boots (%s), %d 5xx, %d duplicates, database: %v",
				f.Failed, f.FirstFailure, f.ServerErrors, f.Duplicates, f.DBProblems))
		}
		if f.Abuser[429] == 0 {
			bad = append(bad, "fleet: the abuser was never rate limited")
		}
	}
	for _, f := range r.Flood {
		if f.Binary == "this tree" && f.PendingRows > 1000 {
			bad = append(bad, fmt.Sprintf("flood: %d pending rows written, over the default cap of 1000", f.PendingRows))
		}
	}
	if lp := r.LongPoll; lp != nil {
		for _, c := range lp.Changes {
			if c.Wrong > 0 {
				bad = append(bad, fmt.Sprintf("long poll: %d answers without the change", c.Wrong))
			}
		}
	}
	if s := r.Server; s != nil {
		for _, b := range s.Bursts() {
			if b.Errors > 0 {
				bad = append(bad, fmt.Sprintf("configsrv: %d of %d failed in %s", b.Errors, b.Requests, b.Name))
			}
		}
	}
	return bad
}
