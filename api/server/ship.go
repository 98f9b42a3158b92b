package server

import (
	"context"
	"crypto/hmac"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/api/nodepb"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
)

// A follower that serves a payload read from its own state (x-consistency:
// stale) cannot write the read's audit record itself: only the leader
// proposes. It ships the record, batched with those of concurrent reads,
// to the leader (NodeService.ShipAudit), which commits them through Raft
// and answers once they are committed; only then does the read return its
// payload. The call carries no account token, so the batch is signed with
// a MAC key derived from the region's keyring, which only the region's
// nodes hold.

// maxShippedRecords bounds one batch (the auditor sends at most auditBatch).
const maxShippedRecords = 1024

// shipTimeout bounds one shipment. Shorter than a proposal's 10 s: when
// the leader is cut off (packets dropped, not refused) the batch waits out
// its timeout, and the reads queued behind it should reach the next
// leader soon after the election.
const shipTimeout = 3 * time.Second

// shipWindow is how far a batch's sent_at may be from the leader's clock.
const shipWindow = time.Minute

// shipMACDomain separates these MACs from request fingerprints, which
// cover a method name (starting with "/") and a request.
const shipMACDomain = "mysterybox/ship-audit/v1\x00"

// SignShipAudit sets req.Mac for req.KeyId of kr (the follower's side;
// tests use it to play a node).
func SignShipAudit(kr *region.Keyring, req *nodepb.ShipAuditRequest) error {
	mac, err := shipMAC(kr, req)
	if err != nil {
		return err
	}
	req.Mac = mac
	return nil
}

// shipMAC is the MAC of req (its mac field aside) under key req.KeyId.
func shipMAC(kr *region.Keyring, req *nodepb.ShipAuditRequest) ([]byte, error) {
	unsigned := proto.Clone(req).(*nodepb.ShipAuditRequest)
	unsigned.Mac = nil
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(unsigned)
	if err != nil {
		return nil, err
	}
	return kr.RequestMAC(req.GetKeyId(), append([]byte(shipMACDomain), raw...))
}

// shipAudit has the leader commit records this node wrote for calls it
// served. It signs with the active key first, then with the others it
// holds (during a key rotation the leader may not have the new key yet).
func (s *Server) shipAudit(ctx context.Context, records []*pb.AuditRecord) error {
	addr, err := s.fwd.leaderAddress(ctx)
	if err != nil {
		return err
	}
	conn, err := s.fwd.conn(addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "cannot reach leader at %s: %v", addr, err)
	}
	kr := s.keyring()
	keyIDs := []string{kr.ActiveKeyID()}
	for _, id := range kr.KeyIDs() {
		if id != kr.ActiveKeyID() {
			keyIDs = append(keyIDs, id)
		}
	}
	client := nodepb.NewNodeServiceClient(conn)
	for _, keyID := range keyIDs {
		req := &nodepb.ShipAuditRequest{NodeId: s.cfg.NodeID, Records: records, SentAt: timestamppb.Now(), KeyId: keyID}
		if err := SignShipAudit(kr, req); err != nil {
			return err
		}
		_, err = client.ShipAudit(ctx, req)
		if status.Code(err) != codes.FailedPrecondition {
			return err
		}
	}
	return err
}

type nodeService struct {
	nodepb.UnimplementedNodeServiceServer
	s *Server
}

// ShipAudit commits a follower's records. Refusals name what is wrong but
// never echo a MAC.
func (x *nodeService) ShipAudit(ctx context.Context, req *nodepb.ShipAuditRequest) (*nodepb.ShipAuditResponse, error) {
	s := x.s
	kr := s.keyring()
	if req.GetKeyId() == "" || !kr.Has(req.GetKeyId()) {
		return nil, status.Errorf(codes.FailedPrecondition, "audit batch signed with key %q, which this node does not hold", req.GetKeyId())
	}
	want, err := shipMAC(kr, req)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "compute MAC: %v", err)
	}
	if !hmac.Equal(want, req.GetMac()) {
		s.logger.Warn("refused an audit batch with a bad MAC", "node_id", req.GetNodeId(), "peer", peerAddr(ctx))
		return nil, status.Error(codes.PermissionDenied, "audit batch not signed by a node of this region")
	}
	if d := time.Since(req.GetSentAt().AsTime()); d > shipWindow || d < -shipWindow {
		return nil, status.Errorf(codes.PermissionDenied, "audit batch sent at %s, more than %s from this node's clock", req.GetSentAt().AsTime().Format(time.RFC3339), shipWindow)
	}
	if n := len(req.GetRecords()); n == 0 || n > maxShippedRecords {
		return nil, invalid("records", "must hold 1-%d records, got %d", maxShippedRecords, n)
	}
	for i, r := range req.GetRecords() {
		if r.GetNodeId() != req.GetNodeId() {
			return nil, invalid("records", "record %d names node %q, not the sender %q", i, r.GetNodeId(), req.GetNodeId())
		}
		if r.GetSeq() != 0 || r.GetHash() != "" || r.GetPrevHash() != "" {
			return nil, invalid("records", "record %d is already chained: the FSM assigns seq and hashes", i)
		}
	}
	if !s.raft.AcceptsWrites() {
		return nil, status.Error(codes.Unavailable, "not the leader (leadership is changing); retry")
	}
	op := &fsmpb.AuditAppend{Records: req.GetRecords()}
	if _, err := s.propose(ctx, nil, &fsmpb.Command{Op: &fsmpb.Command_AuditAppend{AuditAppend: op}}, grant{}); err != nil {
		return nil, err
	}
	return &nodepb.ShipAuditResponse{}, nil
}

// registerNodeService adds the node-to-node service to g.
func (s *Server) registerNodeService(g *grpc.Server) {
	nodepb.RegisterNodeServiceServer(g, &nodeService{s: s})
}

// nodeMethod reports whether method is a node-to-node call, which the
// region's keyring authenticates instead of an account token.
func nodeMethod(method string) bool {
	return strings.HasPrefix(method, nodeServicePrefix)
}

var nodeServicePrefix = "/" + nodepb.NodeService_ServiceDesc.ServiceName + "/"

// peerAddr is the caller's network address, for logs.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}
