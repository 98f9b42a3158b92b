package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mysterybox/mysterybox/loadgen"
)

// printReport writes the comparison as a Markdown table, ready for
// docs/performance.md: per scenario the ops/s of each system, the ratio of
// the first to the second, latency percentiles, and CPU seconds per 1,000
// ops (total, then per server, leader first).
func printReport(w io.Writer, systems []*system, scenarios []loadgen.Scenario, o options, t loadgen.Timing) {
	fmt.Fprintf(w, "\n%s, %s; warm-up %v, measured %v per scenario; %d keys, %d-byte values, %d connections per system, leader first\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), machine(), t.Warmup, t.Duration, o.keys, o.valueSize, o.conns)
	head := []string{"scenario"}
	for _, s := range systems {
		head = append(head, s.name+" ops/s")
	}
	if len(systems) == 2 {
		head = append(head, "ratio")
	}
	for _, s := range systems {
		head = append(head, s.name+" p50 / p99 / p99.9 ms")
	}
	for _, s := range systems {
		head = append(head, s.name+" CPU s/1k ops")
	}
	for _, s := range systems {
		head = append(head, s.name+" client CPU")
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
	fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", len(head)))

	var notes []string
	for _, name := range scenarioNames(systems, scenarios) {
		row := []string{name}
		var rs []*loadgen.Result
		for _, s := range systems {
			r := s.results[name]
			rs = append(rs, r)
			if r == nil {
				row = append(row, "-")
				continue
			}
			row = append(row, fmt.Sprintf("%.0f", r.Throughput))
			if r.Errors > 0 {
				notes = append(notes, fmt.Sprintf("%s, %s: %d errors (first: %s)", s.name, name, r.Errors, r.FirstError))
			}
			if r.Missed > 0 {
				notes = append(notes, fmt.Sprintf("%s, %s: %d scheduled operations never started (rate not reached)", s.name, name, r.Missed))
			}
		}
		if len(systems) == 2 {
			if rs[0] != nil && rs[1] != nil && rs[1].Throughput > 0 {
				row = append(row, fmt.Sprintf("%.2f", rs[0].Throughput/rs[1].Throughput))
			} else {
				row = append(row, "-")
			}
		}
		for _, r := range rs {
			if r == nil {
				row = append(row, "-")
				continue
			}
			row = append(row, fmt.Sprintf("%s / %s / %s", loadgen.Ms(r.Latency.P50), loadgen.Ms(r.Latency.P99), loadgen.Ms(r.Latency.P999)))
		}
		for _, r := range rs {
			row = append(row, serverCPU(r))
		}
		for _, r := range rs {
			row = append(row, clientCPU(r))
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
	fmt.Fprintln(w)
	if len(systems) == 2 {
		fmt.Fprintf(w, "ratio = %s ops/s ÷ %s ops/s. ", systems[0].name, systems[1].name)
	}
	fmt.Fprintln(w, "CPU: CPU seconds per 1,000 operations over the measured window, from /proc/<pid>/stat: servers' total (leader / follower / follower); client: the load generator itself.")
	for _, n := range notes {
		fmt.Fprintln(w, "- "+n)
	}
}

// scenarioNames lists the scenario names in suite order, with the
// open-loop one under the name it ran with (its rate is in the name).
func scenarioNames(systems []*system, scenarios []loadgen.Scenario) []string {
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, sc := range scenarios {
		if sc.RateFraction == 0 {
			add(sc.Name)
			continue
		}
		for _, s := range systems {
			for n, r := range s.results {
				if r.Scenario.Rate > 0 {
					add(n)
				}
			}
		}
	}
	return out
}

// serverCPU formats the servers' CPU seconds per 1,000 ops: the total, then
// each server (leader first).
func serverCPU(r *loadgen.Result) string {
	if r == nil {
		return "-"
	}
	per := r.CPUPer1kOps()
	if len(per) < 2 {
		return "-"
	}
	per = per[:len(per)-1] // the last one is the client
	total := 0.0
	parts := make([]string, len(per))
	for i, v := range per {
		total += v
		parts[i] = fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.3f (%s)", total, strings.Join(parts, " / "))
}

// clientCPU formats the load generator's CPU seconds per 1,000 ops.
func clientCPU(r *loadgen.Result) string {
	if r == nil {
		return "-"
	}
	per := r.CPUPer1kOps()
	if len(per) == 0 || r.CPULabels[len(r.CPULabels)-1] != clientLabel {
		return "-"
	}
	return fmt.Sprintf("%.3f", per[len(per)-1])
}
