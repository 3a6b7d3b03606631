package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"patela/bench/srvproc"
)

// GoBenchRun is the output of `go test -bench` over every package that
// has benchmarks.
type GoBenchRun struct {
	Benchtime string      `json:"benchtime"`
	Results   []Benchmark `json:"results"`
	Failed    []string    `json:"failed,omitempty"` // packages whose run failed, with the tail of the output
}

// Benchmark is one result line.
type Benchmark struct {
	Pkg     string             `json:"pkg"`
	Name    string             `json:"name"` // without the -GOMAXPROCS suffix
	N       int64              `json:"n"`
	Metrics map[string]float64 `json:"metrics"` // unit → value: ns/op, B/op, allocs/op and custom ones
	Units   []string           `json:"units"`   // in printed order
	Procs   string             `json:"-"`       // the -GOMAXPROCS suffix
}

// benchPackages lists the packages holding benchmarks, with them.
func benchPackages(ctx context.Context, root string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-tags", srvproc.Tags, "-list", "^Benchmark", "./...")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -list: %v\n%s", err, tail(out, 20))
	}
	var pkgs []string
	has := false
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 1 && strings.HasPrefix(f[0], "Benchmark"):
			has = true
		case len(f) >= 2 && f[0] == "ok":
			if has {
				pkgs = append(pkgs, f[1])
			}
			has = false
		}
	}
	return pkgs, nil
}

// runGoBenchmarks runs every benchmark, package by package, saving the
// raw output (benchstat reads it) to rawPath.
func runGoBenchmarks(ctx context.Context, root, benchtime, rawPath string) (*GoBenchRun, error) {
	pkgs, err := benchPackages(ctx, root)
	if err != nil {
		return nil, err
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("no package has a benchmark")
	}
	raw, err := os.Create(rawPath)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	run := &GoBenchRun{Benchtime: benchtime}
	for _, pkg := range pkgs {
		log.Printf("  go test -bench . %s", pkg)
		t0 := time.Now()
		// Results are on standard output; helpers (swtpm) write to
		// standard error, which would split result lines.
		var buf, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, "go", "test", "-tags", srvproc.Tags, "-run", "^$", "-bench", ".",
			"-benchmem", "-benchtime", benchtime, "-count", "1", "-timeout", "30m", pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = &buf, &errb
		err := cmd.Run()
		res := parseBench(pkg, buf.Bytes())
		if _, werr := raw.Write(benchstatText(buf.Bytes(), res)); werr != nil {
			return nil, werr
		}
		run.Results = append(run.Results, res...)
		if err != nil {
			run.Failed = append(run.Failed, fmt.Sprintf("%s: %v: %s", pkg, err, tail(append(buf.Bytes(), errb.Bytes()...), 15)))
		}
		log.Printf("  %s: %d results in %v (err %v)", pkg, len(res), time.Since(t0).Round(time.Second), err)
	}
	return run, nil
}

// parseBench reads the result lines of `go test -bench` output:
//
//	BenchmarkName-2   	  12345	     9876 ns/op	  12 B/op	  1 allocs/op	 3.5 custom/unit
func parseBench(pkg string, out []byte) []Benchmark {
	var res []Benchmark
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	pending := "" // a name whose results a log line pushed to the next line
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && strings.HasPrefix(f[0], "Benchmark") {
			pending = f[0]
		}
		if len(f) > 0 && !strings.HasPrefix(f[0], "Benchmark") && pending != "" {
			f = append([]string{pending}, f...)
		}
		if len(f) < 4 || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		pending = ""
		name, procs := f[0], ""
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name, procs = name[:i], name[i:]
			}
		}
		b := Benchmark{Pkg: pkg, Name: name, N: n, Metrics: map[string]float64{}, Procs: procs}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				b = Benchmark{}
				break
			}
			b.Metrics[f[i+1]] = v
			b.Units = append(b.Units, f[i+1])
		}
		if b.Name != "" {
			res = append(res, b)
		}
	}
	return res
}

// benchstatText is out in the benchmark format benchstat reads: its
// header lines and the results one per line, without the log lines of
// helpers that split them.
func benchstatText(out []byte, res []Benchmark) []byte {
	var b bytes.Buffer
	for _, line := range strings.Split(string(out), "\n") {
		for _, p := range []string{"goos:", "goarch:", "pkg:", "cpu:"} {
			if strings.HasPrefix(line, p) {
				b.WriteString(line + "\n")
			}
		}
	}
	for _, r := range res {
		fmt.Fprintf(&b, "%s%s\t%d", r.Name, r.Procs, r.N)
		for _, u := range r.Units {
			fmt.Fprintf(&b, "\t%s %s", strconv.FormatFloat(r.Metrics[u], 'g', -1, 64), u)
		}
		b.WriteString("\n")
	}
	return b.Bytes()
}

// find returns the benchmark pkg.name, if it ran.
func (r *GoBenchRun) find(pkg, name string) *Benchmark {
	if r == nil {
		return nil
	}
	for i := range r.Results {
		if r.Results[i].Pkg == pkg && r.Results[i].Name == name {
			return &r.Results[i]
		}
	}
	return nil
}

// failure returns why pkg's run failed, if it did.
func (r *GoBenchRun) failure(pkg string) string {
	if r == nil {
		return ""
	}
	for _, f := range r.Failed {
		if strings.HasPrefix(f, pkg+":") {
			return f
		}
	}
	return ""
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
