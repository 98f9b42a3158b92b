package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

const mbRegion = "eu-north1"

// mbCluster is a 3-node MysteryBox region run by scripts/cluster.sh.
type mbCluster struct {
	repo, dir, binDir string
	endpoints         []string // leader first once ready
	names             []string
	pids              []int
	token             string
	pprofURLs         []string
}

// pprofOffset is the port offset from a node's gRPC port at which the
// profiling build of mysteryboxd serves net/http/pprof (pprof_overlay.go.in).
const pprofOffset = 5

// buildProfilingMysteryboxd builds mysteryboxd with pprof_overlay.go.in
// added to its package by `go build -overlay`, so the repository is not
// touched, into outDir.
func buildProfilingMysteryboxd(repo, outDir string) error {
	src, err := filepath.Abs(filepath.Join(repo, "scripts/bench/pprof_overlay.go.in"))
	if err != nil {
		return err
	}
	dst, err := filepath.Abs(filepath.Join(repo, "cmd/mysteryboxd/zz_bench_pprof.go"))
	if err != nil {
		return err
	}
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {dst: src}})
	if err != nil {
		return err
	}
	of := filepath.Join(outDir, "overlay.json")
	if err := os.WriteFile(of, overlay, 0o600); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-overlay", of, "-o", filepath.Join(outDir, "mysteryboxd"), "./cmd/mysteryboxd")
	cmd.Dir = repo
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func (c *mbCluster) script(args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(c.repo, "scripts/cluster.sh"), args...)
	cmd.Env = append(os.Environ(), "MYSTERYBOX_BIN_DIR="+c.binDir)
	if pprof := len(c.pprofURLs) > 0 || os.Getenv("MYSTERYBOX_BENCH_PPROF") == "1"; pprof {
		cmd.Env = append(cmd.Env, "MYSTERYBOX_BENCH_PPROF=1")
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("cluster.sh %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), nil
}

// startMysteryBox starts a 3-node region with scripts/cluster.sh under dir
// (node i: gRPC base+100+10*i) and waits until it serves.
func startMysteryBox(ctx context.Context, repo, binDir, dir string, base, n int, pprof bool) (*mbCluster, error) {
	c := &mbCluster{repo: repo, dir: dir, binDir: binDir}
	if pprof {
		c.pprofURLs = []string{"pending"}
	}
	if _, err := c.script("up", "--regions", mbRegion, "--nodes", strconv.Itoa(n),
		"--base-port", strconv.Itoa(base), "--dir", dir); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx, n); err != nil {
		c.stop()
		return nil, err
	}
	if pprof {
		c.pprofURLs = nil
		for _, ep := range c.endpoints {
			host, port, _ := net.SplitHostPort(ep)
			p, _ := strconv.Atoi(port)
			c.pprofURLs = append(c.pprofURLs, fmt.Sprintf("http://%s/debug/pprof", net.JoinHostPort(host, strconv.Itoa(p+pprofOffset))))
		}
	}
	return c, nil
}

func (c *mbCluster) waitReady(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	tokenFile := filepath.Join(c.dir, mbRegion+".admin.token")
	var last error
	for {
		if err := c.tryReady(ctx, tokenFile, n); err == nil {
			return nil
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mysterybox not ready: %w (logs under %s)", last, c.dir)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// tryReady succeeds when the admin token exists, every node reports the
// same leader and n voters, and the leader answers a linearizable read.
func (c *mbCluster) tryReady(ctx context.Context, tokenFile string, n int) error {
	if _, err := os.Stat(tokenFile); err != nil {
		return err
	}
	out, err := c.script("env", mbRegion, "--dir", c.dir)
	if err != nil {
		return err
	}
	var eps []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimPrefix(sc.Text(), "export ")
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "MYSTERYBOX_ENDPOINTS":
			eps = strings.Split(v, ",")
		case "MYSTERYBOX_TOKEN":
			c.token = v
		}
	}
	if len(eps) != n || c.token == "" {
		return fmt.Errorf("cluster.sh env: %q", out)
	}
	leader := ""
	for _, ep := range eps {
		cl, err := client.New(ctx, client.Config{Endpoints: []string{ep}, Token: c.token, DisableDiscovery: true, MaxAttempts: 1, Timeout: 2 * time.Second})
		if err != nil {
			return err
		}
		st, err := cl.Cluster().Status(ctx, &mbv1.ClusterStatusRequest{})
		cl.Close()
		if err != nil {
			return err
		}
		if st.GetLeaderGrpcAddress() == "" || int(st.GetVoters()) != n || (leader != "" && leader != st.GetLeaderGrpcAddress()) {
			return fmt.Errorf("%s: leader %q, %d voters", ep, st.GetLeaderGrpcAddress(), st.GetVoters())
		}
		leader = st.GetLeaderGrpcAddress()
	}
	li := -1
	for i, ep := range eps {
		if ep == leader {
			li = i
		}
	}
	if li < 0 {
		return fmt.Errorf("leader %s is not among %v", leader, eps)
	}
	c.endpoints = append(append([]string{}, eps[li:]...), eps[:li]...)
	c.names, c.pids = nil, nil
	for _, ep := range c.endpoints {
		idx := slicesIndex(eps, ep) + 1
		node := fmt.Sprintf("%s-n%d", mbRegion, idx)
		raw, err := os.ReadFile(filepath.Join(c.dir, node, "pid"))
		if err != nil {
			return err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil {
			return err
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) != "mysteryboxd" {
			return fmt.Errorf("pid %d of %s is %q, not mysteryboxd", pid, node, comm)
		}
		c.names = append(c.names, node)
		c.pids = append(c.pids, pid)
	}
	return nil
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func (c *mbCluster) stop() {
	if _, err := c.script("down", "--dir", c.dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", errors.Unwrap(err))
	}
}
