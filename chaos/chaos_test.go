package chaos

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/chaos/harness"
	"github.com/mysterybox/mysterybox/chaos/nemesis"
)

// server is mysteryboxd, built once for every test of the package (the
// build and its link take seconds) into a folder TestMain removes.
var server struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	out  []byte
}

// buildServer returns the built mysteryboxd; a build failure fails the test.
func buildServer(t *testing.T) string {
	t.Helper()
	server.once.Do(func() {
		if server.dir, server.err = os.MkdirTemp("", "mbchaos-bin-"); server.err != nil {
			return
		}
		server.bin = filepath.Join(server.dir, "mysteryboxd")
		server.out, server.err = exec.Command("go", "build", "-o", server.bin, "github.com/mysterybox/mysterybox/cmd/mysteryboxd").CombinedOutput()
	})
	if server.err != nil {
		t.Fatalf("mysteryboxd does not build: %v\n%s", server.err, server.out)
	}
	return server.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if server.dir != "" {
		os.RemoveAll(server.dir)
	}
	os.Exit(code)
}

// runDir is kept when the test fails (for its history, schedule, logs and
// visualisation) and removed otherwise.
func runDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mbchaos-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("run folder kept: %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// TestChaosShort is the short, non-root chaos campaign of `make test`: a
// 3-node region on loopback behind the fault-injecting proxies, a workload
// of concurrent clients, and a nemesis killing nodes (the leader among
// them), pausing the leader, cutting it off, cutting links one way and
// slowing the network, for about 25 s (MBX_CHAOS_SHORT=<duration> to
// change it); then every check must pass.
func TestChaosShort(t *testing.T) {
	bin := buildServer(t)
	d := 25 * time.Second
	if v := os.Getenv("MBX_CHAOS_SHORT"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	seed := uint64(time.Now().UnixNano() & (1<<53 - 1))
	if v := os.Getenv("MBX_CHAOS_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Dir: runDir(t), Bin: bin, Net: "loopback", Formation: harness.Manual, Nodes: 3,
		Duration: d, Seed: seed,
		Faults:  []string{nemesis.Kill, nemesis.KillLeader, nemesis.PauseLeader, nemesis.PartitionLeader, nemesis.PartitionOneway, nemesis.SlowNet, nemesis.Mixed},
		HoldMin: 2 * time.Second, HoldMax: 4 * time.Second, GapMin: time.Second, GapMax: 2 * time.Second,
		Workers: 6, ActiveSecrets: 3, OpsPerSecret: 40, Think: 40 * time.Millisecond,
		CheckTimeout: 30 * time.Second,
		Log:          testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res.Line())
	if !res.OK() {
		t.Errorf("chaos seed=%d failed:\n  %s\n%s", res.Seed, strings.Join(res.Failures, "\n  "), res.Table())
	}
	if res.FaultsTotal == 0 || res.Lost.AckedCreates == 0 {
		t.Errorf("the campaign did nothing: %s", res.Line())
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
