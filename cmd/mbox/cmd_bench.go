package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"gopkg.in/yaml.v3"

	"github.com/mysterybox/mysterybox/loadgen"
)

// benchOpts are the flags of `mbox bench`.
type benchOpts struct {
	scenario     string
	clients      string
	rate         float64
	readFraction float64
	warmup       time.Duration
	duration     time.Duration
	quick        bool
	keys         int
	valueSize    int
	conns        int
	route        string
	projectID    string
	keep         bool
	serverPIDs   string
	noIdemKey    bool
}

func (a *app) benchCmd() *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test the region: write and read throughput and latency",
		Long: `bench drives the region with concurrent clients and reports operations per
second and latency percentiles (p50, p99, p99.9) per scenario.

A write creates a new version (one entry of --value-size bytes) of one of
--keys secrets; a read is "payload get-by-key" of a secret's primary version,
linearizable or (stale-read) with x-consistency: stale. bench first creates a
project (or uses --project-id) with --keys secrets, and schedules those
secrets for deletion at the end unless --keep.

--scenario suite (the default) runs the standard scenarios of
docs/performance.md: writes with 1, 16, 64 and 256 clients, linearizable
reads with 1 and 256, stale reads with 256, a 90/10 read/write mix with 64,
and a fixed-rate (open-loop) write run at 50% of the best write throughput.
Otherwise --scenario write|read|stale-read|mix runs that operation once per
--clients value; --rate R makes it open-loop at R operations per second,
with latency measured from each operation's intended start.

Connections are spread over --endpoints (--route spread): followers forward
writes and linearizable reads to the leader. --route client sends them to
the leader as api/client does (needs the region's admin role to find it).
With --server-pids (local servers only), bench also reports each server's
CPU seconds per 1,000 operations, read from /proc.

Every secret version written stays until purged: do not run bench against a
region whose storage you cannot spare.`,
		Example: `  mbox bench --quick
  mbox bench --scenario write --clients 1,64,256 --duration 30s
  mbox bench --scenario read --clients 256 --rate 5000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runBench(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.scenario, "scenario", "suite", "suite, write, read, stale-read or mix")
	f.StringVar(&o.clients, "clients", "64", "comma-separated client counts (not with --scenario suite)")
	f.Float64Var(&o.rate, "rate", 0, "open loop: operations per second in total (0: closed loop)")
	f.Float64Var(&o.readFraction, "read-fraction", 0.9, "share of reads in --scenario mix")
	f.DurationVar(&o.warmup, "warmup", loadgen.FullTiming.Warmup, "unrecorded warm-up of each scenario")
	f.DurationVar(&o.duration, "duration", loadgen.FullTiming.Duration, "measured window of each scenario")
	f.BoolVar(&o.quick, "quick", false, "smoke run: 1s warm-up and 2s per scenario")
	f.IntVar(&o.keys, "keys", 1000, "number of secrets (keys) the load is spread over")
	f.IntVar(&o.valueSize, "value-size", 1024, "payload bytes of each written version")
	f.IntVar(&o.conns, "conns", 0, "gRPC connections, spread over the endpoints (default 4 per endpoint)")
	f.StringVar(&o.route, "route", loadgen.RouteSpread, "spread (connections pinned round-robin to the endpoints) or client (api/client routing: leader first)")
	f.StringVar(&o.projectID, "project-id", "", "create the secrets in this existing project (default: a new project)")
	f.BoolVar(&o.keep, "keep", false, "keep the benchmark's secrets instead of scheduling them for deletion")
	f.BoolVar(&o.noIdemKey, "no-idempotency-key", false, "write without x-idempotency-key, over plain gRPC (shows the cost of idempotency records; --route spread only)")
	f.StringVar(&o.serverPIDs, "server-pids", "", "comma-separated pids of local mysteryboxd processes to report CPU per 1,000 ops for")
	return cmd
}

func (a *app) runBench(cmd *cobra.Command, o *benchOpts) error {
	if a.format != "text" && a.format != "json" && a.format != "yaml" {
		return usageErr("--format %q", a.format)
	}
	timing := loadgen.Timing{Warmup: o.warmup, Duration: o.duration}
	if o.quick {
		if cmd.Flags().Changed("warmup") || cmd.Flags().Changed("duration") {
			return usageErr("--quick sets --warmup and --duration")
		}
		timing = loadgen.QuickTiming
	}
	if timing.Duration <= 0 || timing.Warmup < 0 {
		return usageErr("--duration must be positive and --warmup not negative")
	}
	if o.keys < 1 || o.valueSize < 1 || o.valueSize > 65536 {
		return usageErr("--keys must be >= 1 and --value-size within 1..65536")
	}
	if o.rate < 0 || o.readFraction < 0 || o.readFraction > 1 {
		return usageErr("--rate must not be negative and --read-fraction within [0, 1]")
	}
	var scenarios []loadgen.Scenario
	if o.scenario == "suite" {
		if cmd.Flags().Changed("clients") || cmd.Flags().Changed("rate") {
			return usageErr("--clients and --rate apply to a single --scenario, not the suite")
		}
		scenarios = loadgen.Suite(timing)
	} else {
		op, err := loadgen.ParseOp(o.scenario)
		if err != nil {
			return usageErr("--scenario: %v", err)
		}
		for _, c := range strings.Split(o.clients, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(c))
			if err != nil || n < 1 {
				return usageErr("--clients %q: want positive integers", o.clients)
			}
			s := loadgen.Scenario{Op: op, Clients: n, Rate: o.rate, Warmup: timing.Warmup, Duration: timing.Duration}
			if op == loadgen.OpMix {
				s.ReadFraction = o.readFraction
			}
			scenarios = append(scenarios, s)
		}
	}
	var sampler loadgen.Sampler
	if o.serverPIDs != "" {
		ps := &loadgen.ProcSampler{}
		for _, p := range strings.Split(o.serverPIDs, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || pid < 1 {
				return usageErr("--server-pids %q: want process ids", o.serverPIDs)
			}
			if _, err := loadgen.ProcCPUSeconds(pid); err != nil {
				return usageErr("--server-pids: %v", err)
			}
			ps.PIDs = append(ps.PIDs, pid)
		}
		sampler = ps
	}
	var eps []string
	for _, e := range strings.Split(a.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return usageErr("--endpoints is empty")
	}
	if o.conns <= 0 {
		o.conns = 4 * len(eps)
	}
	tgt, err := loadgen.NewMysteryBox(loadgen.MysteryBoxConfig{
		Endpoints: eps, Token: a.resolvedToken, Conns: o.conns, Route: o.route,
		ValueSize: o.valueSize, ProjectID: o.projectID, NoIdempotencyKey: o.noIdemKey,
	})
	if err != nil {
		return usageErr("%v", err)
	}
	defer tgt.Close()

	ctx := cmd.Context()
	a.progress("preparing %d secrets...", o.keys)
	if err := tgt.Prepare(ctx, o.keys); err != nil {
		return err
	}
	if !o.keep {
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if err := tgt.Cleanup(cctx); err != nil {
				a.progress("cleanup: %v", err)
			}
		}()
	}
	opTimeout := a.timeout
	if opTimeout <= 0 {
		opTimeout = time.Minute
	}
	cfg := loadgen.Config{Keys: o.keys, OpTimeout: opTimeout, Sampler: sampler}
	var results []*loadgen.Result
	for _, s := range scenarios {
		s = loadgen.ResolveRate(s, loadgen.MaxWriteThroughput(results))
		if s.RateFraction > 0 && s.Rate == 0 {
			a.progress("skipping %s: no write throughput measured", s.Label())
			continue
		}
		a.progress("running %s for %v...", s.Label(), s.Warmup+s.Duration)
		r, err := loadgen.Run(ctx, tgt, s, cfg)
		if err != nil {
			return localErr(codes.Canceled, "%s: %v", s.Label(), err)
		}
		if r.Errors > 0 {
			a.progress("%s: %d errors, first: %s", s.Label(), r.Errors, r.FirstError)
		}
		results = append(results, r)
	}
	return a.emitBench(results)
}

// progress writes a status line to stderr (stdout carries only results).
func (a *app) progress(format string, args ...any) {
	fmt.Fprintf(a.stderr, "bench: "+format+"\n", args...)
}

func (a *app) emitBench(results []*loadgen.Result) error {
	switch a.format {
	case "json", "yaml":
		b, err := json.MarshalIndent(results, "", "  ")
		if err != nil {
			return localErr(codes.Internal, "encode json: %v", err)
		}
		if a.format == "yaml" {
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return localErr(codes.Internal, "encode yaml: %v", err)
			}
			if b, err = yaml.Marshal(v); err != nil {
				return localErr(codes.Internal, "encode yaml: %v", err)
			}
		} else {
			b = append(b, '\n')
		}
		_, err = a.stdout.Write(b)
		return err
	default:
		return loadgen.WriteTable(a.stdout, results)
	}
}
