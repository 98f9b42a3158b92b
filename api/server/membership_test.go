package server

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
)

// membersRaft is a soloRaft with a configurable Raft configuration; each
// RemoveServer records whether the node's tombstone was in place by then.
type membersRaft struct {
	*soloRaft
	s             *Server
	members       []cluster.ServerInfo
	removeFails   bool
	removedMarked []bool
}

func (r *membersRaft) Servers() ([]cluster.ServerInfo, error) { return r.members, nil }

func (r *membersRaft) RemoveServer(id string) error {
	r.removedMarked = append(r.removedMarked, r.s.Removed(id))
	if r.removeFails {
		return errors.New("raft: leadership lost while committing log")
	}
	var out []cluster.ServerInfo
	for _, m := range r.members {
		if m.ID != id {
			out = append(out, m)
		}
	}
	r.members = out
	return nil
}

// TestRemoveNodeMarksTheNodeBeforeRaftRemovesIt: a leader removing itself
// stops leading the moment Raft commits the removal, so a tombstone
// proposed afterwards was lost and discovery added the node straight back.
// The tombstone now comes first; a retry after Raft removed the node still
// gets its tombstone; discovery never clears one; an id nobody knows is
// NOT_FOUND.
func TestRemoveNodeMarksTheNodeBeforeRaftRemovesIt(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	r := &membersRaft{soloRaft: reg.r, s: reg.s, members: []cluster.ServerInfo{
		{ID: "node-1", Address: "10.0.0.1:7001", Voter: true, Leader: true},
		{ID: "node-2", Address: "10.0.0.2:7001", Voter: true},
		{ID: "node-3", Address: "10.0.0.3:7001", Voter: true},
	}}
	reg.s.raft = r
	ctx := context.Background()
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		reg.s.EnsureRegistered(ctx, id, "10.0.0."+id[5:]+":7001", "10.0.0."+id[5:]+":7000", "")
	}
	clusters := &clusterService{s: reg.s}

	if _, err := clusters.RemoveNode(adminCtx, &pb.RemoveNodeRequest{NodeId: "node-1"}); err != nil {
		t.Fatalf("the leader removing itself: %v", err)
	}
	if len(r.removedMarked) != 1 || !r.removedMarked[0] {
		t.Fatalf("Raft removed the node before its tombstone was written (%v)", r.removedMarked)
	}
	// Discovery, from a view of the configuration before the removal,
	// re-registers the node: the tombstone stays.
	reg.s.EnsureRegistered(ctx, "node-1", "10.0.0.1:7001", "10.0.0.1:7000", "10.0.0.1:7002")
	if !reg.s.Removed("node-1") {
		t.Fatal("discovery's registration cleared a removal tombstone")
	}

	// Raft's removal fails (leadership lost): the tombstone is there, and
	// the operator's retry, with the node out of Raft by then, succeeds.
	r.removeFails = true
	if _, err := clusters.RemoveNode(adminCtx, &pb.RemoveNodeRequest{NodeId: "node-2"}); err == nil {
		t.Fatal("a failed Raft removal reported success")
	}
	r.removeFails = false
	r.members = r.members[1:] // node-3: the removal did commit after all
	if r.members[0].ID != "node-3" {
		t.Fatalf("setup: members %v", r.members)
	}
	calls := len(r.removedMarked)
	if _, err := clusters.RemoveNode(adminCtx, &pb.RemoveNodeRequest{NodeId: "node-2"}); err != nil {
		t.Fatalf("retry of a removal Raft completed: %v", err)
	}
	if len(r.removedMarked) != calls {
		t.Fatal("the retry asked Raft to remove a node that is no longer a member")
	}
	if !reg.s.Removed("node-2") {
		t.Fatal("node-2 has no tombstone")
	}
	if _, err := clusters.RemoveNode(adminCtx, &pb.RemoveNodeRequest{NodeId: "node-9"}); status.Code(err) != codes.NotFound {
		t.Fatalf("removing an unknown node: %v, want NOT_FOUND", err)
	}
}

// gossipWith is a gossip view of the region's own node and more.
type gossipWith []cluster.GossipMember

func (g gossipWith) Members() []cluster.GossipMember {
	return append([]cluster.GossipMember{{Meta: cluster.NodeMeta{NodeID: "node-1", Region: "test1", CommandVersion: fsm.CommandVersion}, Health: cluster.HealthAlive}}, g...)
}
func (gossipWith) Addr() string { return "" }

// TestJoinRefusesANodeOfAnotherCluster: an explicit join (or a node's
// --join-raft, retried on every start) of a node that gossip shows in
// another cluster of the region name is refused, as discovery refuses it.
func TestJoinRefusesANodeOfAnotherCluster(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	ours, err := reg.s.ClusterID()
	if err != nil || ours == "" {
		t.Fatalf("cluster id %q (%v)", ours, err)
	}
	alive := func(meta cluster.NodeMeta) cluster.GossipMember {
		meta.Region = "test1"
		return cluster.GossipMember{Meta: meta, Health: cluster.HealthAlive}
	}
	reg.s.SetDirectory(gossipWith{
		alive(cluster.NodeMeta{NodeID: "node-7", HasState: true, ClusterID: "cluster-other"}),
		alive(cluster.NodeMeta{NodeID: "node-8", HasState: true, LeaderID: "node-9"}),
		alive(cluster.NodeMeta{NodeID: "node-5", HasState: true, ClusterID: ours}),
	})
	clusters := &clusterService{s: reg.s}
	join := func(id string) error {
		_, err := clusters.Join(adminCtx, &pb.JoinRequest{NodeId: id, RaftAddress: "10.0.0.7:7001", GrpcAddress: "10.0.0.7:7000"})
		return err
	}
	for _, id := range []string{"node-7", "node-8"} {
		if err := join(id); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "another cluster") {
			t.Errorf("join of %s, of another cluster: %v, want FAILED_PRECONDITION", id, err)
		}
	}
	// This cluster's nodes, and nodes gossip does not know, reach Raft
	// (whose fake refuses every change).
	for _, id := range []string{"node-5", "node-6"} {
		if err := join(id); err == nil || status.Code(err) == codes.FailedPrecondition {
			t.Errorf("join of %s: %v, want the fake Raft's refusal", id, err)
		}
	}
}
