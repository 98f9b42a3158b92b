// Command bench runs the same workloads against a 3-node MysteryBox region
// and a 3-member etcd cluster on this machine, with one load generator
// (package loadgen: same client loop, connection counts, key space and
// value size for both), and prints a side-by-side table: ops/s, latency
// percentiles, the ratio, and each server's CPU seconds per 1,000 ops read
// from /proc. It is `make bench`; see docs/performance.md.
//
// It lives in its own Go module so that the product's go.mod does not take
// etcd's client and its dependencies.
//
//	go run . --repo ../.. [--quick] [--etcd PATH] [--profile DIR]
//
// BENCH_QUICK=1 in the environment is --quick (about a minute of load).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mysterybox/mysterybox/loadgen"
)

type options struct {
	repo      string
	etcdBin   string
	mbBinDir  string
	dir       string
	keepDir   bool
	quick     bool
	warmup    time.Duration
	duration  time.Duration
	keys      int
	valueSize int
	conns     int
	basePort  int
	systems   string
	only      string
	profile   string
	jsonOut   string
	pause     time.Duration
	noIdemKey bool
	mbRoute   string
	scale     int
	crash     time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.repo, "repo", ".", "the MysteryBox repository (scripts/cluster.sh, bin/)")
	flag.StringVar(&o.etcdBin, "etcd", "", "etcd binary (default: <cache>/etcd-v3.6.4, see build-etcd.sh)")
	flag.StringVar(&o.mbBinDir, "mysterybox-bin", "", "directory with mysteryboxd (default <repo>/bin)")
	flag.StringVar(&o.dir, "dir", "", "working directory for data and logs (default: a new temporary one, removed at the end)")
	flag.BoolVar(&o.keepDir, "keep-dir", false, "keep the working directory (data and logs)")
	flag.BoolVar(&o.quick, "quick", os.Getenv("BENCH_QUICK") == "1", "smoke run, about a minute of load (env BENCH_QUICK=1)")
	flag.DurationVar(&o.warmup, "warmup", 0, "warm-up of each scenario (default 10s, quick 1s)")
	flag.DurationVar(&o.duration, "duration", 0, "measured window of each scenario (default 30s, quick 2s)")
	flag.IntVar(&o.keys, "keys", 1000, "key space: secrets (MysteryBox) and keys (etcd)")
	flag.IntVar(&o.valueSize, "value-size", 1024, "bytes per written value")
	flag.IntVar(&o.conns, "conns", 12, "gRPC connections per system, spread round-robin over the nodes, leader first")
	flag.IntVar(&o.basePort, "base-port", 27000, "MysteryBox nodes use base+110.., etcd members base+410..")
	flag.StringVar(&o.systems, "systems", "mysterybox,etcd", "systems to run, comma separated")
	flag.StringVar(&o.only, "scenarios", "", "run only scenarios whose name matches this regexp")
	flag.StringVar(&o.profile, "profile", "", "save CPU profiles of every server for each scenario's measured window in this directory (builds a pprof-enabled mysteryboxd)")
	flag.StringVar(&o.jsonOut, "json", "", "also write the raw results as JSON to this file")
	flag.StringVar(&o.mbRoute, "mysterybox-route", loadgen.RouteSpread, "MysteryBox connections: spread (pinned round-robin to the nodes, as etcd's are; followers forward) or client (api/client sends writes and linearizable reads to the leader)")
	flag.BoolVar(&o.noIdemKey, "mysterybox-no-idempotency-key", false, "MysteryBox writes without x-idempotency-key over plain gRPC (api/client always sends one)")
	flag.DurationVar(&o.pause, "pause", 0, "pause between runs, to let background work (compactions) settle (default 2s, quick 500ms)")
	flag.IntVar(&o.scale, "scale", 0, "instead of the suite: fill a MysteryBox region with this many versions, then measure a node's restart, RSS and a new node's catch-up")
	flag.DurationVar(&o.crash, "crash-test", 0, "instead of the suite: write with 64 clients for this long, SIGKILL every MysteryBox node at once, restart, and check every acknowledged write")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// system is one store under test.
type system struct {
	name    string
	target  loadgen.Target
	sampler *loadgen.ProcSampler
	pprof   []string
	stop    func()
	results map[string]*loadgen.Result
}

func run(ctx context.Context, o options) error {
	repo, err := filepath.Abs(o.repo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repo, "scripts/cluster.sh")); err != nil {
		return fmt.Errorf("--repo %s: %w", repo, err)
	}
	timing := loadgen.FullTiming
	if o.quick {
		timing = loadgen.QuickTiming
	}
	if o.warmup > 0 {
		timing.Warmup = o.warmup
	}
	if o.duration > 0 {
		timing.Duration = o.duration
	}
	if o.pause <= 0 {
		o.pause = 2 * time.Second
		if o.quick {
			o.pause = 500 * time.Millisecond
		}
	}
	scenarios := loadgen.Suite(timing)
	if o.only != "" {
		re, err := regexp.Compile(o.only)
		if err != nil {
			return fmt.Errorf("--scenarios: %w", err)
		}
		var keep []loadgen.Scenario
		for _, s := range scenarios {
			if re.MatchString(s.Name) {
				keep = append(keep, s)
			}
		}
		scenarios = keep
	}
	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "mysterybox-bench-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if !o.keepDir {
		defer os.RemoveAll(dir)
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return err
		}
	}

	if o.scale > 0 {
		return runScale(ctx, o, repo, dir, o.scale)
	}
	if o.crash > 0 {
		return runCrash(ctx, o, repo, dir, o.crash)
	}

	var systems []*system
	defer func() {
		for _, s := range systems {
			s.stop()
		}
	}()
	for _, name := range strings.Split(o.systems, ",") {
		var s *system
		var err error
		switch strings.TrimSpace(name) {
		case "mysterybox":
			s, err = setupMysteryBox(ctx, o, repo, dir)
		case "etcd":
			s, err = setupEtcd(ctx, o, dir)
		default:
			err = fmt.Errorf("--systems: unknown %q", name)
		}
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}

	logf("machine: %s", machine())
	cfg := loadgen.Config{Keys: o.keys, OpTimeout: 10 * time.Second}
	for i, sc := range scenarios {
		if sc.RateFraction > 0 {
			// One fixed rate for every system: a share of the slowest
			// system's best write throughput, so none is saturated and the
			// latencies compare at equal load.
			base := 0.0
			for _, s := range systems {
				var rs []*loadgen.Result
				for _, r := range s.results {
					rs = append(rs, r)
				}
				if m := loadgen.MaxWriteThroughput(rs); m > 0 && (base == 0 || m < base) {
					base = m
				}
			}
			sc = loadgen.ResolveRate(sc, base)
			if sc.Rate == 0 {
				logf("skipping %s: no write throughput measured", sc.Name)
				continue
			}
			sc.Name = fmt.Sprintf("write open-loop %.0f/s c=%d", sc.Rate, sc.Clients)
		}
		// Alternate which system goes first, so drift on a shared machine
		// does not always favour the same one.
		order := append([]*system{}, systems...)
		if i%2 == 1 {
			for l, r := 0, len(order)-1; l < r; l, r = l+1, r-1 {
				order[l], order[r] = order[r], order[l]
			}
		}
		for _, s := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			logf("%-10s %s (%v + %v)", s.name, sc.Name, sc.Warmup, sc.Duration)
			c := cfg
			c.Sampler = s.sampler
			var profWG sync.WaitGroup
			if o.profile != "" {
				profile(ctx, &profWG, s, sc, o.profile)
			}
			r, err := loadgen.Run(ctx, s.target, sc, c)
			profWG.Wait()
			if err != nil {
				return err
			}
			if r.Errors > 0 {
				logf("%s %s: %d errors, first: %s", s.name, sc.Name, r.Errors, r.FirstError)
			}
			if r.CPUError != "" {
				logf("%s %s: cpu: %s", s.name, sc.Name, r.CPUError)
			}
			s.results[sc.Name] = r
			time.Sleep(o.pause)
		}
	}
	printReport(os.Stdout, systems, scenarios, o, timing)
	if o.jsonOut != "" {
		out := map[string]any{}
		for _, s := range systems {
			out[s.name] = s.results
		}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func setupMysteryBox(ctx context.Context, o options, repo, dir string) (*system, error) {
	binDir := o.mbBinDir
	if binDir == "" {
		binDir = filepath.Join(repo, "bin")
	}
	if o.profile != "" {
		binDir = filepath.Join(dir, "mysteryboxd-pprof")
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return nil, err
		}
		logf("building a profiling mysteryboxd (go build -overlay)")
		if err := buildProfilingMysteryboxd(repo, binDir); err != nil {
			return nil, fmt.Errorf("build profiling mysteryboxd: %w", err)
		}
	}
	binDir, err := filepath.Abs(binDir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(binDir, "mysteryboxd")); err != nil {
		return nil, fmt.Errorf("%w (run make build)", err)
	}
	logf("starting a 3-node MysteryBox region")
	c, err := startMysteryBox(ctx, repo, binDir, filepath.Join(dir, "mysterybox"), o.basePort, 3, o.profile != "")
	if err != nil {
		return nil, err
	}
	t, err := loadgen.NewMysteryBox(loadgen.MysteryBoxConfig{
		Endpoints: c.endpoints, Token: c.token, Conns: o.conns, Route: o.mbRoute, ValueSize: o.valueSize,
		NoIdempotencyKey: o.noIdemKey,
	})
	if err != nil {
		c.stop()
		return nil, err
	}
	logf("mysterybox: leader %s, preparing %d secrets", c.endpoints[0], o.keys)
	if err := t.Prepare(ctx, o.keys); err != nil {
		t.Close()
		c.stop()
		return nil, fmt.Errorf("mysterybox prepare: %w", err)
	}
	return &system{
		name:    "mysterybox",
		target:  t,
		sampler: withClient(c.pids, c.names),
		pprof:   c.pprofURLs,
		stop:    func() { t.Close(); c.stop() },
		results: map[string]*loadgen.Result{},
	}, nil
}

func setupEtcd(ctx context.Context, o options, dir string) (*system, error) {
	bin := o.etcdBin
	if bin == "" {
		cache := os.Getenv("MYSTERYBOX_BENCH_CACHE")
		if cache == "" {
			base, err := os.UserCacheDir()
			if err != nil {
				return nil, err
			}
			cache = filepath.Join(base, "mysterybox-bench")
		}
		bin = filepath.Join(cache, "etcd-v3.6.4")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w (run scripts/bench/build-etcd.sh)", err)
	}
	logf("starting a 3-member etcd cluster (%s)", bin)
	c, err := startEtcd(ctx, bin, filepath.Join(dir, "etcd"), o.basePort+400, 3, o.profile != "")
	if err != nil {
		return nil, err
	}
	t, err := newEtcdTarget(c.endpoints, o.conns, o.valueSize)
	if err != nil {
		c.stop()
		return nil, err
	}
	logf("etcd: leader %s, preparing %d keys", c.endpoints[0], o.keys)
	if err := t.Prepare(ctx, o.keys); err != nil {
		t.Close()
		c.stop()
		return nil, fmt.Errorf("etcd prepare: %w", err)
	}
	return &system{
		name:    "etcd",
		target:  t,
		sampler: withClient(c.pids, c.names),
		pprof:   c.pprofURLs,
		stop:    func() { t.Close(); c.stop() },
		results: map[string]*loadgen.Result{},
	}, nil
}

// clientLabel names the load generator's own process in a sampler.
const clientLabel = "client"

// withClient samples the servers and, last, this process (the load
// generator), whose CPU competes with the servers' on a shared machine.
func withClient(pids []int, names []string) *loadgen.ProcSampler {
	return &loadgen.ProcSampler{
		PIDs:  append(append([]int{}, pids...), os.Getpid()),
		Names: append(append([]string{}, names...), clientLabel),
	}
}

// profile fetches a CPU profile of every server of s covering the
// measured window of sc, into dir/<system>-<scenario>-<i>.pprof (i = 0 is
// the leader).
func profile(ctx context.Context, wg *sync.WaitGroup, s *system, sc loadgen.Scenario, dir string) {
	secs := int(sc.Duration.Seconds())
	if secs < 1 || len(s.pprof) == 0 {
		return
	}
	slug := strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(sc.Name), "-"), "-")
	for i, base := range s.pprof {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-ctx.Done():
				return
			case <-time.After(sc.Warmup):
			}
			url := fmt.Sprintf("%s/profile?seconds=%d", base, secs)
			resp, err := http.Get(url)
			if err != nil {
				logf("profile %s: %v", url, err)
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				logf("profile %s: %s", url, resp.Status)
				return
			}
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%s-%d.pprof", s.name, slug, i)))
			if err != nil {
				logf("profile: %v", err)
				return
			}
			defer f.Close()
			if _, err := io.Copy(f, resp.Body); err != nil {
				logf("profile: %v", err)
			}
		}()
	}
}

// machine describes the host for the report.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = ", load average " + strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return fmt.Sprintf("%d CPUs (%s)%s", runtime.NumCPU(), model, load)
}
