package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/store"
)

// Metadata keys of the API.
const (
	mdForwarded   = "x-mysterybox-forwarded"
	mdIdempotency = "x-idempotency-key"
	mdConsistency = "x-consistency"
	mdAuth        = "authorization"
	mdRequestID   = "x-request-id"
)

// forwardedKeys are the incoming metadata keys a forwarded call carries on.
var forwardedKeys = []string{mdAuth, mdIdempotency, mdConsistency, mdRequestID}

// forwarder sends calls that this node cannot serve to the leader, over the
// public API itself: the same method, the same request, one hop.
type forwarder struct {
	s      *Server
	logger hclog.Logger
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
}

func newForwarder(s *Server, logger hclog.Logger) *forwarder {
	return &forwarder{s: s, logger: logger, conns: map[string]*grpc.ClientConn{}}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for addr, c := range f.conns {
		c.Close()
		delete(f.conns, addr)
	}
}

func (f *forwarder) conn(addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(f.s.peerCreds()))
	if err != nil {
		return nil, err
	}
	f.conns[addr] = c
	return c, nil
}

// leaderWait bounds how long a call waits for an election to produce a
// leader before failing UNAVAILABLE: long enough to ride out an ordinary
// election, short enough for a client to try another node.
const leaderWait = 2 * time.Second

// leaderAddress returns the leader's gRPC address, from the replicated node
// registry, waiting up to leaderWait (or the call's deadline) for one.
func (f *forwarder) leaderAddress(ctx context.Context) (string, error) {
	leaderID, _ := f.s.raft.Leader()
	if leaderID == "" {
		deadline := time.NewTimer(leaderWait)
		defer deadline.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for leaderID == "" {
			select {
			case <-ctx.Done():
				return "", status.FromContextError(ctx.Err()).Err()
			case <-deadline.C:
				return "", status.Error(codes.Unavailable, "no leader in this region right now; retry")
			case <-tick.C:
				leaderID, _ = f.s.raft.Leader()
			}
		}
	}
	if leaderID == f.s.cfg.NodeID {
		return "", status.Error(codes.Unavailable, "this node is becoming leader; retry")
	}
	return f.lookupLeaderAddr(leaderID)
}

// lookupLeaderAddr finds a node's gRPC address: gossip metadata first (it
// follows a node that moved), then the replicated registry (which covers
// nodes without gossip).
func (f *forwarder) lookupLeaderAddr(leaderID string) (string, error) {
	if f.s.dir != nil {
		for _, m := range f.s.dir.Members() {
			if m.Meta.Region == f.s.cfg.Region && m.Meta.NodeID == leaderID && m.Meta.GRPCAddr != "" && m.Health != cluster.HealthDead && m.Health != cluster.HealthLeft {
				return m.Meta.GRPCAddr, nil
			}
		}
	}
	var addr string
	err := f.s.store.Read(func(v *store.View) error {
		n, err := v.Node(leaderID)
		if err != nil {
			return err
		}
		addr = n.GetGrpcAddress()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) || (err == nil && addr == "") {
		return "", status.Errorf(codes.Unavailable, "the gRPC address of leader %s is not known here yet; retry", leaderID)
	}
	if err != nil {
		return "", toStatus(err)
	}
	return addr, nil
}

// forward invokes the current call's method on the leader and fills out.
func (f *forwarder) forward(ctx context.Context, req, out proto.Message) error {
	in, _ := metadata.FromIncomingContext(ctx)
	if len(in.Get(mdForwarded)) > 0 {
		return status.Error(codes.Unavailable, "forwarded call reached a node that is not the leader (leadership is changing); retry")
	}
	method, ok := grpc.Method(ctx)
	if !ok {
		return status.Error(codes.Internal, "cannot forward: method unknown")
	}
	addr, err := f.leaderAddress(ctx)
	if err != nil {
		return err
	}
	conn, err := f.conn(addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "cannot reach leader at %s: %v", addr, err)
	}
	outMD := metadata.Pairs(mdForwarded, "1")
	for _, k := range forwardedKeys {
		if v := in.Get(k); len(v) > 0 {
			outMD.Set(k, v...)
		}
	}
	if f.s.obs != nil {
		f.s.obs.Forwarded(method)
	}
	noteForwarded(ctx)
	err = conn.Invoke(metadata.NewOutgoingContext(ctx, outMD), method, req, out)
	if err != nil {
		if st, ok := status.FromError(err); ok {
			return st.Err()
		}
		return status.Errorf(codes.Unavailable, "forwarding to leader at %s: %v", addr, err)
	}
	return nil
}
