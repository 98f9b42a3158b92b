package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// maxPerCommand bounds how much one purge or prune command carries, so a
// backlog becomes several small Raft entries instead of one huge one.
const maxPerCommand = 500

// RunLeaderTasks runs while this node leads: it registers the node's own
// addresses, then periodically proposes purges of resources whose purge time
// has passed and pruning of expired idempotency keys. Time decisions are the
// leader's; the FSM re-checks each against the command's time, so every
// replica agrees.
func (s *Server) RunLeaderTasks(ctx context.Context) {
	s.registerSelf(ctx)
	t := time.NewTicker(s.cfg.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.registerSelf(ctx)
			s.purgeDue(ctx)
			s.pruneIdempotency(ctx)
			s.pruneAudit(ctx)
		}
	}
}

// registerSelf makes sure the replicated node registry has this node's
// current addresses, so followers can forward to it.
func (s *Server) registerSelf(ctx context.Context) {
	gossip := ""
	if s.dir != nil {
		gossip = s.dir.Addr()
	}
	s.EnsureRegistered(ctx, s.cfg.NodeID, s.cfg.RaftAddress, s.cfg.GRPCAddress, gossip)
}

// EnsureRegistered records a node's addresses in the replicated registry
// if they are missing or changed (leader only).
func (s *Server) EnsureRegistered(ctx context.Context, nodeID, raftAddr, grpcAddr, gossipAddr string) {
	if !s.registry.TryLock() {
		return // a backup restore is under way; the next round tries again
	}
	defer s.registry.Unlock()
	want := &fsmpb.NodeRecord{NodeId: nodeID, RaftAddress: raftAddr, GrpcAddress: grpcAddr, GossipAddress: gossipAddr}
	have, err := s.nodeRecord(nodeID)
	if err != nil {
		return // the next round tries again
	}
	// A removal tombstone stays until an explicit Join: discovery calls
	// this from a view of the Raft configuration that may predate the
	// removal, and clearing the tombstone would let it add the node back.
	if have != nil && (have.GetRemoved() || proto.Equal(have, want)) {
		return
	}
	s.proposeMaintenance(ctx, &fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: want}}})
}

// GossipAddresses returns the registered gossip addresses of the region's
// nodes other than this one.
func (s *Server) GossipAddresses(nodeIDs []string) []string {
	var out []string
	_ = s.store.Read(func(v *store.View) error {
		for _, id := range nodeIDs {
			if n, err := v.Node(id); err == nil && n.GetGossipAddress() != "" && id != s.cfg.NodeID {
				out = append(out, n.GetGossipAddress())
			}
		}
		return nil
	})
	return out
}

// nodeRecord is nodeID's record in the replicated node registry, nil when
// it has none.
func (s *Server) nodeRecord(nodeID string) (*fsmpb.NodeRecord, error) {
	var rec *fsmpb.NodeRecord
	err := s.store.Read(func(v *store.View) error {
		n, err := v.Node(nodeID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		rec = n
		return err
	})
	return rec, err
}

// Removed reports whether an operator removed nodeID (RemoveNode): then
// discovery must not add it back until it joins explicitly.
func (s *Server) Removed(nodeID string) bool {
	rec, _ := s.nodeRecord(nodeID)
	return rec.GetRemoved()
}

// knownNode reports whether the region's node registry holds nodeID,
// registered or marked removed: a node of this cluster, now or before.
func (s *Server) knownNode(nodeID string) bool {
	rec, _ := s.nodeRecord(nodeID)
	return rec != nil
}

// Deregister forgets a node removed from the region (leader only).
func (s *Server) Deregister(ctx context.Context, nodeID string) {
	if !s.registry.TryLock() {
		return // a backup restore is under way; the next round tries again
	}
	defer s.registry.Unlock()
	s.proposeMaintenance(ctx, &fsmpb.Command{Op: &fsmpb.Command_DeregisterNode{DeregisterNode: &fsmpb.DeregisterNode{NodeId: nodeID}}})
}

func (s *Server) purgeDue(ctx context.Context) {
	var ids []string
	_ = s.store.Read(func(v *store.View) error {
		var err error
		ids, err = v.DuePurges(time.Now().UnixNano(), maxPerCommand)
		return err
	})
	if len(ids) == 0 {
		return
	}
	op := &fsmpb.Purge{}
	for _, id := range ids {
		if strings.HasPrefix(id, prefixVersion) {
			op.VersionIds = append(op.VersionIds, id)
		} else {
			op.SecretIds = append(op.SecretIds, id)
		}
	}
	if s.proposeMaintenance(ctx, &fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: op}}) {
		s.logger.Info("purged resources scheduled for deletion", "secrets", len(op.SecretIds), "versions", len(op.VersionIds))
	}
}

func (s *Server) pruneIdempotency(ctx context.Context) {
	var keys []string
	_ = s.store.Read(func(v *store.View) error {
		var err error
		keys, err = v.ExpiredIdempotency(time.Now().UnixNano(), maxPerCommand)
		return err
	})
	if len(keys) > 0 {
		s.proposeMaintenance(ctx, &fsmpb.Command{Op: &fsmpb.Command_PruneIdempotency{PruneIdempotency: &fsmpb.PruneIdempotency{Keys: keys}}})
	}
}

func (s *Server) proposeMaintenance(ctx context.Context, cmd *fsmpb.Command) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.propose(ctx, nil, cmd, grant{}); err != nil {
		if ctx.Err() == nil {
			s.logger.Warn("maintenance command failed", "error", err)
		}
		return false
	}
	return true
}
