// Package node assembles one MysteryBox node: the store, the FSM, Raft and
// the gRPC API, with start-up (bootstrap or join) and graceful shutdown.
// cmd/mysteryboxd fills its Config from flags; cluster/clustertest starts
// several in one process, so tests run exactly what production runs.
package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/api/server"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
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
}

// Node is a running MysteryBox node.
type Node struct {
	cfg    Config
	logger hclog.Logger

	Store *store.Store
	FSM   *fsm.FSM
	Raft  *cluster.Node
	API   *server.Server

	grpc     *grpc.Server
	lis      net.Listener
	grpcAddr string
	stopJoin context.CancelFunc
	served   chan struct{}
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
	}, raftAdapter{Node: n.Raft, fsm: n.FSM}, n.Store, cfg.Keyring, logger.Named("api"))
	if err != nil {
		return nil, err
	}
	n.Raft.OnLeader(n.API.RunLeaderTasks)

	n.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(4 << 20))
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
		go n.joinLoop(ctx)
	}
	ok = true
	logger.Info("node started", "region", cfg.Region, "node_id", cfg.NodeID, "grpc", n.grpcAddr, "raft", n.Raft.RaftAddr())
	return n, nil
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
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
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
	if n.stopJoin != nil {
		n.stopJoin()
	}
	if n.grpc != nil {
		n.grpc.Stop()
		<-n.served
		n.grpc = nil
	} else if n.lis != nil {
		n.lis.Close()
	}
	if n.API != nil {
		n.API.Close()
	}
	var errs []error
	if n.Raft != nil {
		errs = append(errs, n.Raft.Close())
		n.Raft = nil
	}
	if n.Store != nil {
		errs = append(errs, n.Store.Close())
		n.Store = nil
	}
	return errors.Join(errs...)
}
