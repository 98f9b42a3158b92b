// Package clustertest starts a region of N real MysteryBox nodes inside one
// test process, on 127.0.0.1 ports, with fast Raft timings: the harness for
// multi-node tests (forwarding, failover, restart, snapshot install).
package clustertest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/internal/testnet"
	"github.com/mysterybox/mysterybox/node"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/tlsutil"
)

// Options tune the region under test.
type Options struct {
	// Region name (default test-region1).
	Region            string
	Nodes             int
	PurgeAfter        time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// RaftLogStore of every node (cluster.LogStoreWAL or LogStoreBoltDB;
	// empty: the default).
	RaftLogStore string
	// LogLevel of the nodes' loggers (default warn); their output goes to
	// the test log, and also to LogSink when set.
	LogLevel hclog.Level
	LogSink  io.Writer

	// Gossip forms the region through gossip and bootstrap-expect instead
	// of explicit bootstrap and joins. Seeds are gossip addresses of other
	// regions' nodes; GossipKey encrypts gossip.
	Gossip            bool
	BootstrapExpect   int
	Seeds             []string
	GossipKey         []byte
	DeadNodeReapAfter time.Duration
	// Metrics serves /metrics on every node (Node.N.MetricsAddr()).
	Metrics bool
	// TLS runs the region over TLS with mutual TLS between nodes, with
	// certificates from Cluster.CA.
	TLS bool
	// NoAudit turns the audit log off (it is on by default, as in production).
	NoAudit        bool
	AuditRetention time.Duration
	// AuditFailOpen serves payload reads whose record cannot be written.
	AuditFailOpen bool
	// OldNodes advertise command version 1, as nodes of the previous
	// release would (mixed-version tests): the first OldNodes nodes.
	OldNodes int
	// FirstNodeID numbers the nodes from node<FirstNodeID> instead of
	// node1 (two clusters in one region need distinct ids).
	FirstNodeID int
}

// Cluster is a running test region.
type Cluster struct {
	t       testing.TB
	opts    Options
	Region  string
	Keyring *region.Keyring
	Nodes   []*Node
	// AdminToken is the region admin's token; Conn sends it with every call.
	AdminToken string
	// CA issues the nodes' certificates with Options.TLS; CAFile holds it.
	CA     *tlsutil.CA
	CAFile string
	base   string // every node's data lives below
	nextID int
	log    *testLog
}

// Node is one member; N is nil while it is stopped.
type Node struct {
	// started: the node ran at least once (its addresses are in Raft).
	started bool
	ID      string
	Dir     string
	Cfg     node.Config
	N       *node.Node
	conn    *grpc.ClientConn
}

// New starts a region: the first node bootstraps, the others join through it.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := Prepare(t, opts)
	if !c.opts.Gossip {
		for i := 0; i < c.opts.Nodes; i++ {
			n := c.AddNode()
			if i == 0 {
				c.WaitLeader()
				c.waitBootstrapped(n)
			}
		}
		c.WaitMembers(c.opts.Nodes)
		return c
	}
	for _, n := range c.Nodes {
		c.Start(n)
	}
	c.Ready()
	return c
}

// Prepare makes a region without starting it. With Options.Gossip its
// Options.Nodes nodes are configured (bootstrap-expect, seeds) for the
// test to Start in any order, then Ready; otherwise AddNode starts nodes
// one by one, the first bootstrapping, the others joining through it.
func Prepare(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.LogLevel == hclog.NoLevel {
		opts.LogLevel = hclog.Warn
	}
	raw, err := region.GenerateKeyringFile("test1")
	if err != nil {
		t.Fatal(err)
	}
	kr, err := region.ParseKeyring(raw)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Region == "" {
		opts.Region = "test-region1"
	}
	if opts.Gossip && opts.BootstrapExpect == 0 {
		opts.BootstrapExpect = opts.Nodes
	}
	// The temporary directory is made before Close is registered: cleanups
	// run last-in first-out, so the nodes stop before their data goes.
	c := &Cluster{t: t, opts: opts, Region: opts.Region, Keyring: kr, base: t.TempDir(), log: &testLog{t: t}}
	c.nextID = max(opts.FirstNodeID-1, 0)
	// Registered before Close, so it runs after the nodes have stopped.
	t.Cleanup(c.log.end)
	t.Cleanup(c.Close)
	if opts.TLS {
		ca, err := tlsutil.NewCA("test CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, _, err := ca.PEM()
		if err != nil {
			t.Fatal(err)
		}
		c.CA, c.CAFile = ca, filepath.Join(c.base, "ca.pem")
		if err := os.WriteFile(c.CAFile, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Gossip {
		for i := 0; i < opts.Nodes; i++ {
			c.newNode()
		}
	}
	return c
}

func (c *Cluster) waitBootstrapped(n *Node) {
	c.t.Helper()
	Eventually(c.t, 15*time.Second, "the bootstrap admin", func() error {
		if done, err := n.N.API.Bootstrapped(); err != nil || !done {
			return fmt.Errorf("not bootstrapped yet (%v)", err)
		}
		return nil
	})
}

// Start starts a prepared (or stopped) node.
func (c *Cluster) Start(n *Node) {
	c.t.Helper()
	c.start(n)
	if n.conn == nil && c.AdminToken != "" {
		n.conn = c.Dial(n, c.AdminToken)
	}
}

// Ready waits until a gossip-formed region has a leader and its admin,
// learns the admin token, and waits until every started node is a member.
func (c *Cluster) Ready() {
	c.t.Helper()
	leader := c.WaitLeader()
	c.waitBootstrapped(leader)
	for _, n := range c.Nodes {
		raw, err := os.ReadFile(n.Cfg.AdminTokenFile)
		if err != nil {
			continue
		}
		tok := strings.TrimSpace(string(raw))
		if parts := strings.Split(tok, "."); len(parts) == 4 && leader.N.API.HasToken(parts[2]) {
			c.AdminToken = tok
		}
	}
	if c.AdminToken == "" {
		c.t.Fatal("no node holds the region's admin token")
	}
	for _, n := range c.Nodes {
		if n.conn == nil {
			n.conn = c.Dial(n, c.AdminToken)
		}
	}
	c.WaitMembers(len(c.Running()))
}

// GossipAddr is n's gossip address, a seed for other regions' nodes.
func (c *Cluster) GossipAddr(n *Node) string { return n.Cfg.GossipAddr }

// freeAddr picks a loopback address for a node that must keep it across
// restarts (TCP and UDP free: gossip uses both).
func freeAddr(t testing.TB) string {
	addr, err := testnet.FreeAddr(true)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// AddNode starts a new node: without gossip the first bootstraps and later
// ones join through the running nodes; with gossip it finds the region
// through the seeds and the leader adds it.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	n := c.newNode()
	c.start(n)
	if n.Cfg.Bootstrap {
		c.AdminToken = n.N.AdminToken()
	}
	n.conn = c.Dial(n, c.AdminToken)
	return n
}

// newNode configures a node without starting it.
func (c *Cluster) newNode() *Node {
	c.t.Helper()
	c.nextID++
	id := fmt.Sprintf("node%d", c.nextID)
	dir := filepath.Join(c.base, id)
	cfg := node.Config{
		Region:              c.Region,
		NodeID:              id,
		DataDir:             dir,
		GRPCAddr:            freeAddr(c.t),
		RaftAddr:            freeAddr(c.t),
		Keyring:             c.Keyring,
		PurgeAfter:          c.opts.PurgeAfter,
		MaintenanceInterval: 100 * time.Millisecond,
		HeartbeatTimeout:    300 * time.Millisecond,
		ElectionTimeout:     300 * time.Millisecond,
		LeaderLeaseTimeout:  150 * time.Millisecond,
		SnapshotThreshold:   c.opts.SnapshotThreshold,
		TrailingLogs:        c.opts.TrailingLogs,
		RaftLogStore:        c.opts.RaftLogStore,
	}
	if c.opts.Metrics {
		cfg.MetricsAddr = "127.0.0.1:0"
	}
	cfg.Audit = !c.opts.NoAudit
	cfg.AuditRetention = c.opts.AuditRetention
	cfg.AuditFailOpen = c.opts.AuditFailOpen
	if c.opts.TLS {
		cfg.TLS = c.IssueNodeCert(id, c.Region, dir, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	}
	if len(c.Nodes) < c.opts.OldNodes { // this node is one of the first OldNodes
		cfg.AdvertiseCommandVersion = 1
	}
	switch {
	case c.opts.Gossip:
		cfg.GossipAddr = freeAddr(c.t)
		cfg.FastGossip = true
		cfg.GossipKey = c.opts.GossipKey
		cfg.BootstrapExpect = c.opts.BootstrapExpect
		cfg.DeadNodeReapAfter = c.opts.DeadNodeReapAfter
		cfg.AdminTokenFile = filepath.Join(dir, "admin.token")
	case len(c.Nodes) == 0:
		cfg.Bootstrap = true
		cfg.AdminTokenFile = filepath.Join(dir, "admin.token")
	default:
		cfg.JoinToken = c.AdminToken
		for _, n := range c.Nodes {
			if n.N != nil {
				cfg.JoinAddrs = append(cfg.JoinAddrs, n.Cfg.GRPCAddr)
			}
		}
	}
	n := &Node{ID: id, Dir: dir, Cfg: cfg}
	c.Nodes = append(c.Nodes, n)
	return n
}

func (c *Cluster) start(n *Node) {
	c.t.Helper()
	for attempt := 0; ; attempt++ {
		err := c.TryStart(n)
		if err == nil {
			return
		}
		// A port reserved by freeAddr can be taken by another process
		// before the node binds it. A node that never ran can move.
		if !n.started && attempt < 5 && strings.Contains(err.Error(), "address already in use") {
			n.Cfg.GRPCAddr, n.Cfg.RaftAddr = freeAddr(c.t), freeAddr(c.t)
			if n.Cfg.GossipAddr != "" {
				n.Cfg.GossipAddr = freeAddr(c.t)
			}
			if n.Cfg.MetricsAddr != "" {
				n.Cfg.MetricsAddr = "127.0.0.1:0"
			}
			continue
		}
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
}

// TryStart starts a stopped node with its current Cfg and returns the error
// instead of failing the test.
func (c *Cluster) TryStart(n *Node) error {
	if c.opts.Gossip && !n.started {
		// Seeds are read now: the first node may have moved ports.
		n.Cfg.GossipSeeds = append([]string(nil), c.opts.Seeds...)
		if first := c.Nodes[0]; first != n {
			n.Cfg.GossipSeeds = append(n.Cfg.GossipSeeds, first.Cfg.GossipAddr)
		}
	}
	var out io.Writer = c.log
	if c.opts.LogSink != nil {
		out = io.MultiWriter(out, c.opts.LogSink)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: n.ID, Level: c.opts.LogLevel, Output: out})
	nn, err := node.Start(n.Cfg, logger)
	if err != nil {
		return err
	}
	n.N = nn
	n.started = true
	return nil
}

// testLog sends the nodes' logs to the test's log until the test ends.
// Some goroutines outlive a node's Close (memberlist's prober may still
// report the socket it found closed), and logging through t after the test
// has completed panics.
type testLog struct {
	t    testing.TB
	mu   sync.RWMutex
	done bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if !l.done {
		l.t.Logf("%s", p)
	}
	return len(p), nil
}

// end stops forwarding; it waits for writes in progress.
func (l *testLog) end() {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
}

// Stop stops a node abruptly (its data stays).
func (c *Cluster) Stop(n *Node) {
	c.t.Helper()
	if n.N == nil {
		return
	}
	if err := n.N.Close(); err != nil {
		c.t.Logf("stop %s: %v", n.ID, err)
	}
	n.N = nil
}

// Restart starts a stopped node again from its data directory, on the same
// addresses.
func (c *Cluster) Restart(n *Node) {
	c.t.Helper()
	n.Cfg.Bootstrap = false
	n.Cfg.JoinAddrs = nil
	c.start(n)
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		c.Stop(n)
	}
}

// IssueNodeCert writes a node certificate from c.CA into dir and returns
// the TLS files of a node using it for clients and peers.
func (c *Cluster) IssueNodeCert(id, region, dir string, notBefore, notAfter time.Time) tlsutil.Files {
	c.t.Helper()
	return WriteNodeCert(c.t, c.CA, c.CAFile, id, region, dir, notBefore, notAfter)
}

// WriteNodeCert issues a node certificate from ca into dir.
func WriteNodeCert(t testing.TB, ca *tlsutil.CA, caFile, id, region, dir string, notBefore, notAfter time.Time) tlsutil.Files {
	t.Helper()
	is, err := ca.Issue(id+"."+region, region, id, tlsutil.DefaultHosts, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	if err := os.WriteFile(cert, is.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, is.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return tlsutil.Files{CertFile: cert, KeyFile: key, ClientAuth: "verify-if-given", PeerCAFile: caFile, PeerCertFile: cert, PeerKeyFile: key}
}

// ClientTLS is the client side of Options.TLS: trust the cluster CA.
func (c *Cluster) ClientTLS() credentials.TransportCredentials {
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

// Dial opens a connection to n that sends token with every call (none when
// token is empty).
func (c *Cluster) Dial(n *Node, token string) *grpc.ClientConn {
	c.t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if c.opts.TLS {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(c.ClientTLS())}
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCreds(token)))
	}
	conn, err := grpc.NewClient(n.Cfg.GRPCAddr, opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	return conn
}

type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerCreds) RequireTransportSecurity() bool { return false }

// Conn returns a client connection to n's gRPC API, as the region admin. It is safe to use
// from any goroutine, also while n is stopped (calls fail UNAVAILABLE).
func (c *Cluster) Conn(n *Node) *grpc.ClientConn { return n.conn }

// Running returns the nodes that are up.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.N != nil {
			out = append(out, n)
		}
	}
	return out
}

// Eventually polls cond until it returns nil or the deadline passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitLeader waits until one running node leads and may serve reads.
func (c *Cluster) WaitLeader() *Node {
	c.t.Helper()
	var leader *Node
	Eventually(c.t, 15*time.Second, "a leader", func() error {
		leader = nil
		for _, n := range c.Running() {
			if n.N.Raft.IsLeader() {
				leader = n
				return nil
			}
		}
		return fmt.Errorf("no leader among %d running nodes", len(c.Running()))
	})
	return leader
}

// Followers returns the running nodes that are not the leader.
func (c *Cluster) Followers() []*Node {
	leader := c.WaitLeader()
	var out []*Node
	for _, n := range c.Running() {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

// WaitMembers waits until the leader's configuration has want voters and
// every one of them has registered its gRPC address.
func (c *Cluster) WaitMembers(want int) {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, fmt.Sprintf("%d registered members", want), func() error {
		leader := c.WaitLeader()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := pb.NewClusterServiceClient(c.Conn(leader)).Members(ctx, &pb.ListMembersRequest{})
		if err != nil {
			return err
		}
		got := 0
		for _, m := range resp.GetMembers() {
			if m.GetGrpcAddress() != "" && m.GetRaftRole() != "nonvoter" {
				got++
			}
		}
		if got != want {
			return fmt.Errorf("%d of %d members registered", got, want)
		}
		return nil
	})
}

// WaitConverged waits until every running node has applied the same index
// and holds an identical store.
func (c *Cluster) WaitConverged() {
	c.t.Helper()
	Eventually(c.t, 30*time.Second, "replicas to converge", func() error {
		var firstHash string
		var firstIdx uint64
		for i, n := range c.Running() {
			idx := n.N.FSM.AppliedIndex()
			h, err := n.N.Store.Hash()
			if err != nil {
				return err
			}
			if i == 0 {
				firstHash, firstIdx = h, idx
				continue
			}
			if idx != firstIdx || h != firstHash {
				return fmt.Errorf("%s at index %d hash %.12s, first node at %d hash %.12s", n.ID, idx, h, firstIdx, firstHash)
			}
		}
		return nil
	})
}
