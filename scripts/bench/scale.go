package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/mysterybox/mysterybox/api/client"
	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/loadgen"
)

// preparedRegion starts a 3-node MysteryBox region from the binaries under
// test and prepares keys secrets on it through a load-generator target
// (scale and crash modes). stop releases both.
func preparedRegion(ctx context.Context, o options, repo, dir string, keys int) (c *mbCluster, t *loadgen.MysteryBox, stop func(), err error) {
	binDir := o.mbBinDir
	if binDir == "" {
		binDir = filepath.Join(repo, "bin")
	}
	if binDir, err = filepath.Abs(binDir); err != nil {
		return nil, nil, nil, err
	}
	logf("starting a 3-node MysteryBox region")
	if c, err = startMysteryBox(ctx, repo, binDir, filepath.Join(dir, "mysterybox"), o.basePort, 3, false); err != nil {
		return nil, nil, nil, err
	}
	if t, err = loadgen.NewMysteryBox(loadgen.MysteryBoxConfig{Endpoints: c.endpoints, Token: c.token, Conns: o.conns, ValueSize: o.valueSize}); err != nil {
		c.stop()
		return nil, nil, nil, err
	}
	stop = func() { t.Close(); c.stop() }
	if err = t.Prepare(ctx, keys); err != nil {
		stop()
		return nil, nil, nil, err
	}
	return c, t, stop, nil
}

// runScale measures the large-state targets on a MysteryBox region
// holding n secret versions: how long a restarted node takes to serve
// again, each node's RSS, and how long a new node takes to catch up (by
// snapshot, since the leader has compacted its log long before n entries).
func runScale(ctx context.Context, o options, repo, dir string, n int) error {
	keys := min(o.keys, n)
	c, t, stop, err := preparedRegion(ctx, o, repo, dir, keys)
	if err != nil {
		return err
	}
	defer stop()

	// Fill: n versions in total (Prepare wrote one per key).
	start := time.Now()
	var done, failed atomic.Int64
	done.Store(int64(keys))
	var wg sync.WaitGroup
	for w := range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ctx.Err() == nil && done.Load() < int64(n); i += 256 {
				if err := t.Write(ctx, w, i%keys); err != nil {
					failed.Add(1)
					continue
				}
				if d := done.Add(1); d%100000 == 0 {
					logf("filled %d versions (%.0f/s)", d, float64(d)/time.Since(start).Seconds())
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	fill := time.Since(start)

	// A marker version written last: a node serves the whole state once a
	// stale read of it returns this version.
	mc, err := client.New(ctx, client.Config{Endpoints: c.endpoints, Token: c.token, Timeout: 30 * time.Second})
	if err != nil {
		return err
	}
	defer mc.Close()
	proj := t.Project()
	sec, err := mc.Secrets().Create(ctx, &mbv1.CreateSecretRequest{Secret: &mbv1.Secret{
		Metadata: &mbv1.Metadata{ParentId: proj, Name: "scale-marker"},
		Spec: &mbv1.SecretSpec{SecretVersion: &mbv1.SecretVersionSpec{Payload: &mbv1.Payload{Entries: []*mbv1.PayloadEntry{
			{Key: "v", Value: &mbv1.PayloadEntry_StringValue{StringValue: "marker"}},
		}}}},
	}})
	if err != nil {
		return fmt.Errorf("marker: %w", err)
	}
	markerSecret, markerVersion := sec.GetMetadata().GetId(), sec.GetStatus().GetPrimaryVersionId()
	// The leader's applied index once the marker is in: a node has the whole
	// state when it has applied this far. (A stale payload read alone does
	// not prove it: in a region where some node is older than command
	// version 4, stale payload reads are still forwarded to the leader.)
	lst, err := mc.Cluster().Status(ctx, &mbv1.ClusterStatusRequest{})
	if err != nil {
		return fmt.Errorf("leader status: %w", err)
	}
	target := lst.GetAppliedIndex()

	w := os.Stdout
	fmt.Fprintf(w, "\n%s, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), machine())
	fmt.Fprintf(w, "| measure | value |\n|---|---|\n")
	fmt.Fprintf(w, "| versions | %d in %d secrets (%d-byte values; %d failed writes retried) |\n", done.Load(), keys, o.valueSize, failed.Load())
	fmt.Fprintf(w, "| fill time | %v (%.0f versions/s, 256 clients) |\n", fill.Round(time.Second), float64(n)/fill.Seconds())
	for i, pid := range c.pids {
		fmt.Fprintf(w, "| RSS of %s (%s) after fill | %s |\n", c.names[i], role(i), rss(pid))
	}
	for _, name := range c.names {
		fmt.Fprintf(w, "| data dir of %s | %s |\n", name, duSize(filepath.Join(c.dir, name, "data")))
	}

	// Restart a follower (the last endpoint) and time it to serving.
	fi := len(c.names) - 1
	node, ep := c.names[fi], c.endpoints[fi]
	oldPID := c.pids[fi]
	if _, err := c.script("stop", node, "--dir", c.dir); err != nil {
		return err
	}
	waitGone(oldPID, 30*time.Second)
	_ = os.Remove(filepath.Join(c.dir, node, "pid")) // see runCrash
	t0 := time.Now()
	out, err := c.script("start", node, "--dir", c.dir)
	if err != nil {
		return err
	}
	if len(out) > 0 {
		return fmt.Errorf("cluster.sh start %s: %s", node, out)
	}
	if err := waitServes(ctx, ep, c.token, markerSecret, markerVersion, target, 5*time.Minute); err != nil {
		return fmt.Errorf("restart of %s: %w", node, err)
	}
	restart := time.Since(t0)
	pid, _ := readPID(c.dir, node)
	fmt.Fprintf(w, "| restart of %s (SIGTERM, start) to serving the last write | %v (target < 10s) |\n", node, restart.Round(10*time.Millisecond))
	fmt.Fprintf(w, "| RSS of %s after restart | %s |\n", node, rss(pid))

	// A new node joins and catches up.
	t0 = time.Now()
	if _, err := c.script("up", "--regions", mbRegion, "--nodes", strconv.Itoa(len(c.names)+1),
		"--base-port", strconv.Itoa(o.basePort), "--dir", c.dir); err != nil {
		return err
	}
	newNode := fmt.Sprintf("%s-n%d", mbRegion, len(c.names)+1)
	raw, err := os.ReadFile(filepath.Join(c.dir, newNode, "grpc"))
	if err != nil {
		return err
	}
	if err := waitServes(ctx, strings.TrimSpace(string(raw)), c.token, markerSecret, markerVersion, target, 10*time.Minute); err != nil {
		return fmt.Errorf("catch-up of %s: %w", newNode, err)
	}
	catchup := time.Since(t0)
	pid, _ = readPID(c.dir, newNode)
	fmt.Fprintf(w, "| new node %s: start to serving the last write | %v (target < 60s) |\n", newNode, catchup.Round(10*time.Millisecond))
	// It joined as a non-voter; the leader promotes it once caught up.
	if err := waitVoter(ctx, ep, c.token, fmt.Sprintf("n%d", len(c.names)+1), time.Minute); err != nil { // cluster.sh's node id
		return err
	}
	fmt.Fprintf(w, "| new node %s: start to voter | %v |\n", newNode, time.Since(t0).Round(10*time.Millisecond))
	fmt.Fprintf(w, "| RSS of %s after catch-up | %s |\n", newNode, rss(pid))
	return nil
}

// waitVoter waits until the region's members, as ep answers, show id as a
// voter.
func waitVoter(ctx context.Context, ep, token, id string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Endpoints: []string{ep}, Token: token, MaxAttempts: 1, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()
	last := "not a member"
	for {
		ms, err := cl.Cluster().Members(ctx, &mbv1.ListMembersRequest{})
		if err != nil {
			last = err.Error()
		}
		for _, m := range ms.GetMembers() {
			if m.GetNodeId() == id {
				if m.GetRaftRole() != "nonvoter" {
					return nil
				}
				last = "a non-voter"
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become a voter: %s", id, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func role(i int) string {
	if i == 0 {
		return "leader"
	}
	return "follower"
}

// waitServes polls node ep until it has applied the target index (its own
// Status) and a stale read of the marker returns the marker version.
func waitServes(ctx context.Context, ep, token, secret, version string, target uint64, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cl, err := client.New(ctx, client.Config{Endpoints: []string{ep}, Token: token, DisableDiscovery: true, MaxAttempts: 1, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()
	stale := metadata.Pairs(client.HeaderConsistency, client.ConsistencyStale)
	var last error
	for {
		st, err := cl.Cluster().Status(ctx, &mbv1.ClusterStatusRequest{})
		if err == nil && st.GetAppliedIndex() < target {
			err = fmt.Errorf("applied index %d of %d", st.GetAppliedIndex(), target)
		}
		if err == nil {
			var r *mbv1.GetPayloadByKeyResponse
			r, err = cl.Payloads().GetByKey(metadata.NewOutgoingContext(ctx, stale), &mbv1.GetPayloadByKeyRequest{SecretId: secret, Key: "v"})
			if err == nil && r.GetVersionId() == version {
				return nil
			}
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not serving: %v", last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func readPID(dir, node string) (int, error) {
	raw, err := os.ReadFile(filepath.Join(dir, node, "pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

// rss reads a process's resident memory from /proc/<pid>/smaps_rollup:
// the total, and how much of it is anonymous (heap, stacks) and how much
// file pages mapped in (raft-boltdb maps its whole log file; those pages
// are clean and the kernel drops them under memory pressure).
func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return "?"
	}
	kb := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			kb[k] = n
		}
	}
	return fmt.Sprintf("%d MiB (anonymous %d MiB, mapped files %d MiB)", kb["Rss"]/1024, kb["Pss_Anon"]/1024, kb["Pss_File"]/1024)
}

// duSize is the total size of the files under dir, each counted once.
func duSize(dir string) string {
	// Count each file once: a Raft snapshot is a checkpoint of hard links
	// to the store's sstables.
	var total int64
	seen := map[[2]uint64]bool{}
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		total += fi.Size()
		return nil
	})
	return fmt.Sprintf("%d MiB", total>>20)
}
