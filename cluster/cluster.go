// Package cluster runs one node's Raft: the log and stable store (raft-wal
// or raft-boltdb), snapshots (the FSM's checkpoints, streamed on demand),
// the TCP transport, bootstrap and membership changes, leader tracking
// that never blocks Raft, and the linearizable-read barrier.
//
// It knows nothing of secrets: it replicates opaque commands into a raft.FSM.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// logCacheEntries is how many recent Raft entries stay in memory: several
// append batches (MaxAppendEntries each), the window a follower that is
// slightly behind reads from.
const logCacheEntries = 1024

// Errors of the cluster layer.
var (
	// ErrNotLeader: this node cannot serve the call; nothing was proposed.
	ErrNotLeader = errors.New("not the leader")
	// ErrUnknownOutcome: the command was proposed but leadership was lost
	// before it committed here; it may or may not have been applied. Retry
	// only with an idempotency key.
	ErrUnknownOutcome = errors.New("leadership lost while committing; outcome unknown")
	// ErrTimeout: the call's deadline passed while waiting for Raft.
	ErrTimeout = errors.New("timed out waiting for raft")
	// ErrNotVoter: the call needs a voter, and the node named is not one.
	ErrNotVoter = errors.New("not a voter")

	// errLeadershipChanged: a read barrier saw another term, or none.
	errLeadershipChanged = fmt.Errorf("%w: leadership changed during the read", ErrNotLeader)
)

// Config configures one Raft node.
type Config struct {
	NodeID string
	// RaftBind is the TCP address to listen on ("127.0.0.1:0" picks a port).
	RaftBind string
	// RaftAdvertise is the address peers dial; empty means the bound address,
	// which must then be a concrete host.
	RaftAdvertise string
	// DataDir holds the log store (wal/ or raft.db) and the snapshots folder.
	DataDir string
	// LogStore is LogStoreWAL or LogStoreBoltDB; empty keeps the store the
	// data directory has (the WAL for a new one). Naming the other store
	// migrates the log into it at start.
	LogStore string
	// PeerTLSServer and PeerTLSClient, when set, carry Raft over mutual TLS.
	PeerTLSServer *tls.Config
	PeerTLSClient *tls.Config
	// Bootstrap makes this node the first voter of a new cluster when it has
	// no Raft state yet.
	Bootstrap bool
	// OpenCheckpoint reads a checkpoint the FSM kept as a snapshot (see
	// snapshots.go); nil keeps every snapshot as a stream.
	OpenCheckpoint func(dir string) (CheckpointReader, error)

	// Tuning; zero values take production defaults.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotThreshold  uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
}

// Node is a running Raft node.
type Node struct {
	cfg       Config
	logger    hclog.Logger
	raft      *raft.Raft
	transport *raft.NetworkTransport
	logStore  logStore
	snapshots *snapshotStore

	readyTerm atomic.Uint64 // term whose post-election barrier has returned
	reads     readBarrier

	progress        replicationProgress // peers' logs, as this node's replication saw them
	promoteInterval time.Duration       // how often a leader looks for non-voters to promote
	membership      sync.Mutex          // one configuration change at a time from this node

	mu         sync.Mutex
	onLeader   []func(ctx context.Context)
	leaderStop context.CancelFunc
	leaderCtx  context.Context
	notifyCh   chan bool
	closed     chan struct{}
	watchDone  chan struct{}
}

// FSM is the state machine a node replicates into. It keeps the index of
// the last entry it applied durably itself: a restart resumes after it
// instead of restoring the latest snapshot (NoSnapshotRestoreOnStart).
type FSM interface {
	raft.FSM
	// AppliedIndex is the index of the last entry in the FSM's store.
	AppliedIndex() uint64
}

// New opens the node's stores and starts Raft with fsm.
func New(cfg Config, fsm FSM, logger hclog.Logger) (*Node, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if cfg.NodeID == "" {
		return nil, errors.New("cluster: node id is required")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n := &Node{cfg: cfg, logger: logger, notifyCh: make(chan bool, 16), closed: make(chan struct{}), watchDone: make(chan struct{})}
	n.reads.node = n

	var err error
	var kind string
	n.logStore, kind, err = openLogStore(cfg.DataDir, cfg.LogStore, logger)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	logger.Debug("raft log store", "store", kind)
	// A snapshot being sent holds the log's compaction (logHold).
	hold := newLogHold(logger.Named("raft"))
	n.snapshots, err = newSnapshotStore(cfg.DataDir, 2, cfg.OpenCheckpoint, hold, logger.Named("snapshots"))
	if err != nil {
		n.logStore.Close()
		return nil, fmt.Errorf("cluster: open snapshot store: %w", err)
	}
	var advertise net.Addr
	if cfg.RaftAdvertise != "" {
		advertise, err = net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
		if err != nil {
			n.logStore.Close()
			return nil, fmt.Errorf("cluster: raft advertise address %q: %w", cfg.RaftAdvertise, err)
		}
	}
	if cfg.PeerTLSServer != nil {
		var layer *tlsStreamLayer
		layer, err = newTLSStreamLayer(cfg.RaftBind, advertise, cfg.PeerTLSServer, cfg.PeerTLSClient)
		if err == nil {
			n.transport = raft.NewNetworkTransportWithLogger(layer, 3, 10*time.Second, logger.Named("transport"))
		}
	} else {
		n.transport, err = raft.NewTCPTransportWithLogger(cfg.RaftBind, advertise, 3, 10*time.Second, logger.Named("transport"))
	}
	if err != nil {
		n.logStore.Close()
		return nil, fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftBind, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = logger.Named("raft")
	rc.NotifyCh = n.notifyCh
	// The FSM keeps its own applied index in Pebble, so a restart replays only
	// the log after it instead of reloading a whole snapshot.
	rc.NoSnapshotRestoreOnStart = true
	// Unless the store is behind the latest snapshot: hashicorp/raft saves a
	// received snapshot before the FSM restores it, and on start it resumes
	// after the latest snapshot's index whatever the FSM holds, so a crash
	// between the two would continue from that index on the older store.
	if behind, err := storeBehindSnapshot(fsm, n.snapshots); err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: %w", err)
	} else if behind != "" {
		// Also right after a backup restore, until the next entry is
		// applied: Raft names such a snapshot past its log, while the
		// store keeps the backup's index. Restoring it again is harmless.
		logger.Warn("the store is behind the latest Raft snapshot (a crash while installing it, or a backup restore not yet followed by a write); restoring the snapshot", "detail", behind)
		rc.NoSnapshotRestoreOnStart = false
	}
	// Concurrent proposals become one log append and one FSM batch.
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	setDuration(&rc.HeartbeatTimeout, cfg.HeartbeatTimeout)
	setDuration(&rc.ElectionTimeout, cfg.ElectionTimeout)
	setDuration(&rc.LeaderLeaseTimeout, cfg.LeaderLeaseTimeout)
	setDuration(&rc.CommitTimeout, cfg.CommitTimeout)
	setDuration(&rc.SnapshotInterval, cfg.SnapshotInterval)
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if rc.LeaderLeaseTimeout > rc.HeartbeatTimeout {
		rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	}

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(n.logStore, n.logStore, n.snapshots)
		if err != nil {
			n.closeStores()
			return nil, fmt.Errorf("cluster: inspect raft state: %w", err)
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.transport.LocalAddr(), Suffrage: raft.Voter}}}
			if err := raft.BootstrapCluster(rc, n.logStore, n.logStore, n.snapshots, n.transport, conf); err != nil {
				n.closeStores()
				return nil, fmt.Errorf("cluster: bootstrap: %w", err)
			}
			logger.Info("bootstrapped a new cluster", "node_id", cfg.NodeID)
		}
	}
	// Recent entries stay in memory: replication to followers and a
	// follower's applies read them back by index, which from bolt costs a
	// read transaction and a decode each (about 3 % of a write's CPU).
	logs, err := raft.NewLogCache(logCacheEntries, n.logStore)
	if err != nil {
		n.logStore.Close()
		return nil, fmt.Errorf("cluster: raft log cache: %w", err)
	}
	n.promoteInterval = rc.HeartbeatTimeout
	n.onLeader = append(n.onLeader, n.promoteCaughtUp)
	n.raft, err = raft.NewRaft(rc, fsm, gapLog{LogStore: logs, hold: hold}, n.logStore, n.snapshots, replicationTransport{n.transport, &n.progress})
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	go n.watchLeadership()
	return n, nil
}

func setDuration(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

// storeBehindSnapshot says how the FSM's applied index falls short of the
// latest snapshot's ("" when it does not).
func storeBehindSnapshot(fsm FSM, snapshots raft.SnapshotStore) (string, error) {
	metas, err := snapshots.List()
	if err != nil {
		return "", fmt.Errorf("list snapshots: %w", err)
	}
	applied := fsm.AppliedIndex()
	if len(metas) == 0 || metas[0].Index <= applied {
		return "", nil
	}
	return fmt.Sprintf("store applied index %d, snapshot %s at index %d", applied, metas[0].ID, metas[0].Index), nil
}

func (n *Node) closeStores() {
	if n.transport != nil {
		n.transport.Close()
	}
	n.logStore.Close()
}

// Close stops Raft and closes its stores.
func (n *Node) Close() error {
	select {
	case <-n.closed:
		return nil
	default:
	}
	close(n.closed)
	err := n.raft.Shutdown().Error()
	<-n.watchDone
	n.mu.Lock()
	if n.leaderStop != nil {
		n.leaderStop()
	}
	n.mu.Unlock()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	if cerr := n.logStore.Close(); err == nil {
		err = cerr
	}
	return err
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// RaftAddr is the address peers reach this node's Raft at.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// Raft exposes the raft instance for status reporting.
func (n *Node) Raft() *raft.Raft { return n.raft }

// OnLeader registers fn to run, in its own goroutine, each time this node
// becomes leader and its post-election barrier has returned; its context is
// cancelled when leadership is lost.
func (n *Node) OnLeader(fn func(ctx context.Context)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onLeader = append(n.onLeader, fn)
	if n.leaderCtx != nil && n.leaderCtx.Err() == nil {
		// Leadership began before fn was registered: start it now.
		go fn(n.leaderCtx)
	}
}

// watchLeadership drains Raft's notify channel without ever blocking Raft:
// the barrier and leader tasks run in their own goroutines.
func (n *Node) watchLeadership() {
	defer close(n.watchDone)
	for {
		select {
		case <-n.closed:
			return
		case isLeader := <-n.notifyCh:
			n.mu.Lock()
			if n.leaderStop != nil {
				n.leaderStop()
				n.leaderStop, n.leaderCtx = nil, nil
			}
			n.readyTerm.Store(0)
			if isLeader {
				ctx, cancel := context.WithCancel(context.Background())
				n.leaderStop, n.leaderCtx = cancel, ctx
				go n.establishLeadership(ctx, append([]func(context.Context){}, n.onLeader...))
			}
			n.mu.Unlock()
		}
	}
}

// establishLeadership waits until every entry of earlier terms is applied
// to the FSM (a barrier in the new term), then marks the term ready for
// linearizable reads and starts the leader tasks.
func (n *Node) establishLeadership(ctx context.Context, tasks []func(context.Context)) {
	for ctx.Err() == nil {
		term := n.raft.CurrentTerm()
		err := n.raft.Barrier(0).Error()
		if err == nil {
			if n.raft.State() != raft.Leader || n.raft.CurrentTerm() != term {
				return
			}
			n.readyTerm.Store(term)
			n.logger.Info("leadership established", "term", term)
			for _, fn := range tasks {
				go fn(ctx)
			}
			return
		}
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return
		}
		n.logger.Warn("post-election barrier failed; retrying", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IsLeader reports whether this node is the leader and may serve
// linearizable reads (its post-election barrier has returned).
func (n *Node) IsLeader() bool {
	return n.raft.State() == raft.Leader && n.readyTerm.Load() == n.raft.CurrentTerm()
}

// AcceptsWrites reports whether this node is the Raft leader and may
// propose commands.
func (n *Node) AcceptsWrites() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's id and Raft address, if known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// Apply proposes data and returns the FSM's response once this leader has
// applied it. The context's deadline bounds the wait.
func (n *Node) Apply(ctx context.Context, data []byte) (interface{}, error) {
	if n.raft.State() != raft.Leader {
		return nil, ErrNotLeader
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, ErrTimeout
		}
	}
	f := n.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader):
			return nil, ErrNotLeader
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return nil, fmt.Errorf("%w: %v", ErrTimeout, err)
		case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrRaftShutdown):
			if errors.Is(err, raft.ErrLeadershipTransferInProgress) {
				return nil, ErrNotLeader // rejected before being appended
			}
			return nil, fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
		default:
			return nil, err
		}
	}
	return f.Response(), nil
}

// ServerInfo is one member of the Raft configuration.
type ServerInfo struct {
	ID      string
	Address string
	Voter   bool
	Leader  bool
}

// Servers returns the latest Raft configuration.
func (n *Node) Servers() ([]ServerInfo, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	leaderID, _ := n.Leader()
	var out []ServerInfo
	for _, s := range f.Configuration().Servers {
		out = append(out, ServerInfo{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, Leader: string(s.ID) == leaderID})
	}
	return out, nil
}

// AddNode adds a node as a non-voter, which this leader makes a voter once
// it has caught up (staging.go); a member already in the configuration
// keeps its suffrage and takes addr. The leader only.
func (n *Node) AddNode(id, addr string) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	n.membership.Lock()
	defer n.membership.Unlock()
	f := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second)
	if err := f.Error(); err != nil {
		return n.mapMembershipErr(err)
	}
	n.progress.added(raft.ServerID(id), f.Index())
	return nil
}

// RemoveServer removes a node from the configuration; the leader only.
func (n *Node) RemoveServer(id string) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	n.membership.Lock()
	defer n.membership.Unlock()
	return n.mapMembershipErr(n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error())
}

// TransferLeadership hands leadership to id, or to the most up-to-date
// follower when id is empty.
func (n *Node) TransferLeadership(id string) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	if id == "" {
		return n.mapMembershipErr(n.raft.LeadershipTransfer().Error())
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.ID != id {
			continue
		}
		if !s.Voter {
			// Raft would send it TimeoutNow: its campaign, in a higher
			// term, makes the leader step down, and the voters then refuse
			// it — an election with no candidate that can win it.
			return fmt.Errorf("%w: node %q is not a voter yet (it becomes one once it has caught up)", ErrNotVoter, id)
		}
		return n.mapMembershipErr(n.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(s.Address)).Error())
	}
	return fmt.Errorf("cluster: node %q is not in the raft configuration", id)
}

func (n *Node) mapMembershipErr(err error) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	return err
}

// Snapshot forces a Raft snapshot now.
func (n *Node) Snapshot() error {
	return n.raft.Snapshot().Error()
}

// ReadBarrier returns once this node has confirmed, by a VerifyLeader round
// that started after the call, that it is still the leader whose FSM has
// every acknowledged write; then a read of the local store is linearizable.
func (n *Node) ReadBarrier(ctx context.Context) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return n.reads.wait(ctx, 0)
}

// ReadyTerm returns the term in which this node is the leader whose
// post-election barrier has returned (IsLeader), if it is.
func (n *Node) ReadyTerm() (uint64, bool) {
	term := n.readyTerm.Load()
	return term, term != 0 && n.raft.State() == raft.Leader && n.raft.CurrentTerm() == term
}

// ReadBarrierInTerm is ReadBarrier for a read already made: it succeeds
// only if the round confirms leadership in term, the term (from ReadyTerm)
// in which the read's view was taken. A node leads at most once per term,
// so the read and the confirmation fall in one unbroken leadership, and no
// other leader can have acknowledged a write in between. Confirming a
// later term would not do: the node may have lost leadership after the
// read, missed a write the next leader acknowledged, and been elected
// again.
func (n *Node) ReadBarrierInTerm(ctx context.Context, term uint64) error {
	if t, ok := n.ReadyTerm(); !ok || t != term {
		return errLeadershipChanged
	}
	return n.reads.wait(ctx, term)
}

// readBarrier batches concurrent linearizable reads into shared
// VerifyLeader rounds. A read never joins a round already in flight: it
// waits for the next one, which starts after it arrived.
type readBarrier struct {
	node     *Node
	mu       sync.Mutex
	waiting  []readWaiter
	inFlight bool
}

type readWaiter struct {
	done chan error
	term uint64 // the round must confirm this term (0: any)
}

func (rb *readBarrier) wait(ctx context.Context, term uint64) error {
	ch := make(chan error, 1)
	rb.mu.Lock()
	rb.waiting = append(rb.waiting, readWaiter{done: ch, term: term})
	if !rb.inFlight {
		rb.inFlight = true
		go rb.run()
	}
	rb.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrTimeout, ctx.Err())
	}
}

func (rb *readBarrier) run() {
	for {
		rb.mu.Lock()
		batch := rb.waiting
		rb.waiting = nil
		if len(batch) == 0 {
			rb.inFlight = false
			rb.mu.Unlock()
			return
		}
		rb.mu.Unlock()
		term := rb.node.raft.CurrentTerm()
		err := rb.node.raft.VerifyLeader().Error()
		if err != nil {
			err = fmt.Errorf("%w: leadership not confirmed: %v", ErrNotLeader, err)
		} else if !rb.node.IsLeader() || rb.node.raft.CurrentTerm() != term {
			err = errLeadershipChanged
		}
		for _, w := range batch {
			if err == nil && w.term != 0 && w.term != term {
				w.done <- errLeadershipChanged
				continue
			}
			w.done <- err
		}
	}
}

// Stats returns Raft's counters (term, indexes, last contact, ...).
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// HasState reports whether this node belongs to a Raft cluster: it was
// bootstrapped, or has received a configuration or log from a leader.
func (n *Node) HasState() bool {
	if n.raft.LastIndex() > 0 {
		return true
	}
	f := n.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

// Term is the current Raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// BootstrapWith bootstraps a new cluster whose first voters are servers.
// Every node of the initial set may call it with the same set; it fails
// harmlessly on a node that already has state.
func (n *Node) BootstrapWith(servers []ServerInfo) error {
	conf := raft.Configuration{}
	for _, s := range servers {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address), Suffrage: raft.Voter})
	}
	return n.raft.BootstrapCluster(conf).Error()
}

// RestoreBackup makes the leader take on a snapshot's state and replicate
// it to the followers by snapshot install (raft.Restore). The snapshot must
// have been verified completely first: a failure inside raft's restore
// stops the node. index is the snapshot's applied index: raft records the
// restore past both it and its own log (so that the FSM, which skips
// entries up to its applied index, applies every later one) and in its
// current term.
//
// No timeout: hashicorp/raft's covers the restore itself, and once it
// has fired, the select that follows a restore that took longer picks
// between the fired timer and its buffered apply channel at random, so a
// restore that took effect could be reported as failed. Raft answers a
// restore or its closing no-op promptly with an error when this node is
// not, or stops being, the leader.
func (n *Node) RestoreBackup(index uint64, size int64, r io.Reader) error {
	if n.raft.State() != raft.Leader {
		return ErrNotLeader
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Size: size}
	return restoreOutcome(n.raft.Restore(meta, r, 0))
}

// restoreOutcome maps an error of raft.Restore. Raft refuses the restore
// and its closing no-op alike with a leadership error: after the restore
// took effect here, perhaps, but before the no-op showed that the
// followers have it. So those are ErrUnknownOutcome (UNAVAILABLE).
func restoreOutcome(err error) error {
	for _, lost := range []error{raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress, raft.ErrRaftShutdown} {
		if errors.Is(err, lost) {
			return fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
		}
	}
	return err
}
