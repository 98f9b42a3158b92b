package clustertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// gate is a TCP forwarder to upstream that holds every connection it
// accepts, unanswered, until it is opened: a node that cannot be reached
// yet, the way one still receiving its snapshot cannot acknowledge.
type gate struct {
	ln     net.Listener
	opened chan struct{}
	once   sync.Once
}

func newGate(t *testing.T, upstream string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, opened: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.forward(c, upstream)
		}
	}()
	return g
}

func (g *gate) forward(c net.Conn, upstream string) {
	defer c.Close()
	<-g.opened
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
}

func (g *gate) open()        { g.once.Do(func() { close(g.opened) }) }
func (g *gate) addr() string { return g.ln.Addr().String() }

func raftRole(ctx context.Context, c *Cluster, via *Node, id string) (string, error) {
	resp, err := pb.NewClusterServiceClient(c.Conn(via)).Members(ctx, &pb.ListMembersRequest{})
	if err != nil {
		return "", err
	}
	for _, m := range resp.GetMembers() {
		if m.GetNodeId() == id {
			return m.GetRaftRole(), nil
		}
	}
	return "", fmt.Errorf("%s is not a member", id)
}

// A node joining a region that has lost a voter must not stop its writes:
// it enters as a non-voter, outside the quorum, and becomes a voter only
// once it has caught up. Added as a voter straight away, it made four
// voters with two of them live: the join itself could not commit, and
// nothing else could until the newcomer answered.
func TestNewNodeVotesOnlyOnceCaughtUp(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	c.Stop(c.Followers()[1]) // a dead voter, not removed: two of three live

	n := c.newNode()
	n.Cfg.JoinAddrs = nil // joined below, at an address that does not answer yet
	c.start(n)
	g := newGate(t, n.Cfg.RaftAddr)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pb.NewClusterServiceClient(c.Conn(leader)).Join(ctx, &pb.JoinRequest{NodeId: n.ID, RaftAddress: g.addr(), GrpcAddress: n.Cfg.GRPCAddr}); err != nil {
		t.Fatalf("join of a node that has not caught up, in a region with a dead voter: %v", err)
	}
	v, err := pb.NewSecretVersionServiceClient(c.Conn(leader)).Create(ctx, &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: secret.GetMetadata().GetId()}, Spec: &pb.SecretVersionSpec{Payload: payload("password", "v2")}},
	})
	if err != nil {
		t.Fatalf("write after the join: %v", err)
	}
	if role, err := raftRole(ctx, c, leader, n.ID); err != nil || role != "nonvoter" {
		t.Fatalf("%s before it has caught up: role %q (%v), want nonvoter", n.ID, role, err)
	}

	g.open()
	Eventually(t, 30*time.Second, n.ID+" to become a voter once caught up", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		role, err := raftRole(ctx, c, leader, n.ID)
		if err != nil {
			return err
		}
		if role == "nonvoter" {
			return fmt.Errorf("still a non-voter (applied %d)", n.N.FSM.AppliedIndex())
		}
		return nil
	})
	// Its own store holds the write made while it was out of reach.
	n.conn = c.Dial(n, c.AdminToken)
	stale := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale")
	got, err := pb.NewSecretVersionServiceClient(c.Conn(n)).Get(stale, &pb.GetSecretVersionRequest{Id: v.GetMetadata().GetId()})
	if err != nil || got.GetMetadata().GetId() != v.GetMetadata().GetId() {
		t.Fatalf("read of the version written before %s caught up: %v %v", n.ID, got, err)
	}
	st, err := pb.NewClusterServiceClient(c.Conn(leader)).Status(ctxT(t), &pb.ClusterStatusRequest{})
	if err != nil || st.GetVoters() != 4 {
		t.Fatalf("status after the promotion: %d voters (%v), want 4", st.GetVoters(), err)
	}
}
