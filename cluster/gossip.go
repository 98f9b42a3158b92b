package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// GossipProtocol is the version of the node metadata below.
const GossipProtocol = 1

// NodeMeta is what a node tells every other node, of every region, through
// gossip. It must stay small (memberlist allows 512 bytes).
type NodeMeta struct {
	Proto    int    `json:"p"`
	NodeID   string `json:"id"`
	Region   string `json:"r"`
	RaftAddr string `json:"ra"`
	GRPCAddr string `json:"ga"`
	// HasState: the node belongs to a bootstrapped Raft cluster; nodes
	// with bootstrap-expect never bootstrap when a peer of their region has.
	HasState bool `json:"hs,omitempty"`
	// Leader and Term: the node's own Raft state, so that any node can tell
	// every region's leader.
	Leader bool `json:"l,omitempty"`
	// LeaderID is the leader the node follows (itself when it leads),
	// empty while it knows none; ClusterID is the random id its region's
	// store was bootstrapped with, empty before. A region's leader does
	// not add a node that shows it belongs to another cluster formed under
	// the same region name: another cluster id, or a leader outside the
	// leader's own Raft configuration.
	LeaderID  string `json:"li,omitempty"`
	ClusterID string `json:"ci,omitempty"`
	// CommandVersion is the newest replicated command set the node applies.
	CommandVersion int    `json:"cv,omitempty"`
	Term           uint64 `json:"t,omitempty"`
	// AdminTokenID and AdminTokenHash: while its region has no admin, a node
	// holding a bootstrap admin token advertises its id and SHA-256 (never
	// the token) so that whichever node leads can create the admin.
	AdminTokenID   string `json:"at,omitempty"`
	AdminTokenHash []byte `json:"ah,omitempty"`
}

// OtherCluster reports whether m, a node of this region, shows that it
// belongs to another cluster than this one, whose cluster id is ours:
//   - it advertises a cluster id and this cluster has none or another (the
//     id is recorded with a region's first admin; a node seeded from a
//     backup by `mysteryboxd restore` advertises the id of the region
//     that backup seeds);
//   - or it follows a leader that this cluster has never had (isOurs says
//     whether a node id is in the configuration or the registry,
//     tombstones included: a node may follow a leader removed a moment
//     ago until its heartbeat timeout clears that).
//
// A node that shows neither is a new node, a wiped one, or one of this
// cluster's that was reaped and came back.
func (m NodeMeta) OtherCluster(ours string, isOurs func(nodeID string) bool) bool {
	if m.ClusterID != "" && m.ClusterID != ours {
		return true
	}
	return m.LeaderID != "" && !isOurs(m.LeaderID)
}

// leaderIDRoom is the length of the leader id a node's metadata must have
// room for, beyond its own id (which it shows as the leader id while it
// leads). The API takes node ids of up to 256 bytes, but with gossip an id
// counts twice in its node's metadata, so a node whose id runs much past
// 100 bytes refuses to start (metaFits says so). A longer leader id than
// leaderIDRoom is left out of the metadata (metaDelegate.NodeMeta), which
// turns off only discovery's leader test for another cluster.
const leaderIDRoom = 64

// metaFits checks that m can grow to its largest (following a leader with
// an id of leaderIDRoom bytes, a pending admin token, a cluster id, any
// term) and still fit in limit bytes: metadata that does not fit is not
// sent at all.
func metaFits(m NodeMeta, limit int) error {
	m.HasState, m.Leader = true, true
	m.CommandVersion, m.Term = 1<<20, ^uint64(0)
	m.LeaderID = strings.Repeat("n", max(leaderIDRoom, len(m.NodeID)))
	m.ClusterID = "cluster-06h4en2dgc7c7uku32b1a-seeded"
	m.AdminTokenID, m.AdminTokenHash = "token-06h4emf7kcit8kohgqobu", make([]byte, 32)
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(raw) > limit {
		return fmt.Errorf("gossip: this node's metadata can reach %d bytes, over memberlist's %d: shorten its id, region or advertised addresses (raft %q, grpc %q)", len(raw), limit, m.RaftAddr, m.GRPCAddr)
	}
	return nil
}

// Health of a gossip member.
const (
	HealthAlive   = "alive"
	HealthSuspect = "suspect"
	HealthDead    = "dead"
	HealthLeft    = "left"
)

// GossipMember is one node as gossip sees it.
type GossipMember struct {
	Meta NodeMeta
	// Health is alive, suspect, dead or left.
	Health string
	// Since is when the node entered its current health (dead/left only).
	Since time.Time
	// Addr is the member's advertised gossip address (host:port).
	Addr string
}

// GossipConfig configures membership gossip.
type GossipConfig struct {
	// BindAddr is host:port to listen on (TCP and UDP); port 0 picks one.
	BindAddr string
	// AdvertiseAddr is what peers dial (default: the bound address).
	AdvertiseAddr string
	// Key encrypts gossip (16, 24 or 32 bytes); nil leaves it in clear.
	Key []byte
	// Fast uses timings for loopback tests.
	Fast bool
	// Meta returns this node's current metadata.
	Meta func() NodeMeta
}

// Gossip is this node's view of every node of every region.
type Gossip struct {
	cfg    GossipConfig
	logger hclog.Logger
	ml     *memberlist.Memberlist
	addr   string // advertised gossip address, fixed once started

	mu      sync.Mutex
	members map[string]*GossipMember // by memberlist name (region/node id)
	meta    []byte                   // last metadata advertised
	changed chan struct{}
}

// NewGossip starts gossip on cfg.BindAddr. Join seeds with Join.
func NewGossip(cfg GossipConfig, logger hclog.Logger) (*Gossip, error) {
	g := &Gossip{cfg: cfg, logger: logger, members: map[string]*GossipMember{}, changed: make(chan struct{}, 1)}
	mc := memberlist.DefaultLANConfig()
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 50 * time.Millisecond
		mc.PushPullInterval = 2 * time.Second
		mc.SuspicionMult = 2
	}
	meta := cfg.Meta()
	if err := metaFits(meta, memberlist.MetaMaxSize); err != nil {
		return nil, err
	}
	mc.Name = meta.Region + "/" + meta.NodeID
	host, port, err := splitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip: bind address %q: %w", cfg.BindAddr, err)
	}
	mc.BindAddr, mc.BindPort = host, port
	if cfg.AdvertiseAddr != "" {
		ah, ap, err := splitHostPort(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip: advertise address %q: %w", cfg.AdvertiseAddr, err)
		}
		mc.AdvertiseAddr, mc.AdvertisePort = ah, ap
	}
	if len(cfg.Key) > 0 {
		mc.SecretKey = cfg.Key
	}
	mc.DeadNodeReclaimTime = 30 * time.Second
	mc.Delegate = &metaDelegate{g: g}
	mc.Events = &eventDelegate{g: g}
	mc.Logger = logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	// Read once, now: memberlist's LocalNode is the live state that
	// UpdateNode rewrites without a lock readers could take.
	n := ml.LocalNode()
	g.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	return g, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	if h == "" {
		h = "0.0.0.0"
	}
	return h, port, nil
}

// Addr is the address peers reach this node's gossip at.
func (g *Gossip) Addr() string { return g.addr }

// Join contacts seeds (any node of any region). It fails only when none
// answers; a wrong gossip key shows up as seeds that cannot be decrypted.
func (g *Gossip) Join(seeds []string) (int, error) {
	n, err := g.ml.Join(seeds)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("gossip: no seed answered (%v): %w (a different --gossip-key-file on the seeds gives this too)", seeds, err)
	}
	return n, nil
}

// Refresh re-advertises this node's metadata if it changed.
func (g *Gossip) Refresh() {
	raw, _ := json.Marshal(g.cfg.Meta())
	g.mu.Lock()
	same := string(raw) == string(g.meta)
	g.mu.Unlock()
	if same {
		return
	}
	if err := g.ml.UpdateNode(time.Second); err != nil {
		g.logger.Debug("advertising new metadata", "error", err)
	}
}

// Changed is signalled (without blocking gossip) when membership changes.
func (g *Gossip) Changed() <-chan struct{} { return g.changed }

// Members returns every node gossip knows of, of every region, sorted by
// region and node id.
func (g *Gossip) Members() []GossipMember {
	live := map[string]memberlist.NodeStateType{}
	for _, n := range g.ml.Members() {
		live[n.Name] = n.State
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]GossipMember, 0, len(g.members))
	for name, m := range g.members {
		c := *m
		if st, ok := live[name]; ok {
			switch st {
			case memberlist.StateSuspect:
				c.Health = HealthSuspect
			case memberlist.StateAlive:
				c.Health = HealthAlive
			}
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Meta.Region != out[j].Meta.Region {
			return out[i].Meta.Region < out[j].Meta.Region
		}
		return out[i].Meta.NodeID < out[j].Meta.NodeID
	})
	return out
}

// Member returns what gossip knows of one node.
func (g *Gossip) Member(region, nodeID string) (GossipMember, bool) {
	for _, m := range g.Members() {
		if m.Meta.Region == region && m.Meta.NodeID == nodeID {
			return m, true
		}
	}
	return GossipMember{}, false
}

// Leave tells the others this node is leaving, then stops gossip.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	if serr := g.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Close stops gossip without a goodbye (as a crash would).
func (g *Gossip) Close() error { return g.ml.Shutdown() }

func (g *Gossip) notify() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

func (g *Gossip) record(n *memberlist.Node, health string) {
	var meta NodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil || meta.NodeID == "" || meta.Region == "" {
		g.logger.Warn("ignoring a gossip member with unreadable metadata", "name", n.Name, "error", err)
		return
	}
	if meta.Proto != GossipProtocol {
		g.logger.Warn("ignoring a gossip member speaking another metadata version", "name", n.Name, "version", meta.Proto)
		return
	}
	if n.Name != meta.Region+"/"+meta.NodeID {
		g.logger.Warn("ignoring a gossip member whose name does not match its metadata", "name", n.Name, "region", meta.Region, "node_id", meta.NodeID)
		return
	}
	g.mu.Lock()
	prev := g.members[n.Name]
	m := &GossipMember{Meta: meta, Health: health, Addr: n.Address()}
	if prev != nil && prev.Health == health {
		m.Since = prev.Since
	} else {
		m.Since = time.Now()
	}
	g.members[n.Name] = m
	g.mu.Unlock()
	g.notify()
}

type metaDelegate struct{ g *Gossip }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	m := d.g.cfg.Meta()
	raw, _ := json.Marshal(m)
	if len(raw) > limit && m.LeaderID != "" {
		// A leader with a longer id than metaFits made room for.
		m.LeaderID = ""
		raw, _ = json.Marshal(m)
	}
	if len(raw) > limit {
		d.g.logger.Error("gossip metadata too large", "bytes", len(raw), "limit", limit)
		return nil
	}
	d.g.mu.Lock()
	d.g.meta = raw
	d.g.mu.Unlock()
	return raw
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

type eventDelegate struct{ g *Gossip }

func (e *eventDelegate) NotifyJoin(n *memberlist.Node)   { e.g.record(n, HealthAlive) }
func (e *eventDelegate) NotifyUpdate(n *memberlist.Node) { e.g.record(n, HealthAlive) }
func (e *eventDelegate) NotifyLeave(n *memberlist.Node) {
	health := HealthDead
	if n.State == memberlist.StateLeft {
		health = HealthLeft
	}
	e.g.record(n, health)
}

// ErrNoGossip is returned by discovery calls on a node without gossip.
var ErrNoGossip = errors.New("gossip is not enabled on this node")
