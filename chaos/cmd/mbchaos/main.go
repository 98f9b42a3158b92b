// Command mbchaos runs one chaos campaign against real mysteryboxd
// processes and checks it (package chaos). It prints progress to stderr,
// then the one-line summary and the results table to stdout, and exits 1
// when a check failed, 2 on a usage error.
//
//	mbchaos --duration 5m --nodes 3 --net loopback
//	ip netns exec mbx-hub mbchaos --net netns --netns-prefix mbx ...   (scripts/chaos/run.sh)
//
// Everything about the run is saved under --dir: seed, config, schedule
// (the faults applied), history (every operation), final state, results,
// porcupine's visualisation when the history is not linearizable, node
// data and logs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mysterybox/mysterybox/chaos"
	"github.com/mysterybox/mysterybox/chaos/harness"
	"github.com/mysterybox/mysterybox/chaos/nemesis"
)

func main() {
	var (
		cfg     chaos.Config
		faults  string
		extra   string
		seed    uint64
		quiet   bool
		binDir  string
		scripts string
	)
	flag.StringVar(&cfg.Dir, "dir", "", "run folder (default $TMPDIR/mysterybox-chaos/<time>)")
	flag.StringVar(&binDir, "bin", "bin", "directory holding mysteryboxd")
	flag.StringVar(&scripts, "scripts", "scripts/chaos", "directory holding netns.sh")
	flag.StringVar(&cfg.Net, "net", "loopback", "loopback (no privileges) or netns (root; run in the hub namespace, see scripts/chaos/run.sh)")
	flag.StringVar(&cfg.NetnsPrefix, "netns-prefix", "mbx", "namespace prefix for --net netns")
	flag.StringVar(&cfg.Formation, "formation", "", "how the region forms: manual (--bootstrap/--join-raft) or gossip (--bootstrap-expect); default gossip with netns, manual on loopback")
	flag.IntVar(&cfg.Nodes, "nodes", 3, "nodes in the region (3 or 5)")
	flag.DurationVar(&cfg.Duration, "duration", time.Minute, "length of the fault phase")
	flag.Uint64Var(&seed, "seed", 0, "seed of the schedule and workload (0: random)")
	flag.StringVar(&faults, "faults", "", "comma-separated fault kinds (default: all but snapshot-catchup; \"all\" for every kind)")
	flag.DurationVar(&cfg.HoldMin, "hold-min", 4*time.Second, "shortest time a fault is held")
	flag.DurationVar(&cfg.HoldMax, "hold-max", 12*time.Second, "longest time a fault is held")
	flag.DurationVar(&cfg.GapMin, "gap-min", 2*time.Second, "shortest quiet time between faults")
	flag.DurationVar(&cfg.GapMax, "gap-max", 5*time.Second, "longest quiet time between faults")
	flag.IntVar(&cfg.Workers, "workers", 8, "concurrent clients")
	flag.DurationVar(&cfg.Think, "think", 60*time.Millisecond, "bound of the random pause between a client's operations")
	flag.IntVar(&cfg.ActiveSecrets, "secrets", 3, "secrets written concurrently")
	flag.IntVar(&cfg.OpsPerSecret, "ops-per-secret", 80, "operations before a secret retires")
	flag.DurationVar(&cfg.CheckTimeout, "check-timeout", 5*time.Minute, "bound on the linearizability check")
	flag.StringVar(&extra, "node-args", "", "extra mysteryboxd flags, space separated")
	flag.Uint64Var(&cfg.SnapshotThreshold, "raft-snapshot-threshold", 0, "every node's --raft-snapshot-threshold (0: mysteryboxd's default)")
	flag.Uint64Var(&cfg.TrailingLogs, "raft-trailing-logs", 0, "every node's --raft-trailing-logs (0: mysteryboxd's default)")
	flag.DurationVar(&cfg.SnapshotInterval, "raft-snapshot-interval", 0, "every node's --raft-snapshot-interval (0: mysteryboxd's default)")
	flag.BoolVar(&quiet, "q", false, "no progress on stderr")
	flag.BoolVar(&cfg.StaleReads, "stale-reads", false, "checker self-test: read with x-consistency: stale, which the checker must find not linearizable")
	flag.Parse()

	cfg.Seed = seed
	cfg.Bin = filepath.Join(binDir, "mysteryboxd")
	cfg.NetnsScript = filepath.Join(scripts, "netns.sh")
	if faults == "all" {
		cfg.Faults = append(cfg.Faults, nemesis.All...)
	} else if faults != "" {
		cfg.Faults = strings.Split(faults, ",")
	}
	if extra != "" {
		cfg.ExtraArgs = strings.Fields(extra)
	}
	if cfg.Formation == "" {
		cfg.Formation = harness.Manual
		if cfg.Net == "netns" {
			cfg.Formation = harness.Gossip
		}
	}
	if cfg.Formation != harness.Manual && cfg.Formation != harness.Gossip {
		fmt.Fprintf(os.Stderr, "mbchaos: --formation must be %s or %s\n", harness.Manual, harness.Gossip)
		os.Exit(2)
	}
	if cfg.Nodes < 3 {
		fmt.Fprintln(os.Stderr, "mbchaos: --nodes must be at least 3")
		os.Exit(2)
	}
	if _, err := os.Stat(cfg.Bin); err != nil {
		fmt.Fprintf(os.Stderr, "mbchaos: %v (build it with `make build`)\n", err)
		os.Exit(2)
	}
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(os.TempDir(), "mysterybox-chaos", time.Now().Format("20060102-150405"))
	}
	if !quiet {
		cfg.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := chaos.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mbchaos:", err)
		os.Exit(1)
	}
	fmt.Println(res.Line())
	fmt.Println()
	fmt.Print(res.Table())
	if len(res.FaultErrors) > 0 {
		fmt.Println("\nFaults that did not go as planned:")
		for _, f := range res.FaultErrors {
			fmt.Println("  " + f)
		}
	}
	fmt.Printf("\nrun folder: %s\n", res.Dir)
	if !res.OK() {
		fmt.Println("\nFAILED:")
		for _, f := range res.Failures {
			fmt.Println("  " + f)
		}
		os.Exit(1)
	}
}
