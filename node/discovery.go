package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/tlsutil"
)

// gossipState is the part of the node's gossip metadata that changes; it
// is recomputed by the node's loop, never inside memberlist's callbacks
// (which must not wait on Raft).
type gossipState struct {
	hasState, leader bool
	term             uint64
	leaderID         string
	clusterID        string
}

// startGossip joins the gossip of all regions and runs discovery:
// bootstrap-expect, metadata refresh, and (on the leader) reconciliation of
// the Raft configuration with gossip.
func (n *Node) startGossip() error {
	var st atomic.Pointer[gossipState]
	st.Store(&gossipState{})
	meta := func() cluster.NodeMeta {
		s := st.Load()
		m := cluster.NodeMeta{
			Proto: cluster.GossipProtocol, NodeID: n.cfg.NodeID, Region: n.cfg.Region,
			RaftAddr: n.Raft.RaftAddr(), GRPCAddr: n.grpcAddr,
			HasState: s.hasState, Leader: s.leader, Term: s.term, LeaderID: s.leaderID, ClusterID: s.clusterID,
			CommandVersion: n.commandVersion(),
		}
		if p := n.pendingAdmin.Load(); p != nil {
			m.AdminTokenID, m.AdminTokenHash = p.tokenID, p.hash
		}
		return m
	}
	g, err := cluster.NewGossip(cluster.GossipConfig{
		BindAddr: n.cfg.GossipAddr, AdvertiseAddr: n.cfg.GossipAdvertise,
		Key: n.cfg.GossipKey, Fast: n.cfg.FastGossip, Meta: meta,
	}, n.logger.Named("gossip"))
	if err != nil {
		return err
	}
	n.Gossip = g
	n.API.SetDirectory(g)
	n.Raft.OnLeader(n.reconcileLoop)
	ctx, cancel := context.WithCancel(context.Background())
	n.stopGossip = cancel
	n.goBackground(func() { n.joinSeeds(ctx) })
	n.goBackground(func() { n.rejoinLoop(ctx) })
	n.goBackground(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			leaderID, _ := n.Raft.Leader()
			clusterID, _ := n.API.ClusterID()
			s := &gossipState{hasState: n.Raft.HasState(), leader: n.Raft.AcceptsWrites(), term: n.Raft.Term(), leaderID: leaderID, clusterID: clusterID}
			if *s != *st.Load() {
				st.Store(s)
			}
			g.Refresh() // also when the pending admin token goes away
			if n.cfg.BootstrapExpect > 0 && !s.hasState {
				n.maybeBootstrap()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			case <-g.Changed():
			}
		}
	})
	return nil
}

// joinSeeds contacts the seeds until one answers (they may start later).
func (n *Node) joinSeeds(ctx context.Context) {
	if len(n.cfg.GossipSeeds) == 0 {
		return
	}
	backoff := 100 * time.Millisecond
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if _, err := n.Gossip.Join(n.cfg.GossipSeeds); err == nil {
			n.logger.Info("joined gossip", "seeds", n.cfg.GossipSeeds)
			return
		} else if attempt%10 == 0 {
			n.logger.Warn("cannot join gossip yet; retrying", "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// rejoinInterval is how often a node looks for Raft peers it has lost in
// gossip.
const rejoinInterval = 5 * time.Second

// rejoinLoop keeps this node in gossip with its region's Raft peers. A node
// restarted with only itself (or only dead nodes) as --join seeds would
// otherwise stay alone: its peers see it dead, and nodes that join gossip
// through it are never seen by the leader (found by the 1M-version scale
// benchmark: the first node of scripts/cluster.sh, every node's seed, was
// restarted and a fourth node never joined).
func (n *Node) rejoinLoop(ctx context.Context) {
	tick := time.NewTicker(rejoinInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n.rejoinLost()
	}
}

// rejoinLost joins, at their registered gossip addresses, the Raft peers
// that gossip does not show alive. Joining one that is alive but sees this
// node dead makes this node refute its death with a new incarnation.
func (n *Node) rejoinLost() {
	servers, err := n.Raft.Servers()
	if err != nil || len(servers) < 2 {
		return
	}
	alive := map[string]bool{}
	for _, m := range n.regionPeers() {
		alive[m.Meta.NodeID] = true
	}
	var lost []string
	for _, s := range servers {
		if s.ID != n.cfg.NodeID && !alive[s.ID] {
			lost = append(lost, s.ID)
		}
	}
	if len(lost) == 0 {
		return
	}
	addrs := n.API.GossipAddresses(lost)
	if len(addrs) == 0 {
		return
	}
	if k, err := n.Gossip.Join(addrs); err == nil && k > 0 {
		n.logger.Info("rejoined gossip through Raft peers it had lost", "node_ids", lost, "reached", k)
	} else if err != nil {
		n.logger.Debug("Raft peers still unreachable in gossip", "node_ids", lost, "error", err)
	}
}

// regionPeers returns the alive gossip members of this node's region.
func (n *Node) regionPeers() []cluster.GossipMember {
	var out []cluster.GossipMember
	for _, m := range n.Gossip.Members() {
		if m.Meta.Region == n.cfg.Region && m.Health == cluster.HealthAlive {
			out = append(out, m)
		}
	}
	return out
}

// maybeBootstrap bootstraps the region once BootstrapExpect nodes of it,
// none of them part of a cluster yet, see each other. Each of them
// computes the same initial set (the expected number of nodes with the
// smallest ids) and bootstraps with it; Raft makes the identical bootstraps
// one cluster. A node outside that set, or one that sees a peer already in
// a cluster, waits for the leader to add it.
//
// Identical only if every node's gossip view is the same, so a node
// bootstraps only after its view has held the same set, with no peer in a
// cluster, for bootstrapSettle: long enough for gossip to spread a
// newcomer, or a peer's "has state" once it bootstrapped. (Without it a
// node started just after the others had bootstrapped still saw none of
// them in a cluster, took a set with itself in it, and formed a second
// cluster; docs/reliability.md bug 22.) With mutual TLS every peer of the
// set must also prove a certificate of this region on its Raft port, as
// discovery requires before adding a node: having the gossip key, which
// all regions share, is not enough to become a voter.
func (n *Node) maybeBootstrap() {
	servers := n.bootstrap.decide(n.regionPeers(), n.cfg.BootstrapExpect, n.cfg.NodeID, time.Now(), n.bootstrapSettle())
	if servers == nil {
		return
	}
	for _, s := range servers {
		if s.ID == n.cfg.NodeID {
			continue
		}
		if err := n.checkPeerCertificate(s.ID, s.Address); err != nil {
			n.logger.Warn("bootstrap-expect: not bootstrapping: a node of the initial set does not present a valid certificate of this region on its Raft port", "node_id", s.ID, "raft", s.Address, "error", err)
			n.bootstrap = bootstrapChoice{}
			return
		}
	}
	if err := n.Raft.BootstrapWith(servers); err != nil {
		n.logger.Warn("bootstrap-expect: bootstrap failed", "error", err)
		return
	}
	n.logger.Info("bootstrap-expect: bootstrapped the region", "voters", len(servers))
}

// bootstrapSettle is how long a node's view of its region must hold still
// before it bootstraps (maybeBootstrap).
func (n *Node) bootstrapSettle() time.Duration {
	if n.cfg.FastGossip {
		return time.Second
	}
	return 5 * time.Second
}

// bootstrapChoice is the initial set a node would bootstrap with, and since
// when its view has shown it unchanged.
type bootstrapChoice struct {
	set   string
	since time.Time
}

// decide returns the servers to bootstrap with, or nil: the expect alive
// peers (self included) with the smallest ids, once peers have shown that
// set, with none of them in a cluster, for settle, and if self is in it.
func (c *bootstrapChoice) decide(peers []cluster.GossipMember, expect int, self string, now time.Time, settle time.Duration) []cluster.ServerInfo {
	for _, p := range peers {
		if p.Meta.HasState {
			*c = bootstrapChoice{}
			return nil
		}
	}
	if len(peers) < expect {
		*c = bootstrapChoice{}
		return nil
	}
	peers = append([]cluster.GossipMember(nil), peers...)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Meta.NodeID < peers[j].Meta.NodeID })
	var servers []cluster.ServerInfo
	var key strings.Builder
	in := false
	for _, p := range peers[:expect] {
		servers = append(servers, cluster.ServerInfo{ID: p.Meta.NodeID, Address: p.Meta.RaftAddr, Voter: true})
		fmt.Fprintf(&key, "%s@%s,", p.Meta.NodeID, p.Meta.RaftAddr)
		in = in || p.Meta.NodeID == self
	}
	if key.String() != c.set {
		*c = bootstrapChoice{set: key.String(), since: now}
		return nil
	}
	if now.Sub(c.since) < settle || !in {
		return nil
	}
	return servers
}

// reconcileLoop runs on the leader: it adds alive nodes of this region
// that gossip knows and Raft does not, and reaps nodes dead for longer than
// DeadNodeReapAfter without going below a quorum of the configured size.
func (n *Node) reconcileLoop(ctx context.Context) {
	foreign := &foreignNodes{warnAfter: 10 * time.Second}
	if n.cfg.FastGossip {
		foreign.warnAfter = time.Second
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		n.reconcile(ctx, foreign)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.Gossip.Changed():
		}
	}
}

func (n *Node) reconcile(ctx context.Context, foreign *foreignNodes) {
	servers, err := n.Raft.Servers()
	if err != nil {
		return
	}
	inRaft := map[string]cluster.ServerInfo{}
	voters := 0
	for _, s := range servers {
		inRaft[s.ID] = s
		if s.Voter {
			voters++
		}
	}
	clusterID, isOurs, idErr := n.API.ClusterView(servers)
	defer foreign.endRound()
	members := n.Gossip.Members()
	health := map[string]string{} // gossip health by node id, this region only
	for _, m := range members {
		if m.Meta.Region == n.cfg.Region {
			health[m.Meta.NodeID] = m.Health
		}
	}
	for _, m := range members {
		if m.Meta.Region != n.cfg.Region {
			if s, ok := inRaft[m.Meta.NodeID]; ok && s.Address == m.Meta.RaftAddr {
				n.logger.Warn("ignoring gossip metadata that puts a member of this region's Raft in another region", "node_id", m.Meta.NodeID, "claimed_region", m.Meta.Region)
			}
			continue
		}
		if m.Health != cluster.HealthAlive || m.Meta.NodeID == n.cfg.NodeID || ctx.Err() != nil {
			continue
		}
		s, known := inRaft[m.Meta.NodeID]
		if !known && n.API.Removed(m.Meta.NodeID) {
			continue // removed by an operator; only an explicit join brings it back
		}
		if known && s.Address == m.Meta.RaftAddr {
			n.API.EnsureRegistered(ctx, m.Meta.NodeID, m.Meta.RaftAddr, m.Meta.GRPCAddr, m.Addr)
			continue
		}
		// From here on the node is added, or re-added at a new address.
		if idErr != nil {
			continue // not without this cluster's id; reaping below goes on
		}
		if m.Meta.OtherCluster(clusterID, isOurs) {
			// Two clusters under one region name (bootstrap-expect with
			// gossip views that stayed apart): adding the node would mix
			// two histories that both start at index 1, term 1.
			if foreign.refused(m.Meta.NodeID, time.Now()) {
				n.logger.Warn("not adding a node of this region that belongs to another cluster: two clusters run under the same region name; remove one (wipe its nodes' data) and join its nodes to the other", "node_id", m.Meta.NodeID, "its_cluster", m.Meta.ClusterID, "this_cluster", clusterID, "its_leader", m.Meta.LeaderID)
			}
			continue
		}
		if known {
			// Same id, new address: remove, then add (the rqlite pattern).
			n.logger.Info("node changed its raft address; re-adding it", "node_id", m.Meta.NodeID, "old", s.Address, "new", m.Meta.RaftAddr)
			if err := n.Raft.RemoveServer(m.Meta.NodeID); err != nil {
				n.logger.Warn("removing a node with a stale address failed", "node_id", m.Meta.NodeID, "error", err)
				continue
			}
			if s.Voter {
				voters--
			}
		}
		if err := n.checkPeerCertificate(m.Meta.NodeID, m.Meta.RaftAddr); err != nil {
			n.logger.Warn("not adding a discovered node: its Raft port does not present a valid certificate of this region", "node_id", m.Meta.NodeID, "raft", m.Meta.RaftAddr, "error", err)
			continue
		}
		if !known {
			if stale, ok := n.replaceStaleHolder(ctx, servers, health, m); !ok {
				continue
			} else if stale.ID != "" {
				delete(inRaft, stale.ID)
				if stale.Voter {
					voters--
				}
			}
		}
		if err := n.Raft.AddNode(m.Meta.NodeID, m.Meta.RaftAddr); err != nil {
			n.logger.Warn("adding a discovered node failed", "node_id", m.Meta.NodeID, "error", err)
			continue
		}
		// A non-voter until it has caught up: it does not count towards
		// the quorum below yet.
		n.logger.Info("added a discovered node to the region; it becomes a voter once it has caught up", "node_id", m.Meta.NodeID, "raft", m.Meta.RaftAddr)
		n.API.EnsureRegistered(ctx, m.Meta.NodeID, m.Meta.RaftAddr, m.Meta.GRPCAddr, m.Addr)
	}
	if n.cfg.DeadNodeReapAfter <= 0 {
		return
	}
	size := voters
	if n.cfg.BootstrapExpect > size {
		size = n.cfg.BootstrapExpect
	}
	quorum := size/2 + 1
	for _, m := range members {
		if m.Meta.Region != n.cfg.Region || (m.Health != cluster.HealthDead && m.Health != cluster.HealthLeft) {
			continue
		}
		s, ok := inRaft[m.Meta.NodeID]
		if !ok || s.Address != m.Meta.RaftAddr || time.Since(m.Since) < n.cfg.DeadNodeReapAfter {
			continue
		}
		remaining := voters
		if s.Voter {
			remaining--
		}
		if remaining < quorum {
			n.logger.Warn("not reaping a dead node: the region would fall below a quorum of its configured size", "node_id", m.Meta.NodeID, "voters", voters, "configured", size)
			continue
		}
		if err := n.Raft.RemoveServer(m.Meta.NodeID); err != nil {
			n.logger.Warn("reaping a dead node failed", "node_id", m.Meta.NodeID, "error", err)
			continue
		}
		n.API.Deregister(ctx, m.Meta.NodeID)
		n.logger.Info("reaped a dead node", "node_id", m.Meta.NodeID, "dead_for", time.Since(m.Since).Round(time.Second))
		voters = remaining
	}
}

// foreignNodes remembers, across a leader's reconcile rounds, the nodes
// refused as another cluster's, so that the warning comes once the
// evidence has lasted (a node may follow a departed leader for a heartbeat
// timeout or two) and then every 5 minutes, not every round.
type foreignNodes struct {
	warnAfter time.Duration
	seen, now map[string]*foreignSighting
}

type foreignSighting struct{ first, warned time.Time }

const foreignWarnEvery = 5 * time.Minute

// refused notes that id was refused in this round; it reports whether to
// warn of it now.
func (f *foreignNodes) refused(id string, now time.Time) bool {
	if f.now == nil {
		f.now = map[string]*foreignSighting{}
	}
	s := f.seen[id]
	if s == nil {
		s = &foreignSighting{first: now}
	}
	f.now[id] = s
	if now.Sub(s.first) < f.warnAfter || now.Sub(s.warned) < foreignWarnEvery {
		return false
	}
	s.warned = now
	return true
}

// endRound forgets the nodes not refused in the round that ends: evidence
// that comes back later starts a new wait.
func (f *foreignNodes) endRound() { f.seen, f.now = f.now, nil }

// replaceStaleHolder makes room for m, an alive member not in Raft, when
// another id in the Raft configuration holds m's Raft address: a node
// wiped and started under a new id where a dead one ran, without an
// operator's RemoveNode first. Raft refuses two servers at one address, so
// the old id goes, but only when gossip says it is dead or left, or does
// not know it at all: the process at that address is then m, and the old
// id's entry only weakens the quorum (its AppendEntries reach m). While
// the old id still looks alive (gossip has not noticed the replacement
// yet) nothing happens and the next round decides. It returns the removed
// server (zero when none held the address) and whether m may be added.
func (n *Node) replaceStaleHolder(ctx context.Context, servers []cluster.ServerInfo, health map[string]string, m cluster.GossipMember) (cluster.ServerInfo, bool) {
	for _, s := range servers {
		if s.ID == m.Meta.NodeID || s.Address != m.Meta.RaftAddr {
			continue
		}
		if h, ok := health[s.ID]; ok && h != cluster.HealthDead && h != cluster.HealthLeft {
			n.logger.Warn("not adding a discovered node yet: another member that gossip still sees as "+h+" holds its Raft address", "node_id", m.Meta.NodeID, "raft", m.Meta.RaftAddr, "holder", s.ID)
			return cluster.ServerInfo{}, false
		}
		if s.ID == n.cfg.NodeID {
			return cluster.ServerInfo{}, false // never remove ourselves for someone else
		}
		if err := n.Raft.RemoveServer(s.ID); err != nil {
			n.logger.Warn("removing a dead node whose Raft address a new node holds failed", "node_id", s.ID, "new_node_id", m.Meta.NodeID, "error", err)
			return cluster.ServerInfo{}, false
		}
		n.API.Deregister(ctx, s.ID)
		n.logger.Info("removed a dead node: a new node holds its Raft address", "node_id", s.ID, "new_node_id", m.Meta.NodeID, "raft", s.Address)
		return s, true
	}
	return cluster.ServerInfo{}, true
}

// checkPeerCertificate: with mutual TLS, a node enters Raft only if its Raft
// port proves a certificate of the cluster CA naming this region and the
// node id it claims. Being in gossip (having the gossip key, which all
// regions share) is not enough: an unreachable voter would weaken the
// quorum, and a stranger one would read the region's log.
func (n *Node) checkPeerCertificate(nodeID, raftAddr string) error {
	cfg := n.peerClientTLS()
	if cfg == nil {
		return nil
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", raftAddr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if err := conn.Handshake(); err != nil {
		return err
	}
	return certNames(conn.ConnectionState().PeerCertificates, nodeID)
}

// certNames checks that a verified peer chain's leaf names node id, or no
// node (a certificate of the region alone, which an operator's PKI may
// issue; the region itself was checked in the handshake).
func certNames(chain []*x509.Certificate, nodeID string) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	_, node, ok := tlsutil.Identity(chain[0])
	if !ok {
		return errors.New("its certificate names no region")
	}
	if node != "" && node != nodeID {
		return fmt.Errorf("its certificate names node %q, not %q", node, nodeID)
	}
	return nil
}
