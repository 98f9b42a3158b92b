package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mysterybox/mysterybox/loadgen"
)

// etcdCluster is a 3-member etcd cluster on loopback, started from a binary.
type etcdCluster struct {
	cmds      []*exec.Cmd
	names     []string
	endpoints []string // leader first once ready
	pids      []int    // in endpoints order
	pprofURLs []string // in endpoints order, when started with pprof
}

// startEtcd starts members e1..eN under dir. Member i listens for clients
// on base+10*i and for peers on base+10*i+1. With pprof, /debug/pprof is
// served on the client URL (--enable-pprof).
func startEtcd(ctx context.Context, bin, dir string, base, n int, pprof bool) (*etcdCluster, error) {
	c := &etcdCluster{}
	var initial []string
	for i := 1; i <= n; i++ {
		initial = append(initial, fmt.Sprintf("e%d=http://127.0.0.1:%d", i, base+10*i+1))
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("e%d", i)
		client := fmt.Sprintf("http://127.0.0.1:%d", base+10*i)
		peer := fmt.Sprintf("http://127.0.0.1:%d", base+10*i+1)
		mdir := filepath.Join(dir, name)
		if err := os.MkdirAll(mdir, 0o700); err != nil {
			return nil, err
		}
		args := []string{
			"--name", name,
			"--data-dir", filepath.Join(mdir, "data"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", "mysterybox-bench",
			// Every write of the suite stays in etcd's history, as every
			// version does in MysteryBox; room for it beyond the 2 GiB default.
			"--quota-backend-bytes", fmt.Sprint(int64(8) << 30),
			"--log-level", "warn",
		}
		if pprof {
			args = append(args, "--enable-pprof")
		}
		log, err := os.Create(filepath.Join(mdir, "log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			log.Close()
			c.stop()
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		log.Close()
		c.cmds = append(c.cmds, cmd)
		c.names = append(c.names, name)
		c.endpoints = append(c.endpoints, strings.TrimPrefix(client, "http://"))
		c.pids = append(c.pids, cmd.Process.Pid)
	}
	if err := c.waitReady(ctx); err != nil {
		c.stop()
		return nil, err
	}
	if pprof {
		for _, ep := range c.endpoints {
			c.pprofURLs = append(c.pprofURLs, "http://"+ep+"/debug/pprof")
		}
	}
	return c, nil
}

// waitReady waits until every member reports the same leader, then orders
// endpoints (and pids) leader first.
func (c *etcdCluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		leaderIdx, err := func() (int, error) {
			var leader uint64
			idx := -1
			for i, ep := range c.endpoints {
				sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
				st, err := cl.Status(sctx, ep)
				scancel()
				if err != nil {
					return -1, err
				}
				if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
					return -1, errors.New("no agreed leader yet")
				}
				leader = st.Leader
				if st.Header.GetMemberId() == leader {
					idx = i
				}
			}
			if idx < 0 {
				return -1, errors.New("leader is not a member")
			}
			return idx, nil
		}()
		if err == nil {
			c.leaderFirst(leaderIdx)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd not ready: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *etcdCluster) leaderFirst(i int) {
	rot := func(s []string) []string { return append(append([]string{}, s[i:]...), s[:i]...) }
	c.endpoints = rot(c.endpoints)
	c.names = rot(c.names)
	c.pids = append(append([]int{}, c.pids[i:]...), c.pids[:i]...)
	c.cmds = append(append([]*exec.Cmd{}, c.cmds[i:]...), c.cmds[:i]...)
}

// stop terminates every member and waits for it.
func (c *etcdCluster) stop() {
	for _, cmd := range c.cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, cmd := range c.cmds {
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

// etcdTarget is the loadgen.Target for etcd: one clientv3 client per
// connection, each pinned to one member (connection i to member i mod n,
// leader first), like the MysteryBox target's spread routing.
type etcdTarget struct {
	clients []*clientv3.Client
	value   string
	// keys are built once in Prepare so the measured loop only indexes a
	// slice, as the MysteryBox target does with its secret ids.
	keys []string
}

var (
	_ loadgen.Target   = (*etcdTarget)(nil)
	_ loadgen.Preparer = (*etcdTarget)(nil)
)

func newEtcdTarget(endpoints []string, conns, valueSize int) (*etcdTarget, error) {
	t := &etcdTarget{value: loadgen.Value(valueSize)}
	for i := range conns {
		cl, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{endpoints[i%len(endpoints)]},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			t.Close()
			return nil, err
		}
		t.clients = append(t.clients, cl)
	}
	return t, nil
}

func (t *etcdTarget) Close() {
	for _, c := range t.clients {
		c.Close()
	}
}

func (t *etcdTarget) Prepare(ctx context.Context, keys int) error {
	t.keys = make([]string, keys)
	for k := range keys {
		t.keys[k] = fmt.Sprintf("bench/%08d", k)
	}
	sem := make(chan struct{}, 32)
	errc := make(chan error, keys)
	for k := range keys {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			_, err := t.clients[k%len(t.clients)].Put(ctx, t.keys[k], t.value)
			errc <- err
		}()
	}
	var first error
	for range keys {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (t *etcdTarget) cl(client int) *clientv3.Client { return t.clients[client%len(t.clients)] }

func (t *etcdTarget) Write(ctx context.Context, client, key int) error {
	_, err := t.cl(client).Put(ctx, t.keys[key], t.value)
	return err
}

func (t *etcdTarget) Read(ctx context.Context, client, key int) error {
	return t.get(ctx, client, key)
}

func (t *etcdTarget) StaleRead(ctx context.Context, client, key int) error {
	return t.get(ctx, client, key, clientv3.WithSerializable())
}

func (t *etcdTarget) get(ctx context.Context, client, key int, opts ...clientv3.OpOption) error {
	r, err := t.cl(client).Get(ctx, t.keys[key], opts...)
	if err != nil {
		return err
	}
	if len(r.Kvs) != 1 || len(r.Kvs[0].Value) != len(t.value) {
		return fmt.Errorf("get %s: %d kvs", t.keys[key], len(r.Kvs))
	}
	return nil
}
