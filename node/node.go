// Package node assembles one MysteryBox node: the store, the FSM, Raft and
// the gRPC API, with start-up (bootstrap or join) and graceful shutdown.
// cmd/mysteryboxd fills its Config from flags; cluster/clustertest starts
// several in one process, so tests run exactly what production runs.
package node

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/api/server"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/metrics"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
	"github.com/mysterybox/mysterybox/tlsutil"
)

// Config is everything one node needs.
type Config struct {
	Region  string
	NodeID  string
	DataDir string

	// GRPCAddr is the listen address; GRPCAdvertise what peers and clients
	// dial (default: the bound address).
	GRPCAddr      string
	GRPCAdvertise string
	RaftAddr      string
	RaftAdvertise string

	// Bootstrap starts a new region with this node as its only voter when
	// it has no Raft state. JoinAddrs are gRPC addresses of existing members
	// to join through otherwise.
	Bootstrap bool
	JoinAddrs []string
	// JoinToken authenticates the join request (a region admin token).
	JoinToken string
	// AdminTokenFile, with Bootstrap or BootstrapExpect: where the region's
	// first admin token is written (mode 0600) while the region has no admin
	// yet. Never rewritten once the region has one.
	AdminTokenFile string

	// Gossip: GossipAddr "" disables it. GossipSeeds are gossip addresses
	// of any nodes of any region. BootstrapExpect bootstraps the region once
	// that many of its nodes see each other and none has Raft state.
	GossipAddr        string
	GossipAdvertise   string
	GossipSeeds       []string
	GossipKey         []byte
	BootstrapExpect   int
	DeadNodeReapAfter time.Duration
	// FastGossip uses loopback timings (tests).
	FastGossip bool

	// AdvertiseCommandVersion overrides the command version this node
	// advertises (tests of mixed-version regions); 0 means fsm.CommandVersion.
	AdvertiseCommandVersion int

	// Audit records every call that reads a payload or changes state in
	// the replicated, hash-chained audit log.
	Audit          bool
	AuditFailOpen  bool
	AuditRetention time.Duration

	// TLS: the client-facing certificate and the cluster's mutual TLS
	// (zero value: plaintext).
	TLS tlsutil.Files

	// MetricsAddr serves Prometheus metrics on /metrics ("" disables).
	MetricsAddr string

	Keyring             *region.Keyring
	PurgeAfter          time.Duration
	MaintenanceInterval time.Duration

	// Raft tuning (zero: production defaults).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	// RaftLogStore: cluster.LogStoreWAL or LogStoreBoltDB ("" keeps the
	// data directory's, the WAL when new).
	RaftLogStore string
}

// Node is a running MysteryBox node.
type Node struct {
	cfg    Config
	logger hclog.Logger

	Store   *store.Store
	FSM     *fsm.FSM
	Raft    *cluster.Node
	API     *server.Server
	Gossip  *cluster.Gossip  // nil without gossip
	TLS     *tlsutil.Manager // nil without TLS
	Metrics *metrics.Metrics // nil without --metrics-addr

	grpc        *grpc.Server
	lis         net.Listener
	grpcAddr    string
	stopJoin    context.CancelFunc
	peerCreds   credentials.TransportCredentials
	metricsSrv  *http.Server
	metricsAddr string
	bg          sync.WaitGroup
	closeOnce   sync.Once
	closeErr    error
	stopAdmin   context.CancelFunc
	// pendingAdmin is this node's admin token (id and hash) while the
	// region has no admin yet.
	pendingAdmin atomic.Pointer[pendingAdmin]
	// bootstrap is bootstrap-expect's pending choice (discovery loop only).
	bootstrap  bootstrapChoice
	stopGossip context.CancelFunc
	adminToken string
	served     chan struct{}
}

// raftAdapter gives the API the FSM's applied index (which counts entries
// really applied, unlike raft.AppliedIndex).
type raftAdapter struct {
	*cluster.Node
	fsm *fsm.FSM
}

func (r raftAdapter) AppliedIndex() uint64 { return r.fsm.AppliedIndex() }

// Start opens the node's data and starts serving.
func Start(cfg Config, logger hclog.Logger) (*Node, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if cfg.Keyring == nil {
		return nil, errors.New("node: a keyring is required")
	}
	if cfg.Region == "" || cfg.NodeID == "" || cfg.DataDir == "" {
		return nil, errors.New("node: region, node id and data dir are required")
	}
	n := &Node{cfg: cfg, logger: logger, served: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			n.closeAll()
		}
	}()

	var err error
	n.lis, err = net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("node: gRPC listener on %s: %w", cfg.GRPCAddr, err)
	}
	n.grpcAddr = cfg.GRPCAdvertise
	if n.grpcAddr == "" {
		n.grpcAddr = n.lis.Addr().String()
	}

	var peerCreds credentials.TransportCredentials
	if cfg.TLS.Enabled() {
		n.TLS, err = tlsutil.New(cfg.TLS, cfg.Region, logger.Named("tls"))
		if err != nil {
			return nil, err
		}
		peerCreds = credentials.NewTLS(n.TLS.PeerClientConfig())
		n.peerCreds = peerCreds
	}

	n.Store, err = store.Open(filepath.Join(cfg.DataDir, "fsm"), logger.Named("store"))
	if err != nil {
		return nil, err
	}
	// Refuse a keyring that cannot open what is stored before Raft starts,
	// so a misconfigured node never takes part in the region.
	if err := server.CheckKeyring(n.Store, cfg.Keyring); err != nil {
		return nil, err
	}
	n.FSM, err = fsm.New(n.Store, logger.Named("fsm"))
	if err != nil {
		return nil, err
	}
	n.Raft, err = cluster.New(cluster.Config{
		NodeID:             cfg.NodeID,
		RaftBind:           cfg.RaftAddr,
		RaftAdvertise:      cfg.RaftAdvertise,
		DataDir:            filepath.Join(cfg.DataDir, "raft"),
		Bootstrap:          cfg.Bootstrap,
		HeartbeatTimeout:   cfg.HeartbeatTimeout,
		ElectionTimeout:    cfg.ElectionTimeout,
		LeaderLeaseTimeout: cfg.LeaderLeaseTimeout,
		SnapshotThreshold:  cfg.SnapshotThreshold,
		SnapshotInterval:   cfg.SnapshotInterval,
		TrailingLogs:       cfg.TrailingLogs,
		LogStore:           cfg.RaftLogStore,
		PeerTLSServer:      n.peerServerTLS(),
		PeerTLSClient:      n.peerClientTLS(),
		OpenCheckpoint: func(dir string) (cluster.CheckpointReader, error) {
			return store.OpenCheckpoint(dir, logger.Named("store"))
		},
	}, n.FSM, logger.Named("cluster"))
	if err != nil {
		return nil, err
	}
	n.API, err = server.New(server.Config{
		Region:              cfg.Region,
		NodeID:              cfg.NodeID,
		GRPCAddress:         n.grpcAddr,
		RaftAddress:         n.Raft.RaftAddr(),
		PurgeAfter:          cfg.PurgeAfter,
		MaintenanceInterval: cfg.MaintenanceInterval,
		PeerCreds:           peerCreds,
		IdentityGeneration:  n.FSM.IdentityGeneration,
		Audit:               cfg.Audit,
		AuditFailOpen:       cfg.AuditFailOpen,
		AuditRetention:      cfg.AuditRetention,
	}, raftAdapter{Node: n.Raft, fsm: n.FSM}, n.Store, cfg.Keyring, logger.Named("api"))
	if err != nil {
		return nil, err
	}
	n.Raft.OnLeader(n.API.RunLeaderTasks)

	if (cfg.Bootstrap || cfg.BootstrapExpect > 0) && cfg.AdminTokenFile != "" {
		if err := n.prepareAdminToken(); err != nil {
			return nil, err
		}
	}
	n.Raft.OnLeader(n.bootstrapAdminTask)
	if cfg.GossipAddr != "" {
		if err := n.startGossip(); err != nil {
			return nil, err
		}
	}
	unary := []grpc.UnaryServerInterceptor{n.API.UnaryInterceptor, n.API.AuditInterceptor}
	streams := []grpc.StreamServerInterceptor{n.API.StreamInterceptor, n.API.AuditStreamInterceptor}
	if cfg.MetricsAddr != "" {
		if err := n.startMetrics(); err != nil {
			return nil, err
		}
		unary = append([]grpc.UnaryServerInterceptor{n.Metrics.UnaryInterceptor}, unary...)
		streams = append([]grpc.StreamServerInterceptor{n.Metrics.StreamInterceptor}, streams...)
	}
	serverOpts := []grpc.ServerOption{grpc.MaxRecvMsgSize(4 << 20)}
	if n.TLS != nil && cfg.TLS.CertFile != "" {
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(n.TLS.ServerConfig())))
	}
	n.grpc = grpc.NewServer(append(serverOpts,
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(streams...),
	)...)
	n.API.Register(n.grpc)
	go func() {
		defer close(n.served)
		if err := n.grpc.Serve(n.lis); err != nil {
			logger.Error("gRPC server stopped", "error", err)
		}
	}()

	if len(cfg.JoinAddrs) > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		n.stopJoin = cancel
		n.goBackground(func() { n.joinLoop(ctx) })
	}
	ok = true
	logger.Info("node started", "region", cfg.Region, "node_id", cfg.NodeID, "grpc", n.grpcAddr, "raft", n.Raft.RaftAddr())
	return n, nil
}

// prepareAdminToken makes sure the bootstrap admin token file exists while
// the region has no admin (reusing one left by a crash before the admin was
// created). Whichever node leads creates the admin: from this node's pending
// token, or from one a peer of the region advertises in gossip (only its id
// and hash travel). A node whose token lost to another's removes its file.
func (n *Node) prepareAdminToken() error {
	done, err := n.API.Bootstrapped()
	if err != nil || done {
		return err
	}
	token, err := readOrCreateToken(n.cfg.AdminTokenFile, n.cfg.Region)
	if err != nil {
		return err
	}
	n.adminToken = token
	parts := strings.Split(token, ".")
	sum := sha256.Sum256([]byte(parts[3]))
	n.pendingAdmin.Store(&pendingAdmin{tokenID: parts[2], hash: sum[:]})
	ctx, cancel := context.WithCancel(context.Background())
	n.stopAdmin = cancel
	n.goBackground(func() { n.watchAdminBootstrap(ctx, parts[2]) })
	return nil
}

type pendingAdmin struct {
	tokenID string
	hash    []byte
}

// bootstrapAdminTask runs on the leader until the region has its admin.
func (n *Node) bootstrapAdminTask(ctx context.Context) {
	for ctx.Err() == nil {
		done, err := n.API.Bootstrapped()
		if err == nil && done {
			return
		}
		if p := n.choosePendingAdmin(); p != nil {
			applied, err := n.API.BootstrapAdmin(ctx, p.tokenID, p.hash)
			if err == nil {
				if applied {
					n.logger.Info("created the region's admin account", "token_id", p.tokenID)
				}
				return
			}
			n.logger.Warn("creating the region's admin failed; retrying", "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// choosePendingAdmin picks the pending admin token of the region's node
// with the smallest id: this node's own, or one advertised in gossip.
func (n *Node) choosePendingAdmin() *pendingAdmin {
	if n.Gossip == nil {
		return n.pendingAdmin.Load()
	}
	servers, err := n.Raft.Servers()
	if err != nil {
		return nil
	}
	return pickPendingAdmin(n.pendingAdmin.Load(), n.cfg.NodeID, n.cfg.Region, n.Gossip.Members(), servers)
}

// pickPendingAdmin chooses among own (this node's token, if any) and the
// tokens advertised in gossip by alive nodes of region that are in the
// Raft configuration at the address they advertise: the one of the
// smallest node id. Any holder of the gossip key, which all regions
// share, can advertise a token; only a member of the region's Raft
// configuration — which took a certificate of the region to enter, with
// mutual TLS — may name the region's admin.
func pickPendingAdmin(own *pendingAdmin, self, region string, members []cluster.GossipMember, servers []cluster.ServerInfo) *pendingAdmin {
	voterAt := map[string]string{}
	for _, s := range servers {
		voterAt[s.ID] = s.Address
	}
	best, bestID := own, self
	for _, m := range members {
		if m.Meta.Region != region || m.Meta.AdminTokenID == "" || m.Health != cluster.HealthAlive {
			continue
		}
		if addr, ok := voterAt[m.Meta.NodeID]; !ok || addr != m.Meta.RaftAddr {
			continue
		}
		if best == nil || m.Meta.NodeID < bestID {
			best, bestID = &pendingAdmin{tokenID: m.Meta.AdminTokenID, hash: m.Meta.AdminTokenHash}, m.Meta.NodeID
		}
	}
	return best
}

// watchAdminBootstrap waits until the region has its admin, then stops
// advertising this node's pending token, and removes the token file if
// another node's token was chosen.
func (n *Node) watchAdminBootstrap(ctx context.Context, tokenID string) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		done, err := n.API.Bootstrapped()
		if err != nil || !done {
			continue
		}
		n.pendingAdmin.Store(nil)
		if !n.API.HasToken(tokenID) {
			if err := os.Remove(n.cfg.AdminTokenFile); err == nil {
				n.logger.Info("the region's admin was created from another node's token; removed this node's admin token file", "file", n.cfg.AdminTokenFile)
			}
			n.adminToken = ""
		}
		return
	}
}

// readOrCreateToken returns the token in path, creating the file (0600)
// with a new token of region if it does not exist.
func readOrCreateToken(path, region string) (string, error) {
	if raw, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(raw))
		if !strings.HasPrefix(tok, "mbt1."+region+".") {
			return "", fmt.Errorf("node: %s does not hold a token of region %s", path, region)
		}
		return tok, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("node: read admin token file: %w", err)
	}
	tok := server.NewToken(region)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node: write admin token file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("node: write admin token file: %w", err)
	}
	return tok, nil
}

// AdminToken is the bootstrap admin token this node created or reused at
// start, or "" when the region already had its admin.
func (n *Node) AdminToken() string { return n.adminToken }

// startMetrics serves Prometheus metrics on cfg.MetricsAddr.
func (n *Node) startMetrics() error {
	src := metrics.Source{Region: n.cfg.Region, NodeID: n.cfg.NodeID, Raft: n.Raft, AppliedIndex: n.FSM.AppliedIndex, Store: n.Store}
	if n.Gossip != nil {
		src.Gossip = n.Gossip.Members
	}
	n.Metrics = metrics.New(src)
	n.FSM.SetObserver(n.Metrics)
	n.API.SetObserver(n.Metrics)
	lis, err := net.Listen("tcp", n.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("node: metrics listener on %s: %w", n.cfg.MetricsAddr, err)
	}
	n.metricsAddr = lis.Addr().String()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(n.Metrics.Registry, promhttp.HandlerOpts{Registry: n.Metrics.Registry}))
	n.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go n.metricsSrv.Serve(lis)
	return nil
}

// MetricsAddr is where /metrics is served ("" without metrics).
func (n *Node) MetricsAddr() string { return n.metricsAddr }

func (n *Node) commandVersion() int {
	if n.cfg.AdvertiseCommandVersion > 0 {
		return n.cfg.AdvertiseCommandVersion
	}
	return fsm.CommandVersion
}

func (n *Node) peerServerTLS() *tls.Config {
	if n.TLS == nil || n.cfg.TLS.PeerCertFile == "" {
		return nil
	}
	return n.TLS.PeerServerConfig()
}

// peerClientTLS is the TLS of Raft connections and of the checks made
// before a node enters Raft (tlsutil.Manager.RaftClientConfig).
func (n *Node) peerClientTLS() *tls.Config {
	if n.TLS == nil || n.cfg.TLS.PeerCertFile == "" {
		return nil
	}
	return n.TLS.RaftClientConfig()
}

// ReloadTLS re-reads the certificates (SIGHUP); new connections use them.
func (n *Node) ReloadTLS() error {
	if n.TLS == nil {
		return nil
	}
	return n.TLS.Reload()
}

// GRPCAddr is the address clients and peers reach this node's API at.
func (n *Node) GRPCAddr() string { return n.grpcAddr }

// joinLoop asks the given members to add this node until one succeeds. A
// node that is already a member is re-registered with its current
// addresses, which is harmless.
func (n *Node) joinLoop(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		for _, addr := range n.cfg.JoinAddrs {
			if err := n.joinVia(ctx, addr); err != nil {
				if ctx.Err() != nil {
					return
				}
				if attempt%10 == 0 {
					n.logger.Warn("join attempt failed; retrying", "via", addr, "error", err)
				}
				continue
			}
			n.logger.Info("joined the region", "via", addr)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

func (n *Node) joinVia(ctx context.Context, addr string) error {
	creds := credentials.TransportCredentials(insecure.NewCredentials())
	if n.peerCreds != nil {
		creds = n.peerCreds
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if n.cfg.JoinToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+n.cfg.JoinToken)
	}
	_, err = pb.NewClusterServiceClient(conn).Join(ctx, &pb.JoinRequest{
		NodeId: n.cfg.NodeID, RaftAddress: n.Raft.RaftAddr(), GrpcAddress: n.grpcAddr,
	})
	return err
}

// Shutdown drains the node: a leader hands leadership to a follower first,
// in-flight calls finish (up to timeout), then Raft and the store close.
func (n *Node) Shutdown(timeout time.Duration) error {
	if n.Raft != nil && n.Raft.AcceptsWrites() {
		if servers, err := n.Raft.Servers(); err == nil && voters(servers) > 1 {
			if err := n.Raft.TransferLeadership(""); err != nil {
				n.logger.Warn("leadership transfer before shutdown failed", "error", err)
			} else {
				n.logger.Info("transferred leadership before shutdown")
			}
		}
	}
	if n.Gossip != nil {
		if err := n.Gossip.Leave(2 * time.Second); err != nil {
			n.logger.Warn("leaving gossip", "error", err)
		}
	}
	if n.grpc != nil {
		done := make(chan struct{})
		go func() {
			n.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(timeout):
			n.logger.Warn("in-flight calls did not finish in time; stopping")
			n.grpc.Stop()
		}
	}
	return n.closeAll()
}

func voters(servers []cluster.ServerInfo) int {
	c := 0
	for _, s := range servers {
		if s.Voter {
			c++
		}
	}
	return c
}

// Close stops the node at once (as a crash would, minus the data loss).
func (n *Node) Close() error { return n.closeAll() }

func (n *Node) closeAll() error {
	n.closeOnce.Do(func() {
		// Background loops first: they use everything below.
		for _, stop := range []context.CancelFunc{n.stopJoin, n.stopAdmin, n.stopGossip} {
			if stop != nil {
				stop()
			}
		}
		n.bg.Wait()
		if n.Gossip != nil {
			n.Gossip.Close()
		}
		if n.grpc != nil {
			n.grpc.Stop()
			<-n.served
		} else if n.lis != nil {
			n.lis.Close()
		}
		if n.API != nil {
			n.API.Close()
		}
		if n.metricsSrv != nil {
			n.metricsSrv.Close()
		}
		var errs []error
		if n.Raft != nil {
			errs = append(errs, n.Raft.Close())
		}
		if n.Store != nil {
			errs = append(errs, n.Store.Close())
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// goBackground runs fn in a goroutine that closeAll waits for.
func (n *Node) goBackground(fn func()) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		fn()
	}()
}
