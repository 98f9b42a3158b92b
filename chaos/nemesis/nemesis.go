// Package nemesis injects the chaos campaign's faults into a harness
// cluster, one after another from a seeded random schedule: a fault is
// chosen, applied to targets chosen at that moment (the leader is only
// known then), held for a random time, healed, and followed by a quiet gap.
//
// Faults (Kinds):
//
//	kill              SIGKILL a random node, restart it when healed
//	kill-leader       SIGKILL the leader
//	kill-majority     SIGKILL a majority at once (2 of 3, 3 of 5)
//	pause-leader      SIGSTOP the leader for longer than the election timeout, then SIGCONT
//	partition-leader  cut the leader off from every other node
//	partition-split   split the nodes into a majority and a minority
//	partition-oneway  one node's packets to the others are dropped (or the others' to it)
//	partition-bridge  two halves that only a middle node sees both of
//	slow-net          20-150 ms delay with jitter on every node-to-node link
//	lossy-net         5-20 % segment loss (retransmission stalls) on every link
//	membership        cut a follower off, remove it from Raft meanwhile, heal, re-add it
//	wipe-rejoin       kill a follower, remove it, wipe its data, start it with a new id
//	snapshot-catchup  cut a follower off until the leader has compacted past it, so that
//	                  it must catch up from a snapshot
//	mixed             two of the simple faults above at once
//
// Every applied fault is an Event (what, on whom, when, healed when), saved
// with the run so that a failure can be replayed with the same seed.
package nemesis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mysterybox/mysterybox/chaos/harness"
	"github.com/mysterybox/mysterybox/chaos/proxy"
)

// Kinds of faults.
const (
	Kill            = "kill"
	KillLeader      = "kill-leader"
	KillMajority    = "kill-majority"
	PauseLeader     = "pause-leader"
	PartitionLeader = "partition-leader"
	PartitionSplit  = "partition-split"
	PartitionOneway = "partition-oneway"
	PartitionBridge = "partition-bridge"
	SlowNet         = "slow-net"
	LossyNet        = "lossy-net"
	Membership      = "membership"
	WipeRejoin      = "wipe-rejoin"
	SnapshotCatchup = "snapshot-catchup"
	Mixed           = "mixed"
)

// All lists every kind, in the order of the report.
var All = []string{Kill, KillLeader, KillMajority, PauseLeader, PartitionLeader, PartitionSplit,
	PartitionOneway, PartitionBridge, SlowNet, LossyNet, Membership, WipeRejoin, SnapshotCatchup, Mixed}

// simple faults can be combined by Mixed.
var simple = []string{Kill, KillLeader, PauseLeader, PartitionLeader, PartitionSplit, PartitionOneway, PartitionBridge, SlowNet, LossyNet}

// Config configures the nemesis.
type Config struct {
	Seed uint64
	// Faults are the kinds to choose from (default: all but
	// snapshot-catchup, which needs minutes).
	Faults []string
	// HoldMin/HoldMax bound how long a fault stays; GapMin/GapMax the quiet
	// time after it is healed.
	HoldMin, HoldMax time.Duration
	GapMin, GapMax   time.Duration
	// Fill, when set, writes as fast as it can until its context ends
	// (snapshot-catchup uses it to push the log past a cut-off follower).
	Fill func(ctx context.Context)
	// SnapshotThreshold and TrailingLogs are the nodes' Raft settings
	// (mysteryboxd's defaults 8192 and 10240 when zero); SnapshotWait
	// bounds snapshot-catchup.
	SnapshotThreshold uint64
	TrailingLogs      uint64
	SnapshotWait      time.Duration
	Logf              func(format string, args ...any)
}

// Event is one applied fault.
type Event struct {
	Seq     int      `json:"seq"`
	Fault   string   `json:"fault"`
	Parts   []string `json:"parts,omitempty"` // for mixed
	Targets []string `json:"targets,omitempty"`
	Detail  string   `json:"detail,omitempty"`
	// Start and Healed are seconds since the campaign's start.
	Start  float64 `json:"start"`
	Healed float64 `json:"healed"`
	Err    string  `json:"error,omitempty"`
}

// netFault is the network part of an active fault.
type netFault struct {
	blocked []proxy.Link
	quality map[proxy.Link]proxy.Quality
}

// Nemesis injects faults into a cluster.
type Nemesis struct {
	cfg   Config
	c     *harness.Cluster
	start time.Time
	rng   *rand.Rand

	mu     sync.Mutex
	events []Event
	counts map[string]int
	net    map[int]netFault // by event seq
	seq    int
	deck   []string
}

// New returns a nemesis for c; start is the campaign's time zero.
func New(cfg Config, c *harness.Cluster, start time.Time) *Nemesis {
	if len(cfg.Faults) == 0 {
		for _, k := range All {
			if k != SnapshotCatchup {
				cfg.Faults = append(cfg.Faults, k)
			}
		}
	}
	if cfg.HoldMin <= 0 {
		cfg.HoldMin = 4 * time.Second
	}
	if cfg.HoldMax < cfg.HoldMin {
		cfg.HoldMax = 3 * cfg.HoldMin
	}
	if cfg.GapMin <= 0 {
		cfg.GapMin = 2 * time.Second
	}
	if cfg.GapMax < cfg.GapMin {
		cfg.GapMax = 2 * cfg.GapMin
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 8192
	}
	if cfg.TrailingLogs == 0 {
		cfg.TrailingLogs = 10240
	}
	if cfg.SnapshotWait <= 0 {
		cfg.SnapshotWait = 6 * time.Minute
	}
	return &Nemesis{cfg: cfg, c: c, start: start, rng: rand.New(rand.NewPCG(cfg.Seed, 0x6e656d65)),
		counts: map[string]int{}, net: map[int]netFault{}}
}

// Validate reports unknown fault kinds.
func Validate(kinds []string) error {
	for _, k := range kinds {
		if !slices.Contains(All, k) {
			return fmt.Errorf("unknown fault %q (known: %s)", k, strings.Join(All, ", "))
		}
	}
	return nil
}

func (n *Nemesis) logf(format string, args ...any) {
	if n.cfg.Logf != nil {
		n.cfg.Logf(format, args...)
	}
}

func (n *Nemesis) since() float64 { return time.Since(n.start).Seconds() }

// Events returns the faults applied so far.
func (n *Nemesis) Events() []Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Event(nil), n.events...)
}

// Counts returns how many faults of each kind were injected (a mixed
// fault counts as mixed and as each of its parts).
func (n *Nemesis) Counts() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int{}
	for k, v := range n.counts {
		out[k] = v
	}
	return out
}

func (n *Nemesis) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(n.rng.Int64N(int64(hi-lo)))
}

// sleep waits d or until ctx ends (a timed schedule, not a wait for a
// condition).
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Run injects faults until ctx ends, then heals the last one (with a
// context of its own). The first fault comes after one gap.
func (n *Nemesis) Run(ctx context.Context) {
	for {
		sleep(ctx, n.between(n.cfg.GapMin, n.cfg.GapMax))
		if ctx.Err() != nil {
			return
		}
		n.inject(ctx, n.draw())
	}
}

// draw deals the next kind from a shuffled deck of the configured kinds,
// reshuffled when empty: random, yet every kind comes up once per round.
func (n *Nemesis) draw() string {
	if len(n.deck) == 0 {
		n.deck = append([]string(nil), n.cfg.Faults...)
		n.rng.Shuffle(len(n.deck), func(i, j int) { n.deck[i], n.deck[j] = n.deck[j], n.deck[i] })
	}
	k := n.deck[0]
	n.deck = n.deck[1:]
	return k
}

// Inject applies one fault of the given kind now, holds it and heals it.
func (n *Nemesis) Inject(ctx context.Context, kind string) Event { return n.inject(ctx, kind) }

func (n *Nemesis) inject(ctx context.Context, kind string) Event {
	n.mu.Lock()
	n.seq++
	ev := Event{Seq: n.seq, Fault: kind, Start: n.since()}
	n.mu.Unlock()
	// Heal with a context of its own: the campaign's may end mid-fault.
	healCtx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var heals []func(context.Context) error
	var err error
	switch kind {
	case Membership, WipeRejoin, SnapshotCatchup:
		err = n.special(ctx, kind, &ev)
	case Mixed:
		parts := append([]string(nil), simple...)
		n.rng.Shuffle(len(parts), func(i, j int) { parts[i], parts[j] = parts[j], parts[i] })
		ev.Parts = parts[:2]
		hold := n.holdFor(parts[0])
		for _, p := range ev.Parts {
			h, e := n.applySimple(ctx, p, &ev)
			if h != nil {
				heals = append(heals, h)
			}
			err = errors.Join(err, e)
			hold = max(hold, n.holdFor(p))
		}
		n.logf("fault %d %s %v on %v %s; holding %v", ev.Seq, kind, ev.Parts, ev.Targets, ev.Detail, hold)
		sleep(ctx, hold)
	default:
		h, e := n.applySimple(ctx, kind, &ev)
		if h != nil {
			heals = append(heals, h)
		}
		err = e
		hold := n.holdFor(kind)
		n.logf("fault %d %s on %v %s; holding %v", ev.Seq, kind, ev.Targets, ev.Detail, hold)
		sleep(ctx, hold)
	}
	for i := len(heals) - 1; i >= 0; i-- {
		err = errors.Join(err, heals[i](healCtx))
	}
	ev.Healed = n.since()
	if err != nil {
		ev.Err = err.Error()
		n.logf("fault %d %s: %v", ev.Seq, kind, err)
	}
	n.mu.Lock()
	n.events = append(n.events, ev)
	n.counts[kind]++
	for _, p := range ev.Parts {
		n.counts[p]++
	}
	n.mu.Unlock()
	n.logf("healed fault %d %s after %.1fs", ev.Seq, kind, ev.Healed-ev.Start)
	return ev
}

func (n *Nemesis) holdFor(kind string) time.Duration {
	d := n.between(n.cfg.HoldMin, n.cfg.HoldMax)
	if kind == PauseLeader {
		// Longer than the election timeout (1 s by default) by far.
		d = max(d, 3*time.Second)
	}
	return d
}

// running returns the slots whose node runs (not paused), shuffled.
func (n *Nemesis) running() []int {
	var out []int
	for _, s := range n.c.Slots() {
		if s.State == harness.Running {
			out = append(out, s.Index)
		}
	}
	n.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func (n *Nemesis) all() []int {
	var out []int
	for i := 1; i <= n.c.Size(); i++ {
		out = append(out, i)
	}
	n.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// leader returns the leader's slot, or a random running one when there is
// none right now.
func (n *Nemesis) leader(ctx context.Context) (int, bool) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if l := n.c.Leader(lctx); l != 0 {
		return l, true
	}
	if r := n.running(); len(r) > 0 {
		return r[0], false
	}
	return 0, false
}

func (n *Nemesis) ids(slots ...int) []string {
	var out []string
	for _, s := range slots {
		out = append(out, n.c.Slot(s).ID)
	}
	return out
}

// between groups: every directed link from a node of one group to a node
// of another.
func cutBetween(groups ...[]int) []proxy.Link {
	var out []proxy.Link
	for gi, g := range groups {
		for hi, h := range groups {
			if gi == hi {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					out = append(out, proxy.Link{From: a, To: b})
				}
			}
		}
	}
	return out
}

func without(all []int, x int) []int {
	var out []int
	for _, a := range all {
		if a != x {
			out = append(out, a)
		}
	}
	return out
}

// setNet adds (or, with f nil, removes) event seq's network fault and
// applies the union of all active ones.
func (n *Nemesis) setNet(seq int, f *netFault) error {
	n.mu.Lock()
	if f == nil {
		delete(n.net, seq)
	} else {
		n.net[seq] = *f
	}
	var blocked []proxy.Link
	quality := map[proxy.Link]proxy.Quality{}
	keys := make([]int, 0, len(n.net))
	for k := range n.net {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		blocked = append(blocked, n.net[k].blocked...)
		for l, q := range n.net[k].quality {
			quality[l] = q
		}
	}
	n.mu.Unlock()
	return n.c.SetNet(blocked, quality)
}

func (n *Nemesis) netHeal(seq int) func(context.Context) error {
	return func(context.Context) error { return n.setNet(seq, nil) }
}

func (n *Nemesis) restart(slots ...int) func(context.Context) error {
	return func(context.Context) error {
		var err error
		for _, s := range slots {
			err = errors.Join(err, n.c.Restart(s))
		}
		return err
	}
}

// applySimple applies a simple fault and returns how to heal it.
func (n *Nemesis) applySimple(ctx context.Context, kind string, ev *Event) (func(context.Context) error, error) {
	size := n.c.Size()
	switch kind {
	case Kill:
		r := n.running()
		if len(r) == 0 {
			return nil, errors.New("no running node")
		}
		ev.Targets = append(ev.Targets, n.ids(r[0])...)
		return n.restart(r[0]), n.c.Kill(r[0])
	case KillLeader:
		l, ok := n.leader(ctx)
		if l == 0 {
			return nil, errors.New("no running node")
		}
		if !ok {
			ev.Detail += " (no leader: a random node)"
		}
		ev.Targets = append(ev.Targets, n.ids(l)...)
		return n.restart(l), n.c.Kill(l)
	case KillMajority:
		victims := n.all()[:size/2+1]
		ev.Targets = append(ev.Targets, n.ids(victims...)...)
		var err error
		for _, v := range victims {
			err = errors.Join(err, n.c.Kill(v))
		}
		return n.restart(victims...), err
	case PauseLeader:
		l, ok := n.leader(ctx)
		if l == 0 {
			return nil, errors.New("no running node")
		}
		if !ok {
			ev.Detail += " (no leader: a random node)"
		}
		ev.Targets = append(ev.Targets, n.ids(l)...)
		return func(context.Context) error { return n.c.Resume(l) }, n.c.Pause(l)
	case PartitionLeader:
		l, ok := n.leader(ctx)
		if l == 0 {
			l = n.all()[0]
		}
		if !ok {
			ev.Detail += " (no leader: a random node)"
		}
		ev.Targets = append(ev.Targets, n.ids(l)...)
		return n.netHeal(ev.Seq), n.setNet(ev.Seq, &netFault{blocked: cutBetween([]int{l}, without(n.all(), l))})
	case PartitionSplit:
		all := n.all()
		minority := all[:(size-1)/2]
		majority := all[(size-1)/2:]
		ev.Targets = append(ev.Targets, n.ids(minority...)...)
		ev.Detail += fmt.Sprintf(" %v | %v", n.ids(minority...), n.ids(majority...))
		return n.netHeal(ev.Seq), n.setNet(ev.Seq, &netFault{blocked: cutBetween(minority, majority)})
	case PartitionOneway:
		all := n.all()
		x, rest := all[0], all[1:]
		var links []proxy.Link
		if n.rng.IntN(2) == 0 {
			ev.Detail += fmt.Sprintf(" %s cannot send", n.c.Slot(x).ID)
			for _, r := range rest {
				links = append(links, proxy.Link{From: x, To: r})
			}
		} else {
			ev.Detail += fmt.Sprintf(" %s cannot receive", n.c.Slot(x).ID)
			for _, r := range rest {
				links = append(links, proxy.Link{From: r, To: x})
			}
		}
		ev.Targets = append(ev.Targets, n.ids(x)...)
		return n.netHeal(ev.Seq), n.setNet(ev.Seq, &netFault{blocked: links})
	case PartitionBridge:
		all := n.all()
		half := (size - 1) / 2
		left, bridge, right := all[:half], all[half], all[half+1:]
		ev.Targets = append(ev.Targets, n.ids(bridge)...)
		ev.Detail += fmt.Sprintf(" %v - %s - %v", n.ids(left...), n.c.Slot(bridge).ID, n.ids(right...))
		return n.netHeal(ev.Seq), n.setNet(ev.Seq, &netFault{blocked: cutBetween(left, right)})
	case SlowNet, LossyNet:
		q := proxy.Quality{}
		if kind == SlowNet {
			q.Delay = n.between(20*time.Millisecond, 150*time.Millisecond)
			q.Jitter = q.Delay / 2
			ev.Detail += fmt.Sprintf(" delay %v jitter %v", q.Delay, q.Jitter)
		} else {
			q.Delay = 2 * time.Millisecond
			q.Loss = 0.05 + 0.15*n.rng.Float64()
			ev.Detail += fmt.Sprintf(" loss %.0f%%", 100*q.Loss)
		}
		quality := map[proxy.Link]proxy.Quality{}
		for a := 1; a <= size; a++ {
			for b := 1; b <= size; b++ {
				if a != b {
					quality[proxy.Link{From: a, To: b}] = q
				}
			}
		}
		return n.netHeal(ev.Seq), n.setNet(ev.Seq, &netFault{quality: quality})
	}
	return nil, fmt.Errorf("unknown fault %q", kind)
}

// follower returns a random running slot other than the leader's.
func (n *Nemesis) follower(ctx context.Context) (int, error) {
	l, _ := n.leader(ctx)
	for _, s := range n.running() {
		if s != l {
			return s, nil
		}
	}
	return 0, errors.New("no running follower")
}

// untilOK retries fn until it succeeds or d passes.
func untilOK(ctx context.Context, d time.Duration, what string, fn func(ctx context.Context) error) error {
	return harness.Poll(ctx, d, what, func() (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := fn(cctx)
		return err == nil, err
	})
}

// isVoter reports whether id is a voter of the region.
func (n *Nemesis) isVoter(ctx context.Context, id string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ms, err := n.c.Members(cctx)
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.GetNodeId() == id && m.GetRaftRole() != "nonvoter" {
			return true, nil
		}
	}
	return false, nil
}

// special runs the faults that are more than apply-hold-heal.
func (n *Nemesis) special(ctx context.Context, kind string, ev *Event) error {
	bg, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	x, err := n.follower(ctx)
	if err != nil {
		return err
	}
	id := n.c.Slot(x).ID
	ev.Targets = append(ev.Targets, id)
	switch kind {
	case Membership:
		cut := &netFault{blocked: cutBetween([]int{x}, without(n.all(), x))}
		if err := n.setNet(ev.Seq, cut); err != nil {
			return err
		}
		err := untilOK(bg, 60*time.Second, "removing "+id, func(ctx context.Context) error { return n.c.RemoveNode(ctx, id) })
		ev.Detail += " cut off and removed"
		hold := n.holdFor(kind)
		n.logf("fault %d %s: %s cut off and removed (%v); holding %v", ev.Seq, kind, id, err, hold)
		sleep(ctx, hold)
		err = errors.Join(err, n.setNet(ev.Seq, nil))
		// Re-add it (gossip may already have, which is fine: Join of a
		// voter is a no-op).
		err = errors.Join(err, untilOK(bg, 60*time.Second, "re-adding "+id, func(ctx context.Context) error { return n.c.Join(ctx, x) }))
		err = errors.Join(err, harness.Poll(bg, 60*time.Second, id+" to be a voter again", func() (bool, error) { return n.isVoter(bg, id) }))
		return err
	case WipeRejoin:
		if err := n.c.Kill(x); err != nil {
			return err
		}
		err := untilOK(bg, 60*time.Second, "removing "+id, func(ctx context.Context) error { return n.c.RemoveNode(ctx, id) })
		if err != nil {
			_ = n.c.Restart(x)
			return err
		}
		newID, err := n.c.Wipe(x)
		if err != nil {
			return err
		}
		ev.Detail += " wiped and rejoined as " + newID
		n.logf("fault %d %s: %s wiped, rejoining as %s", ev.Seq, kind, id, newID)
		return harness.Poll(bg, 90*time.Second, newID+" to join as a voter", func() (bool, error) { return n.isVoter(bg, newID) })
	case SnapshotCatchup:
		return n.snapshotCatchup(ctx, x, ev)
	}
	return fmt.Errorf("unknown fault %q", kind)
}

// snapshotCatchup cuts follower x off and writes until the leader has
// taken a snapshot and compacted its log past x's last entry, then heals
// and waits until x has installed a snapshot and caught up.
func (n *Nemesis) snapshotCatchup(ctx context.Context, x int, ev *Event) error {
	id := n.c.Slot(x).ID
	if n.cfg.Fill == nil {
		return errors.New("snapshot-catchup needs a filler")
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	st, err := n.c.Status(sctx, x)
	cancel()
	if err != nil {
		return err
	}
	behind := st.GetLastLogIndex()
	if err := n.setNet(ev.Seq, &netFault{blocked: cutBetween([]int{x}, without(n.all(), x))}); err != nil {
		return err
	}
	// Fill until the log is long enough for a snapshot that compacts past
	// x (TrailingLogs beyond it, plus the snapshot threshold); then wait
	// for the leader's snapshot timer (--raft-snapshot-interval, 120-240 s
	// by default) while the workload goes on.
	fctx, stopFill := context.WithCancel(ctx)
	defer stopFill()
	done := make(chan struct{})
	go func() { defer close(done); n.cfg.Fill(fctx) }()
	n.logf("fault %d %s: %s cut off at log index %d; filling until the leader compacts past it", ev.Seq, SnapshotCatchup, id, behind)
	var snap uint64
	err = harness.Poll(ctx, n.cfg.SnapshotWait, "the leader to compact its log past "+id, func() (bool, error) {
		l := n.c.Leader(ctx)
		if l == 0 || l == x {
			return false, nil
		}
		if fctx.Err() == nil {
			if st, err := n.c.Status(ctx, l); err == nil && st.GetLastLogIndex() > behind+n.cfg.TrailingLogs+n.cfg.SnapshotThreshold+1000 {
				stopFill()
				<-done
				n.logf("fault %d %s: log at %d; waiting for the leader's snapshot", ev.Seq, SnapshotCatchup, st.GetLastLogIndex())
			}
		}
		snap = latestSnapshot(n.c.Slot(l).DataDir)
		return snap > behind+n.cfg.TrailingLogs, nil
	})
	stopFill()
	<-done
	ev.Detail += fmt.Sprintf(" cut off at index %d, leader snapshot at %d", behind, snap)
	herr := n.setNet(ev.Seq, nil)
	if err != nil {
		return errors.Join(err, herr)
	}
	bg, cancel2 := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel2()
	return errors.Join(herr, harness.Poll(bg, 2*time.Minute, id+" to install a snapshot", func() (bool, error) {
		return latestSnapshot(n.c.Slot(x).DataDir) >= snap, nil
	}))
}

// latestSnapshot returns the index of the newest Raft snapshot in a node's
// data directory (hashicorp/raft's file snapshot store names each one
// <term>-<index>-<millis>), or 0.
func latestSnapshot(dataDir string) uint64 {
	ents, err := os.ReadDir(filepath.Join(dataDir, "raft", "snapshots"))
	if err != nil {
		return 0
	}
	var best uint64
	for _, e := range ents {
		parts := strings.Split(e.Name(), "-")
		if len(parts) != 3 || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		if idx, err := strconv.ParseUint(parts[1], 10, 64); err == nil && idx > best {
			if _, err := os.Stat(filepath.Join(dataDir, "raft", "snapshots", e.Name(), "meta.json")); err == nil {
				best = idx
			}
		}
	}
	return best
}

// HealAll removes every fault: heals the network, resumes paused nodes,
// restarts stopped ones, re-adds any current node that is not a voter,
// and waits for a healthy region.
func (n *Nemesis) HealAll(ctx context.Context, d time.Duration) error {
	n.mu.Lock()
	n.net = map[int]netFault{}
	n.mu.Unlock()
	err := n.c.HealNet()
	for i := 1; i <= n.c.Size(); i++ {
		err = errors.Join(err, n.c.Resume(i), n.c.Restart(i))
	}
	deadline := time.Now().Add(d)
	for i := 1; i <= n.c.Size(); i++ {
		id := n.c.Slot(i).ID
		if ok, _ := n.isVoter(ctx, id); !ok {
			err = errors.Join(err, untilOK(ctx, time.Until(deadline), "re-adding "+id, func(ctx context.Context) error { return n.c.Join(ctx, i) }))
		}
	}
	return errors.Join(err, n.c.WaitHealthy(ctx, time.Until(deadline)))
}
