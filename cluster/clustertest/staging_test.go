package clustertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

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
	// Leadership cannot go to it: its campaign would only unseat the
	// leader, since no voter would vote for it.
	if _, err := pb.NewClusterServiceClient(c.Conn(leader)).TransferLeadership(ctx, &pb.TransferLeadershipRequest{NodeId: n.ID}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not a voter") {
		t.Fatalf("leadership transfer to a non-voter: %v, want FAILED_PRECONDITION", err)
	}
	if !leader.N.Raft.IsLeader() {
		t.Fatal("the leader lost leadership to a refused transfer")
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
	// Its own store holds the write made while it was out of reach (a
	// node counts as caught up once its log has an entry; it applies it
	// right after).
	n.conn = c.Dial(n, c.AdminToken)
	Eventually(t, 5*time.Second, n.ID+" to serve the write made before it caught up", func() error {
		stale := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale")
		got, err := pb.NewSecretVersionServiceClient(c.Conn(n)).Get(stale, &pb.GetSecretVersionRequest{Id: v.GetMetadata().GetId()})
		if err == nil && got.GetMetadata().GetId() != v.GetMetadata().GetId() {
			err = fmt.Errorf("got version %s", got.GetMetadata().GetId())
		}
		return err
	})
	st, err := pb.NewClusterServiceClient(c.Conn(leader)).Status(ctxT(t), &pb.ClusterStatusRequest{})
	if err != nil || st.GetVoters() != 4 {
		t.Fatalf("status after the promotion: %d voters (%v), want 4", st.GetVoters(), err)
	}
}

// A node removed and added again is a new member: what it acknowledged
// before says nothing of its log now (it may be a wiped node, or behind a
// port that no longer answers). Promoted on that old progress, it became a
// voter at once, without acknowledging anything.
func TestReaddedNodeMustCatchUpAgain(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	setup(t, c, leader)
	f := c.Followers()[0]
	cl := pb.NewClusterServiceClient(c.Conn(leader))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Its progress as a voter is recorded up to the leader's last entry.
	Eventually(t, 5*time.Second, f.ID+" to apply everything", func() error {
		if got, want := f.N.FSM.AppliedIndex(), leader.N.FSM.AppliedIndex(); got < want {
			return fmt.Errorf("applied %d of %d", got, want)
		}
		return nil
	})
	if _, err := cl.RemoveNode(ctx, &pb.RemoveNodeRequest{NodeId: f.ID}); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, f.Cfg.RaftAddr)
	if _, err := cl.Join(ctx, &pb.JoinRequest{NodeId: f.ID, RaftAddress: g.addr(), GrpcAddress: f.Cfg.GRPCAddr}); err != nil {
		t.Fatal(err)
	}
	// Ten promotion checks (one per heartbeat timeout, 300 ms here), with
	// nothing acknowledged since the join.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		if role, err := raftRole(ctx, c, leader, f.ID); err != nil || role != "nonvoter" {
			t.Fatalf("%s, added again behind a closed port: role %q (%v), want nonvoter", f.ID, role, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.open()
	Eventually(t, 30*time.Second, f.ID+" to become a voter once it answers", func() error {
		role, err := raftRole(ctx, c, leader, f.ID)
		if err == nil && role == "nonvoter" {
			err = errors.New("still a non-voter")
		}
		return err
	})
}

// Leadership moves while a node is staged: the new leader, which did not
// add it and has no record of its progress, learns that from its own
// replication and promotes it once it answers.
func TestNewLeaderPromotesANodeTheOldOneStaged(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	old := c.WaitLeader()
	setup(t, c, old)
	n := c.newNode()
	n.Cfg.JoinAddrs = nil
	c.start(n)
	g := newGate(t, n.Cfg.RaftAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pb.NewClusterServiceClient(c.Conn(old)).Join(ctx, &pb.JoinRequest{NodeId: n.ID, RaftAddress: g.addr(), GrpcAddress: n.Cfg.GRPCAddr}); err != nil {
		t.Fatal(err)
	}
	next := c.Followers()[0]
	if _, err := pb.NewClusterServiceClient(c.Conn(old)).TransferLeadership(ctx, &pb.TransferLeadershipRequest{NodeId: next.ID}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, next.ID+" to lead", func() error {
		if !next.N.Raft.IsLeader() {
			return errors.New("not yet")
		}
		return nil
	})
	if role, err := raftRole(ctx, c, next, n.ID); err != nil || role != "nonvoter" {
		t.Fatalf("%s under the new leader, before it answers: role %q (%v), want nonvoter", n.ID, role, err)
	}
	g.open()
	Eventually(t, 30*time.Second, "the new leader to promote "+n.ID, func() error {
		role, err := raftRole(ctx, c, next, n.ID)
		if err == nil && role == "nonvoter" {
			err = errors.New("still a non-voter")
		}
		return err
	})
	if !next.N.Raft.IsLeader() {
		t.Fatalf("leadership moved again during the test; %s was not the one to promote", next.ID)
	}
}
