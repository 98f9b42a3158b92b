package loadgen

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Timing is the warm-up and measured window of each scenario of a suite.
type Timing struct {
	Warmup, Duration time.Duration
}

// Standard timings: Full for numbers worth publishing, Quick for a smoke
// run of about a minute per system pair (BENCH_QUICK=1).
var (
	FullTiming  = Timing{Warmup: 10 * time.Second, Duration: 30 * time.Second}
	QuickTiming = Timing{Warmup: time.Second, Duration: 2 * time.Second}
)

// OpenLoopFraction is the share of the measured maximum write throughput
// that the suite's fixed-rate scenario runs at.
const OpenLoopFraction = 0.5

// Suite returns the standard scenarios (docs/performance.md): writes with
// 1, 16, 64 and 256 clients; linearizable reads with 1 and 256; stale reads
// with 256; a 90/10 read/write mix with 64; and an open-loop write run at
// OpenLoopFraction of the best write throughput (its RateFraction is set;
// the caller resolves Rate from the write results with ResolveRate).
func Suite(t Timing) []Scenario {
	sc := func(name string, op Op, clients int) Scenario {
		return Scenario{Name: name, Op: op, Clients: clients, Warmup: t.Warmup, Duration: t.Duration}
	}
	mix := sc("mix 90/10 c=64", OpMix, 64)
	mix.ReadFraction = 0.9
	open := sc("write open-loop 50% c=256", OpWrite, 256)
	open.RateFraction = OpenLoopFraction
	return []Scenario{
		sc("write c=1", OpWrite, 1),
		sc("write c=16", OpWrite, 16),
		sc("write c=64", OpWrite, 64),
		sc("write c=256", OpWrite, 256),
		sc("read c=1", OpRead, 1),
		sc("read c=256", OpRead, 256),
		sc("stale-read c=256", OpStaleRead, 256),
		mix,
		open,
	}
}

// MaxWriteThroughput returns the best throughput among closed-loop write
// results, the base of an open-loop scenario's RateFraction.
func MaxWriteThroughput(rs []*Result) float64 {
	best := 0.0
	for _, r := range rs {
		if r != nil && r.Scenario.Op == OpWrite && r.Scenario.Rate == 0 {
			best = max(best, r.Throughput)
		}
	}
	return best
}

// Ms formats a duration in milliseconds with 2 decimals.
func Ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// WriteTable prints one row per result: scenario, ops/s, latency
// percentiles in ms, errors, and (when sampled) CPU seconds per 1,000 ops
// of each server and in total.
func WriteTable(w io.Writer, rs []*Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tops/s\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\terrors\tCPU s/1k ops\t")
	for _, r := range rs {
		extra := fmt.Sprint(r.Errors)
		if r.Missed > 0 {
			extra += fmt.Sprintf(" (missed %d)", r.Missed)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario.Label(), r.Throughput,
			Ms(r.Latency.P50), Ms(r.Latency.P99), Ms(r.Latency.P999), Ms(r.Latency.Max), extra, FormatCPU(r))
	}
	return tw.Flush()
}

// FormatCPU renders Result.CPUPer1kOps as "total (a/b/c)", or "-".
func FormatCPU(r *Result) string {
	per := r.CPUPer1kOps()
	if len(per) == 0 {
		return "-"
	}
	total := 0.0
	parts := make([]string, len(per))
	for i, v := range per {
		total += v
		parts[i] = fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.3f (%s)", total, strings.Join(parts, "/"))
}
