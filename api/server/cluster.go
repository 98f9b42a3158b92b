package server

import (
	"context"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

type clusterService struct {
	pb.UnimplementedClusterServiceServer
	s *Server
}

// regionAdmin authenticates the call and tells whether its account
// administers the region. Status and Members answer any account of the
// region with what a client needs to find the nodes and the leader
// (SPEC: the client learns the region's nodes from ClusterService, whatever
// its roles), and region admins with the Raft details too.
func (s *Server) regionAdmin(ctx context.Context) (bool, error) {
	admin := false
	err := s.readAuthorized(ctx, access{}, func(_ *store.View, c *caller) error {
		admin = c.has(permRegionAdmin, []string{s.cfg.Region})
		return nil
	})
	return admin, toStatus(err)
}

// Status describes this node; it is always answered locally. An account
// that does not administer the region gets the node and the leader only.
func (x *clusterService) Status(ctx context.Context, _ *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	s := x.s
	admin, err := s.regionAdmin(ctx)
	if err != nil {
		return nil, err
	}
	leaderID, _ := s.raft.Leader()
	out := &pb.ClusterStatusResponse{Region: s.cfg.Region, NodeId: s.cfg.NodeID, LeaderId: leaderID}
	if admin {
		stats := s.raft.Stats()
		out.RaftState = lower(stats["state"])
		out.Term = parseUint(stats["term"])
		out.CommitIndex = parseUint(stats["commit_index"])
		out.AppliedIndex = s.raft.AppliedIndex()
		out.LastLogIndex = parseUint(stats["last_log_index"])
	}
	if leaderID != "" {
		_ = s.store.Read(func(v *store.View) error {
			if n, err := v.Node(leaderID); err == nil {
				out.LeaderGrpcAddress = n.GetGrpcAddress()
			}
			return nil
		})
	}
	if servers, err := s.raft.Servers(); err == nil && admin {
		for _, sv := range servers {
			if sv.Voter {
				out.Voters++
			}
		}
	}
	return out, nil
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func parseUint(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// Members lists the region's Raft configuration with each node's addresses
// and, where the node answers within a second, its applied index. An
// account that does not administer the region gets each node's id, role,
// gRPC address and health: enough for a client to fail over.
func (x *clusterService) Members(ctx context.Context, req *pb.ListMembersRequest) (*pb.ListMembersResponse, error) {
	s := x.s
	admin, err := s.regionAdmin(ctx)
	if err != nil {
		return nil, err
	}
	servers, err := s.raft.Servers()
	if err != nil {
		return nil, toStatus(err)
	}
	nodes := map[string]*fsmpb.NodeRecord{}
	_ = s.store.Read(func(v *store.View) error {
		recs, err := v.Nodes()
		for _, n := range recs {
			nodes[n.GetNodeId()] = n
		}
		return err
	})
	gossip := map[string]cluster.GossipMember{}
	if s.dir != nil {
		for _, gm := range s.dir.Members() {
			if gm.Meta.Region == s.cfg.Region {
				gossip[gm.Meta.NodeID] = gm
			}
		}
	}
	out := &pb.ListMembersResponse{}
	var wg sync.WaitGroup
	for _, sv := range servers {
		m := &pb.Member{NodeId: sv.ID, Region: s.cfg.Region, RaftAddress: sv.Address, Health: "unknown"}
		switch {
		case sv.Leader:
			m.RaftRole = "leader"
		case sv.Voter:
			m.RaftRole = "follower"
		default:
			m.RaftRole = "nonvoter"
		}
		if n, ok := nodes[sv.ID]; ok {
			m.GrpcAddress = n.GetGrpcAddress()
		}
		if gm, ok := gossip[sv.ID]; ok {
			m.Health = gm.Health
			if gm.Meta.GRPCAddr != "" {
				m.GrpcAddress = gm.Meta.GRPCAddr
			}
		}
		out.Members = append(out.Members, m)
		if !admin {
			m.RaftAddress = ""
			continue
		}
		if sv.ID == s.cfg.NodeID {
			m.AppliedIndex = s.raft.AppliedIndex()
			continue
		}
		if m.GrpcAddress == "" {
			continue
		}
		wg.Add(1)
		go func(m *pb.Member) {
			defer wg.Done()
			m.AppliedIndex = peerAppliedIndex(ctx, m.GrpcAddress, s.peerCreds())
		}(m)
	}
	wg.Wait()
	return out, nil
}

// peerAppliedIndex asks a peer for its status; 0 when it does not answer.
func peerAppliedIndex(ctx context.Context, addr string, creds credentials.TransportCredentials) uint64 {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return 0
	}
	defer conn.Close()
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if auth := md.Get(mdAuth); len(auth) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, mdAuth, auth[0])
		}
	}
	st, err := pb.NewClusterServiceClient(conn).Status(ctx, &pb.ClusterStatusRequest{})
	if err != nil {
		return 0
	}
	return st.GetAppliedIndex()
}

// Regions lists every region gossip knows, with its nodes and leader (the
// node of the region that says it leads, in the highest term).
func (x *clusterService) Regions(ctx context.Context, _ *pb.ListRegionsRequest) (*pb.ListRegionsResponse, error) {
	s := x.s
	if err := s.check(ctx, s.regionChain()); err != nil {
		return nil, err
	}
	if s.dir == nil {
		return nil, status.Error(codes.FailedPrecondition, "gossip is not enabled on this node (--gossip-addr): it knows only its own region")
	}
	out := &pb.ListRegionsResponse{}
	byName := map[string]*pb.Region{}
	terms := map[string]uint64{}
	for _, m := range s.dir.Members() {
		r, ok := byName[m.Meta.Region]
		if !ok {
			r = &pb.Region{Name: m.Meta.Region}
			byName[m.Meta.Region] = r
			out.Regions = append(out.Regions, r)
		}
		r.Nodes = append(r.Nodes, &pb.RegionNode{NodeId: m.Meta.NodeID, GrpcAddress: m.Meta.GRPCAddr, Health: m.Health})
		if m.Meta.Leader && m.Health == cluster.HealthAlive && m.Meta.Term >= terms[m.Meta.Region] {
			terms[m.Meta.Region] = m.Meta.Term
			r.LeaderId, r.LeaderGrpcAddress = m.Meta.NodeID, m.Meta.GRPCAddr
		}
	}
	return out, nil
}

// Join adds a node to the region and records its addresses. It enters as a
// non-voter; the leader promotes it once it has caught up.
func (x *clusterService) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if err := validateID("node_id", req.GetNodeId()); err != nil {
		return nil, err
	}
	if req.GetRaftAddress() == "" {
		return nil, invalid("raft_address", "is required")
	}
	if req.GetGrpcAddress() == "" {
		return nil, invalid("grpc_address", "is required")
	}
	s := x.s
	if !s.raft.AcceptsWrites() {
		out := &pb.JoinResponse{}
		return out, s.fwd.forward(ctx, req, out)
	}
	g, err := s.leaderCheck(ctx, s.regionChain())
	if err != nil {
		return nil, err
	}
	if !s.registry.TryLock() {
		return nil, errRestoring
	}
	defer s.registry.Unlock()
	if err := s.sameCluster(req.GetNodeId()); err != nil {
		return nil, err
	}
	if err := s.raft.AddNode(req.GetNodeId(), req.GetRaftAddress()); err != nil {
		return nil, toStatus(err)
	}
	node := &fsmpb.NodeRecord{NodeId: req.GetNodeId(), RaftAddress: req.GetRaftAddress(), GrpcAddress: req.GetGrpcAddress()}
	if _, err := s.propose(ctx, req, &fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: node}}}, g); err != nil {
		return nil, err
	}
	s.logger.Info("node joined", "node_id", req.GetNodeId(), "raft_address", req.GetRaftAddress(), "grpc_address", req.GetGrpcAddress())
	members, err := x.Members(ctx, &pb.ListMembersRequest{})
	if err != nil {
		return nil, err
	}
	return &pb.JoinResponse{Members: members.GetMembers()}, nil
}

// sameCluster refuses to add a node that gossip shows as part of another
// cluster of this region name (cluster.NodeMeta.OtherCluster): joining it
// would mix two Raft histories. Without gossip, or for a node gossip does
// not know, there is nothing to check.
func (s *Server) sameCluster(nodeID string) error {
	if s.dir == nil {
		return nil
	}
	servers, err := s.raft.Servers()
	if err != nil {
		return toStatus(err)
	}
	ours, isOurs, err := s.ClusterView(servers)
	if err != nil {
		return toStatus(err)
	}
	for _, m := range s.dir.Members() {
		if m.Meta.Region == s.cfg.Region && m.Meta.NodeID == nodeID && m.Meta.OtherCluster(ours, isOurs) {
			return status.Errorf(codes.FailedPrecondition, "node %s belongs to another cluster of region %s (cluster id %q, following leader %q; this cluster is %q): wipe its data directory before it joins", nodeID, s.cfg.Region, m.Meta.ClusterID, m.Meta.LeaderID, ours)
		}
	}
	return nil
}

// ClusterView is what cluster.NodeMeta.OtherCluster needs to know of this
// cluster: its id, and whether a node id is one of its own — in servers
// (the Raft configuration) or in the node registry, tombstones included.
func (s *Server) ClusterView(servers []cluster.ServerInfo) (string, func(nodeID string) bool, error) {
	id, err := s.ClusterID()
	if err != nil {
		return "", nil, err
	}
	isOurs := func(nodeID string) bool {
		for _, sv := range servers {
			if sv.ID == nodeID {
				return true
			}
		}
		return s.knownNode(nodeID)
	}
	return id, isOurs, nil
}

// RemoveNode removes a node from the region's Raft configuration.
func (x *clusterService) RemoveNode(ctx context.Context, req *pb.RemoveNodeRequest) (*pb.RemoveNodeResponse, error) {
	if err := validateID("node_id", req.GetNodeId()); err != nil {
		return nil, err
	}
	s := x.s
	if !s.raft.AcceptsWrites() {
		out := &pb.RemoveNodeResponse{}
		return out, s.fwd.forward(ctx, req, out)
	}
	g, err := s.leaderCheck(ctx, s.regionChain())
	if err != nil {
		return nil, err
	}
	if !s.registry.TryLock() {
		return nil, errRestoring
	}
	defer s.registry.Unlock()
	servers, err := s.raft.Servers()
	if err != nil {
		return nil, toStatus(err)
	}
	member := false
	for _, sv := range servers {
		member = member || sv.ID == req.GetNodeId()
	}
	rec, err := s.nodeRecord(req.GetNodeId())
	if err != nil {
		return nil, toStatus(err)
	}
	if !member && rec == nil {
		return nil, status.Errorf(codes.NotFound, "node %s is not a member of region %s", req.GetNodeId(), s.cfg.Region)
	}
	// The tombstone first: a leader that removes itself stops leading as
	// soon as Raft commits the removal, and a tombstone proposed after it
	// would be lost — discovery would then add the node straight back. A
	// node no longer in Raft but still registered is the retry of a
	// removal that got that far: it gets its tombstone.
	if _, err := s.propose(ctx, req, &fsmpb.Command{Op: &fsmpb.Command_DeregisterNode{DeregisterNode: &fsmpb.DeregisterNode{NodeId: req.GetNodeId(), Tombstone: true}}}, g); err != nil {
		return nil, err
	}
	if member {
		if err := s.raft.RemoveServer(req.GetNodeId()); err != nil {
			return nil, toStatus(err)
		}
	}
	return &pb.RemoveNodeResponse{}, nil
}

// TransferLeadership hands leadership to another voter.
func (x *clusterService) TransferLeadership(ctx context.Context, req *pb.TransferLeadershipRequest) (*pb.TransferLeadershipResponse, error) {
	s := x.s
	if !s.raft.AcceptsWrites() {
		out := &pb.TransferLeadershipResponse{}
		return out, s.fwd.forward(ctx, req, out)
	}
	if _, err := s.leaderCheck(ctx, s.regionChain()); err != nil {
		return nil, err
	}
	if req.GetNodeId() == s.cfg.NodeID {
		return nil, invalid("node_id", "%s is already the leader", req.GetNodeId())
	}
	if err := s.raft.TransferLeadership(req.GetNodeId()); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "leadership transfer failed: %v", err)
	}
	id, _ := s.raft.Leader()
	return &pb.TransferLeadershipResponse{LeaderId: id}, nil
}
