// Package chaos runs chaos campaigns against real mysteryboxd processes and
// checks every history: a region of N nodes (package harness), a workload
// of concurrent clients (package workload), a nemesis that injects faults
// from a seeded schedule (package nemesis), and after healing the checks of
// package checker — linearizability (porcupine), lost writes, identical
// replicas, no canary plaintext at rest, no crash.
//
// Run is the whole campaign; chaos/cmd/mbchaos is its command line and
// `make chaos` (scripts/chaos/run.sh) the usual way to start it. The short
// non-root variant in chaos_test.go runs in `make test`. See
// docs/reliability.md.
package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mysterybox/mysterybox/chaos/checker"
	"github.com/mysterybox/mysterybox/chaos/harness"
	"github.com/mysterybox/mysterybox/chaos/history"
	"github.com/mysterybox/mysterybox/chaos/nemesis"
	"github.com/mysterybox/mysterybox/chaos/workload"
)

// Config configures a campaign.
type Config struct {
	// Dir is the run folder: seed, schedule, history, results, node data
	// and logs go there.
	Dir string
	// Bin is the mysteryboxd binary.
	Bin string
	// Net is "loopback" (no privileges; partitions in the proxies) or
	// "netns" (root; namespaces made by scripts/chaos/netns.sh, the driver
	// running in PREFIX-hub).
	Net         string
	NetnsPrefix string
	// NetnsScript is scripts/chaos/netns.sh.
	NetnsScript string
	// Formation: harness.Manual or harness.Gossip.
	Formation string
	Nodes     int
	// Duration of the fault phase.
	Duration time.Duration
	Seed     uint64
	// Faults to draw from (nemesis kinds); empty: all but snapshot-catchup.
	Faults                           []string
	HoldMin, HoldMax, GapMin, GapMax time.Duration
	Workers                          int
	// Think bounds the random pause between a worker's operations.
	Think         time.Duration
	ActiveSecrets int
	OpsPerSecret  int
	// CheckTimeout bounds the linearizability check.
	CheckTimeout time.Duration
	// StaleReads: see workload.Config (checker self-test).
	StaleReads bool
	// ExtraArgs go to every mysteryboxd.
	ExtraArgs []string
	// Raft snapshot settings of every node (mysteryboxd's defaults when
	// zero); small ones make snapshot-catchup quick and snapshots frequent.
	SnapshotThreshold, TrailingLogs uint64
	SnapshotInterval                time.Duration
	// Log receives progress lines (also written to DIR/chaos.log).
	Log io.Writer `json:"-"`
}

// Result is a campaign's outcome.
type Result struct {
	Dir       string  `json:"dir"`
	Seed      uint64  `json:"seed"`
	Nodes     int     `json:"nodes"`
	Net       string  `json:"net"`
	Formation string  `json:"formation"`
	Duration  float64 `json:"duration_s"`

	Faults      map[string]int `json:"faults"`
	FaultsTotal int            `json:"faults_total"`
	FaultErrors []string       `json:"fault_errors,omitempty"`

	Workload workload.Stats `json:"workload"`
	// RegionSilence is the longest time no client got any answer
	// (seconds), and when it ended.
	RegionSilence   float64            `json:"region_silence_s"`
	RegionSilenceAt float64            `json:"region_silence_ended_at_s"`
	Linearizable    checker.LinResult  `json:"linearizable"`
	Lost            checker.LostResult `json:"lost_writes"`
	Unexpected      map[string]int     `json:"unexpected_errors,omitempty"`
	Replicas        []checker.Replica  `json:"replicas"`
	ReplicaIssues   []string           `json:"replica_issues,omitempty"`
	Canaries        []checker.Finding  `json:"canaries,omitempty"`
	Panics          []checker.Finding  `json:"panics,omitempty"`
	Exits           []harness.Exit     `json:"exits"`
	StopIssues      []string           `json:"stop_issues,omitempty"`

	// Failures lists every failed check; empty means the run passed.
	Failures []string `json:"failures"`
}

// OK reports whether every check passed.
func (r *Result) OK() bool { return len(r.Failures) == 0 }

// Line is the one-line summary of the run.
func (r *Result) Line() string {
	return fmt.Sprintf("chaos seed=%d nodes=%d net=%s faults=%d ops=%d acked=%d lost=%d linearizable=%s replicas=%s canaries=%d crashes=%d max_unavailable=%.1fs duration=%.0fs result=%s",
		r.Seed, r.Nodes, r.Net, r.FaultsTotal, r.Workload.Ops, r.Lost.Acked, len(r.Lost.Lost), r.Linearizable.Result,
		map[bool]string{true: "identical", false: "DIVERGED"}[len(r.ReplicaIssues) == 0], len(r.Canaries), r.crashes(),
		r.Workload.LongestUnavailable.Seconds(), r.Duration, map[bool]string{true: "PASS", false: "FAIL"}[r.OK()])
}

func (r *Result) crashes() int {
	n := len(r.Panics)
	for _, e := range r.Exits {
		if !e.Expected {
			n++
		}
	}
	return n
}

// Table renders the campaign's table for docs/reliability.md.
func (r *Result) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| fault | injected |\n|---|---|\n")
	for _, k := range nemesis.All {
		if r.Faults[k] > 0 {
			fmt.Fprintf(&b, "| %s | %d |\n", k, r.Faults[k])
		}
	}
	fmt.Fprintf(&b, "| **total** | **%d** |\n\n", r.FaultsTotal)
	fmt.Fprintf(&b, "| measure | value |\n|---|---|\n")
	fmt.Fprintf(&b, "| operations | %d (%d ok, %d failed definitely, %d unknown outcome) |\n", r.Workload.Ops, r.Workload.OK, r.Workload.Failed, r.Workload.Unknown)
	fmt.Fprintf(&b, "| unknown outcomes resolved by retrying with the same idempotency key | %d |\n", r.Workload.Resolved)
	fmt.Fprintf(&b, "| stale payload reads by version id (answered / wrong value) | %d (%d / %d) |\n", r.Workload.StaleReads, r.Workload.StaleReadsOK, len(r.Workload.StaleWrong))
	fmt.Fprintf(&b, "| acknowledged writes | %d (%d version creations) |\n", r.Lost.Acked, r.Lost.AckedCreates)
	fmt.Fprintf(&b, "| lost writes | %d |\n", len(r.Lost.Lost))
	fmt.Fprintf(&b, "| duplicated / phantom values | %d / %d |\n", len(r.Lost.Duplicated), len(r.Lost.Phantoms))
	fmt.Fprintf(&b, "| linearizability violations | %d (%s; %d operations, %d secrets) |\n", r.Linearizable.Violations, r.Linearizable.Result, r.Linearizable.Ops, r.Linearizable.Secrets)
	fmt.Fprintf(&b, "| replicas | %s |\n", map[bool]string{true: "identical", false: strings.Join(r.ReplicaIssues, "; ")}[len(r.ReplicaIssues) == 0])
	fmt.Fprintf(&b, "| canary plaintext found | %d |\n", len(r.Canaries))
	fmt.Fprintf(&b, "| crashes (unexpected exits, panics) | %d |\n", r.crashes())
	fmt.Fprintf(&b, "| longest unavailability seen by a client (no answer to that client) | %.1f s |\n", r.Workload.LongestUnavailable.Seconds())
	fmt.Fprintf(&b, "| longest time no client got any answer | %.1f s |\n", r.RegionSilence)
	return b.String()
}

// Run runs a campaign and checks it. The error is for a campaign that
// could not run; a run whose checks fail returns a Result with Failures.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Duration == 0 {
		cfg.Duration = time.Minute
	}
	if cfg.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		for _, x := range b {
			cfg.Seed = cfg.Seed<<8 | uint64(x)
		}
		cfg.Seed &= 1<<53 - 1
	}
	if cfg.CheckTimeout == 0 {
		cfg.CheckTimeout = 2 * time.Minute
	}
	if cfg.Net == "" {
		cfg.Net = "loopback"
	}
	if err := nemesis.Validate(cfg.Faults); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(cfg.Dir, "chaos.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	var logMu sync.Mutex
	// One clock for the log, the history and the schedule.
	rec := history.NewRecorder()
	logf := func(format string, args ...any) {
		line := fmt.Sprintf("%7.2fs "+format+"\n", append([]any{time.Since(rec.Start()).Seconds()}, args...)...)
		logMu.Lock()
		defer logMu.Unlock()
		logFile.WriteString(line)
		if cfg.Log != nil {
			io.WriteString(cfg.Log, line)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "seed"), fmt.Appendf(nil, "%d\n", cfg.Seed), 0o644); err != nil {
		return nil, err
	}
	if err := history.WriteJSON(filepath.Join(cfg.Dir, "config.json"), cfg); err != nil {
		return nil, err
	}
	res := &Result{Dir: cfg.Dir, Seed: cfg.Seed, Nodes: cfg.Nodes, Net: cfg.Net, Formation: cfg.Formation}
	logf("campaign seed=%d nodes=%d net=%s formation=%s duration=%v dir=%s", cfg.Seed, cfg.Nodes, cfg.Net, cfg.Formation, cfg.Duration, cfg.Dir)

	var network harness.Network
	switch cfg.Net {
	case "loopback":
		network = harness.NewLoopback()
	case "netns":
		network, err = harness.NewNetns(cfg.NetnsPrefix, cfg.NetnsScript, cfg.Nodes)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("chaos: unknown network %q", cfg.Net)
	}
	nodeArgs := append([]string(nil), cfg.ExtraArgs...)
	if cfg.SnapshotThreshold > 0 {
		nodeArgs = append(nodeArgs, fmt.Sprintf("--raft-snapshot-threshold=%d", cfg.SnapshotThreshold))
	}
	if cfg.TrailingLogs > 0 {
		nodeArgs = append(nodeArgs, fmt.Sprintf("--raft-trailing-logs=%d", cfg.TrailingLogs))
	}
	if cfg.SnapshotInterval > 0 {
		nodeArgs = append(nodeArgs, "--raft-snapshot-interval="+cfg.SnapshotInterval.String())
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	cluster, err := harness.Start(startCtx, harness.Config{
		Dir: cfg.Dir, Bin: cfg.Bin, Nodes: cfg.Nodes, Formation: cfg.Formation, Network: network,
		ExtraArgs: nodeArgs, Seed: cfg.Seed, Logf: logf,
	})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("chaos: start the region: %w", err)
	}
	defer cluster.Close()
	logf("region up: %d nodes", cfg.Nodes)

	var rid [3]byte
	_, _ = rand.Read(rid[:])
	wcfg := workload.Config{
		Endpoints: cluster.Endpoints(), Token: cluster.Token(), RunID: hex.EncodeToString(rid[:]), Seed: cfg.Seed,
		Workers: cfg.Workers, ActiveSecrets: cfg.ActiveSecrets, OpsPerSecret: cfg.OpsPerSecret, Logf: logf,
		StaleReads: cfg.StaleReads, Think: cfg.Think,
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	wl, err := workload.New(wctx, wcfg, rec)
	cancel()
	if err != nil {
		return nil, err
	}
	defer wl.Close()

	nem := nemesis.New(nemesis.Config{
		Seed: cfg.Seed, Faults: cfg.Faults, HoldMin: cfg.HoldMin, HoldMax: cfg.HoldMax, GapMin: cfg.GapMin, GapMax: cfg.GapMax,
		Fill: func(ctx context.Context) { wl.Fill(ctx, 8) }, Logf: logf,
		SnapshotThreshold: cfg.SnapshotThreshold, TrailingLogs: cfg.TrailingLogs,
	}, cluster, rec.Start())

	faultStart := time.Since(rec.Start())
	runCtx, stopRun := context.WithTimeout(ctx, cfg.Duration)
	defer stopRun()
	drainCtx, stopDrain := context.WithTimeout(ctx, cfg.Duration+3*time.Minute)
	defer stopDrain()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); wl.Run(runCtx, drainCtx) }()
	nemDone := make(chan struct{})
	go func() { defer close(nemDone); nem.Run(runCtx) }()
	// Progress while the campaign runs.
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-nemDone:
				return
			case <-t.C:
				st := wl.Stats()
				logf("progress: ops=%d ok=%d failed=%d unknown=%d faults=%d", st.Ops, st.OK, st.Failed, st.Unknown, len(nem.Events()))
			}
		}
	}()
	<-nemDone
	faultEnd := time.Since(rec.Start())
	logf("fault phase over; healing everything")
	healCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	if err := nem.HealAll(healCtx, 2*time.Minute); err != nil {
		res.Failures = append(res.Failures, "region did not recover after healing: "+err.Error())
		logf("heal: %v", err)
	}
	cancel()
	wg.Wait()
	stopDrain()
	res.Duration = cfg.Duration.Seconds()
	res.Workload = wl.Stats()
	res.Faults = nem.Counts()
	for _, ev := range nem.Events() {
		res.FaultsTotal++
		if ev.Err != "" {
			res.FaultErrors = append(res.FaultErrors, fmt.Sprintf("%d %s: %s", ev.Seq, ev.Fault, ev.Err))
		}
	}
	_ = history.WriteJSON(filepath.Join(cfg.Dir, "schedule.json"), nem.Events())
	logf("workload over: %+v", res.Workload)

	res.Failures = append(res.Failures, res.Workload.StaleWrong...)
	final, err := wl.Final(ctx)
	if err != nil {
		res.Failures = append(res.Failures, "final read: "+err.Error())
	}
	ops := rec.Ops()
	_ = history.WriteJSON(filepath.Join(cfg.Dir, "history.json"), ops)
	_ = history.WriteJSON(filepath.Join(cfg.Dir, "final.json"), final)
	logf("final state: %d secrets, %d versions; checking %d operations", len(final.Secrets), len(final.Versions), len(ops))

	res.Lost.Acked, res.Lost.AckedCreates = checker.CountAcked(ops)
	gap, at := checker.LongestSilence(ops, int64(faultStart), int64(faultEnd))
	res.RegionSilence, res.RegionSilenceAt = float64(gap)/1e9, float64(at)/1e9
	if err == nil {
		res.Linearizable = checker.CheckLinearizable(ops, final, cfg.CheckTimeout, filepath.Join(cfg.Dir, "linearizability.html"))
		switch res.Linearizable.Result {
		case "no":
			ill := res.Linearizable.Illegal
			more := ""
			if len(ill) > 5 {
				ill, more = ill[:5], fmt.Sprintf(" and %d more", len(ill)-5)
			}
			res.Failures = append(res.Failures, fmt.Sprintf("history not linearizable (secrets %s%s; see %s)", strings.Join(ill, ", "), more, res.Linearizable.HTML))
		case "unknown":
			res.Failures = append(res.Failures, "linearizability check timed out")
		}
		res.Lost = checker.CheckLostWrites(ops, final)
		for _, l := range [][]string{res.Lost.Lost, res.Lost.Duplicated, res.Lost.Phantoms} {
			for _, x := range l {
				res.Failures = append(res.Failures, x)
			}
		}
	}
	res.Unexpected = checker.Unexpected(ops)
	for k, v := range res.Unexpected {
		res.Failures = append(res.Failures, fmt.Sprintf("%d operations failed with an unexpected code (%s)", v, k))
	}
	logf("linearizable=%s lost=%d", res.Linearizable.Result, len(res.Lost.Lost))

	stopCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	res.StopIssues = cluster.StopAll(stopCtx)
	cancel()
	for _, s := range res.StopIssues {
		res.Failures = append(res.Failures, "stopping: "+s)
	}
	for _, r := range cluster.Replicas() {
		cr := checker.Replica{Slot: r.Slot, ID: r.ID, Applied: r.Applied, Term: r.Term, Hash: r.Hash, KilledAtStop: r.KilledAtStop}
		if r.Err != nil {
			cr.Err = r.Err.Error()
		}
		res.Replicas = append(res.Replicas, cr)
	}
	res.ReplicaIssues = checker.CheckReplicas(res.Replicas)
	for _, p := range res.ReplicaIssues {
		res.Failures = append(res.Failures, "replicas: "+p)
	}
	logf("replicas: %v", res.ReplicaIssues)

	res.Canaries, err = checker.ScanFiles([]string{filepath.Join(cfg.Dir, "data"), filepath.Join(cfg.Dir, "logs")}, checker.CanaryPatterns(workload.Prefix))
	if err != nil {
		res.Failures = append(res.Failures, "canary scan: "+err.Error())
	}
	for _, f := range res.Canaries {
		res.Failures = append(res.Failures, "canary plaintext at rest: "+f.String())
	}
	res.Panics, err = checker.ScanFiles([]string{filepath.Join(cfg.Dir, "logs")}, checker.PanicMarkers)
	if err != nil {
		res.Failures = append(res.Failures, "log scan: "+err.Error())
	}
	for _, f := range res.Panics {
		res.Failures = append(res.Failures, "panic in a node log: "+f.String())
	}
	res.Exits = cluster.Exits()
	for _, e := range res.Exits {
		if !e.Expected {
			res.Failures = append(res.Failures, fmt.Sprintf("%s (slot %d) exited on its own: %s", e.ID, e.Slot, e.Status))
		}
	}
	sort.Strings(res.Failures)
	_ = history.WriteJSON(filepath.Join(cfg.Dir, "result.json"), res)
	summary := res.Line() + "\n\n" + res.Table()
	if len(res.FaultErrors) > 0 {
		summary += "\nFaults that did not go as planned:\n  " + strings.Join(res.FaultErrors, "\n  ") + "\n"
	}
	if len(res.Failures) > 0 {
		summary += "\nFailures:\n  " + strings.Join(res.Failures, "\n  ") + "\n"
	}
	_ = os.WriteFile(filepath.Join(cfg.Dir, "summary.txt"), []byte(summary), 0o644)
	logf("%s", res.Line())
	return res, nil
}
