package cluster

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// A node enters the region as a non-voter and becomes a voter only once it
// has caught up with the leader's log (the "learner" of etcd, the staging
// of Consul's autopilot). Added as a voter straight away, a node that
// still has to receive a snapshot (25 s at a million versions) would
// count towards the quorum without being able to acknowledge anything: in
// a region of three with one dead voter not yet reaped, the two live ones
// would stop committing until the newcomer caught up.
//
// hashicorp/raft does not tell how far a follower's log matches the
// leader's, so the leader's transport records it from the replies to its
// own AppendEntries and InstallSnapshot calls (replicationTransport), and
// a leader task promotes each non-voter whose log has reached what a
// quorum held one check earlier, and that has answered since
// (promoteCaughtUp).

// peerMatch is how far a peer's log is known to match this node's, learnt
// in term while this node led, at time at.
type peerMatch struct {
	term, index uint64
	at          time.Time
}

// replicationProgress records, per peer, the highest index of this node's
// log the peer has acknowledged holding, and the index from which an
// acknowledgement counts for promotion (the peer's latest addition).
type replicationProgress struct {
	mu    sync.Mutex
	match map[raft.ServerID]peerMatch
	floor map[raft.ServerID]uint64
}

// added notes that id entered (or re-entered) the configuration at index:
// what it acknowledged before, as another incarnation or at another
// address, does not make it caught up.
func (p *replicationProgress) added(id raft.ServerID, index uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.floor == nil {
		p.floor = map[raft.ServerID]uint64{}
	}
	p.floor[id] = index
}

// caughtUp reports whether id has acknowledged, in term, this node's log
// up to target and at least up to its own latest addition, and its latest
// answer came at or after since: a node that stopped answering is not
// caught up, whatever it acknowledged before.
func (p *replicationProgress) caughtUp(id raft.ServerID, term, target uint64, since time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.match[id]
	return m.term == term && m.index >= target && m.index >= p.floor[id] && !m.at.Before(since)
}

func (p *replicationProgress) record(id raft.ServerID, term, index uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.match == nil {
		p.match = map[raft.ServerID]peerMatch{}
	}
	p.match[id] = peerMatch{term: term, index: index, at: time.Now()}
}

// replicationTransport is the transport Raft uses: it turns off pipelined
// replication, and records each peer's progress from the replies to this
// node's replication calls.
//
// No pipeline: in raft v1.7.2 a pipeline whose response consumer has
// stopped (a follower that errored, e.g. after a partition heals) blocks
// pipelineSend forever: the follower stops receiving entries and Shutdown
// hangs (found by the chaos campaign: `make chaos NODES=5`, a drain that
// never finished). Plain AppendEntries with large batches
// (MaxAppendEntries) keep throughput.
type replicationTransport struct {
	*raft.NetworkTransport
	progress *replicationProgress
}

func (replicationTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// AppendEntries sends one batch (or a heartbeat). Raft replicates to a
// peer one call at a time, so the latest reply is the peer's state. A
// success means the peer's log matches up to the batch's last entry;
// heartbeats carry no position and say nothing. A refusal means the logs
// differ somewhere after the peer's last match, and a failed call that
// the peer may be gone: nothing is known. (While the leader is idle it
// still sends each peer an empty batch at its last index every
// CommitTimeout, so a live peer's record stays fresh.)
func (t replicationTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err != nil {
		t.progress.record(id, args.Term, 0)
		return err
	}
	if resp.Term > args.Term {
		return err
	}
	switch {
	case !resp.Success:
		t.progress.record(id, args.Term, 0)
	case args.PrevLogEntry > 0 || len(args.Entries) > 0:
		t.progress.record(id, args.Term, args.PrevLogEntry+uint64(len(args.Entries)))
	}
	return err
}

// InstallSnapshot sends a snapshot; once the peer has installed it, its
// log matches up to the snapshot's index.
func (t replicationTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	err := t.NetworkTransport.InstallSnapshot(id, target, args, resp, data)
	switch {
	case err != nil:
		t.progress.record(id, args.Term, 0)
	case resp.Success && resp.Term <= args.Term:
		t.progress.record(id, args.Term, args.LastLogIndex)
	}
	return err
}

// promoteCaughtUp runs while this node leads: every check interval, each
// non-voter whose log matches the leader's up to what a quorum held at the
// previous check (the commit index), and that has answered since, becomes
// a voter. A node that keeps up with the voters reaches that within an
// interval under any load; one still receiving a snapshot, or gone, does
// not, and stays out of the quorum.
func (n *Node) promoteCaughtUp(ctx context.Context) {
	tick := time.NewTicker(n.promoteInterval)
	defer tick.Stop()
	var target, targetTerm uint64
	var checked time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		term := n.raft.CurrentTerm()
		if n.raft.State() != raft.Leader {
			return
		}
		if targetTerm == term && target > 0 {
			n.promote(term, target, checked)
		}
		target, targetTerm, checked = n.raft.CommitIndex(), term, time.Now()
	}
}

// promote makes a voter of a non-voter that has reached target in term
// and answered since.
// It holds the membership lock from reading the configuration to the
// change, so that no removal or re-addition slips in between: AddVoter
// would add back a node just removed (hashicorp/raft's prevIndex guard
// cannot help: GetConfiguration's future reports index 0).
func (n *Node) promote(term, target uint64, since time.Time) {
	n.membership.Lock()
	defer n.membership.Unlock()
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Nonvoter || !n.progress.caughtUp(s.ID, term, target, since) {
			continue
		}
		if err := n.raft.AddVoter(s.ID, s.Address, 0, 10*time.Second).Error(); err != nil {
			n.logger.Warn("promoting a caught-up non-voter failed; the next check retries", "node_id", s.ID, "error", err)
			return
		}
		n.logger.Info("a new node has caught up and is now a voter", "node_id", s.ID, "raft_address", s.Address)
		return // one change per check
	}
}
