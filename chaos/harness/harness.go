// Package harness runs a region of real mysteryboxd processes for chaos
// tests: it starts, kills, pauses, restarts and wipes nodes, puts a
// fault-injecting proxy (package proxy) in front of every node's Raft and
// gRPC ports, cuts links, asks nodes for their Raft status, and at the end
// stops the region in an orderly way and opens each node's store offline
// to compare replicas.
//
// Nodes occupy slots 1..N; a slot keeps its addresses and proxies for the
// whole campaign, while the node in it may be replaced (wiped and rejoined
// under a new id, which is never reused). A region is formed either by hand
// (the first node --bootstrap, the others --join-raft) or through gossip
// (--bootstrap-expect), see docs/operations.md.
package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/chaos/proxy"
	"github.com/mysterybox/mysterybox/store"
)

// Formation says how the region is formed.
const (
	Manual = "manual" // --bootstrap on slot 1, --join-raft on the others, no gossip
	Gossip = "gossip" // --bootstrap-expect N with gossip between all nodes
)

// Config describes the region to run.
type Config struct {
	// Dir holds data/<node id>, logs/<node id>.log, keys and tokens.
	Dir string
	// Bin is the mysteryboxd binary.
	Bin       string
	Nodes     int
	Region    string
	Formation string
	Network   Network
	// ExtraArgs are appended to every node's command line.
	ExtraArgs []string
	// Seed drives the proxies' jitter and loss.
	Seed uint64
	// Logf reports progress (may be nil).
	Logf func(format string, args ...any)
}

// State of a slot's process.
type State int

// States.
const (
	Stopped State = iota
	Running
	Paused
)

func (s State) String() string {
	return [...]string{"stopped", "running", "paused"}[s]
}

// Slot is one place for a node.
type Slot struct {
	Index int
	// ID is the current node's id; DataDir and Log are its own.
	ID      string
	DataDir string
	Log     string
	// GRPC, Raft, Gossip are the real listen addresses; GRPCAdv and RaftAdv
	// the proxies peers dial (what the node advertises).
	GRPC, Raft, Gossip string
	GRPCAdv, RaftAdv   string

	grpcProxy, raftProxy *proxy.Proxy
	bootstrap            bool // slot 1 of a manual region, until wiped

	state    State
	cmd      *exec.Cmd
	pid      int
	expected bool // the next exit is the harness's doing
	// killedAtStop: StopAll had to kill it (its store may lag).
	killedAtStop bool
	exited       chan struct{}
	ctrl         *grpc.ClientConn
}

// Exit is a node process that ended.
type Exit struct {
	Slot     int       `json:"slot"`
	ID       string    `json:"id"`
	At       time.Time `json:"at"`
	Status   string    `json:"status"`
	Expected bool      `json:"expected"`
}

// Cluster is a running region.
type Cluster struct {
	cfg       Config
	rules     *proxy.Rules
	keyring   string
	gossipKey string
	tokenFile string
	token     string

	mu     sync.Mutex
	slots  []*Slot // index 0 unused
	exits  []Exit
	nextID int
	admin  *client.Client
}

func (c *Cluster) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// Start creates the region's keys, proxies and nodes, and waits until it
// has a leader, its admin token and every node as a voter.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Region == "" {
		cfg.Region = "chaos1"
	}
	if cfg.Formation == "" {
		cfg.Formation = Manual
	}
	if cfg.Nodes < 1 {
		return nil, errors.New("harness: no nodes")
	}
	c := &Cluster{cfg: cfg, rules: proxy.NewRules(cfg.Seed), nextID: cfg.Nodes + 1}
	for _, d := range []string{"data", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	c.keyring = filepath.Join(cfg.Dir, "keyring.json")
	c.gossipKey = filepath.Join(cfg.Dir, "gossip.key")
	c.tokenFile = filepath.Join(cfg.Dir, "admin.token")
	if err := keygen(cfg.Bin, c.keyring, "--key-id", "k1"); err != nil {
		return nil, err
	}
	if err := keygen(cfg.Bin, c.gossipKey, "--gossip"); err != nil {
		return nil, err
	}
	c.slots = make([]*Slot, cfg.Nodes+1)
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	for i := 1; i <= cfg.Nodes; i++ {
		s, err := c.newSlot(i)
		if err != nil {
			return nil, err
		}
		c.slots[i] = s
	}
	c.slots[1].bootstrap = cfg.Formation == Manual
	if cfg.Formation == Manual {
		if err := c.startNode(c.slots[1]); err != nil {
			return nil, err
		}
		if err := c.waitToken(ctx); err != nil {
			return nil, err
		}
		for i := 2; i <= cfg.Nodes; i++ {
			if err := c.startNode(c.slots[i]); err != nil {
				return nil, err
			}
		}
	} else {
		for i := 1; i <= cfg.Nodes; i++ {
			if err := c.startNode(c.slots[i]); err != nil {
				return nil, err
			}
		}
		if err := c.waitToken(ctx); err != nil {
			return nil, err
		}
	}
	var eps []string
	for _, s := range c.slots[1:] {
		eps = append(eps, s.GRPC)
	}
	var err error
	c.admin, err = client.New(ctx, client.Config{Endpoints: eps, Token: c.token, Timeout: 10 * time.Second, AttemptTimeout: 2 * time.Second, DisableDiscovery: true})
	if err != nil {
		return nil, err
	}
	if err := c.WaitHealthy(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

func keygen(bin, path string, args ...string) error {
	out, err := exec.Command(bin, append([]string{"keygen"}, args...)...).Output()
	if err != nil {
		return fmt.Errorf("harness: mysteryboxd keygen %v: %w", args, err)
	}
	return os.WriteFile(path, out, 0o600)
}

func (c *Cluster) newSlot(i int) (*Slot, error) {
	s := &Slot{Index: i}
	var err error
	s.GRPC, s.Raft, s.Gossip, err = c.cfg.Network.Addrs(i)
	if err != nil {
		return nil, err
	}
	for _, port := range []string{"grpc", "raft"} {
		ln, err := c.cfg.Network.ProxyListen(i, port)
		if err != nil {
			return nil, fmt.Errorf("harness: proxy for slot %d %s: %w", i, port, err)
		}
		upstream := s.GRPC
		if port == "raft" {
			upstream = s.Raft
		}
		p := proxy.New(ln, i, upstream, c.identify, c.rules)
		if port == "grpc" {
			s.grpcProxy, s.GRPCAdv = p, p.Addr()
		} else {
			s.raftProxy, s.RaftAdv = p, p.Addr()
		}
	}
	s.setID(c.cfg.Dir, fmt.Sprintf("n%d", i))
	s.ctrl, err = grpc.NewClient("passthrough:///"+s.GRPC,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second}, MinConnectTimeout: 2 * time.Second}))
	return s, err
}

func (s *Slot) setID(dir, id string) {
	s.ID = id
	s.DataDir = filepath.Join(dir, "data", id)
	s.Log = filepath.Join(dir, "logs", id+".log")
}

// identify maps a proxied connection to the slot of the node that dialled.
func (c *Cluster) identify(conn net.Conn) int {
	c.mu.Lock()
	pids := map[int]int{}
	for _, s := range c.slots[1:] {
		if s != nil && s.state != Stopped {
			pids[s.pid] = s.Index
		}
	}
	c.mu.Unlock()
	if slot, ok := c.cfg.Network.Identify(conn, pids); ok {
		return slot
	}
	return proxy.External
}

func (c *Cluster) args(s *Slot) []string {
	a := []string{
		"--region", c.cfg.Region, "--node-id", s.ID, "--data-dir", s.DataDir,
		"--grpc-addr", s.GRPC, "--grpc-advertise", s.GRPCAdv,
		"--raft-addr", s.Raft, "--raft-advertise", s.RaftAdv,
		"--master-key-file", c.keyring, "--shutdown-timeout", "5s",
	}
	var others []string
	for _, o := range c.slots[1:] {
		if o != nil && o != s {
			if c.cfg.Formation == Manual {
				others = append(others, o.GRPCAdv)
			} else {
				others = append(others, o.Gossip)
			}
		}
	}
	if c.cfg.Formation == Manual {
		a = append(a, "--gossip-addr=")
		if s.bootstrap {
			a = append(a, "--bootstrap", "--bootstrap-admin-token-file", c.tokenFile)
		} else {
			a = append(a, "--join-raft", strings.Join(others, ","), "--join-token-file", c.tokenFile)
		}
	} else {
		a = append(a, "--gossip-addr", s.Gossip, "--join", strings.Join(others, ","),
			"--bootstrap-expect", fmt.Sprint(c.cfg.Nodes), "--gossip-key-file", c.gossipKey)
		if s.Index == 1 && c.token == "" {
			a = append(a, "--bootstrap-admin-token-file", c.tokenFile)
		}
	}
	return append(a, c.cfg.ExtraArgs...)
}

// startNode starts s's node, taking c.mu.
func (c *Cluster) startNode(s *Slot) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.start(s)
}

// start starts s's node; the caller holds c.mu.
func (c *Cluster) start(s *Slot) error {
	if s.state != Stopped {
		return fmt.Errorf("harness: %s is %s", s.ID, s.state)
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== chaos harness: starting %s in slot %d at %s\n", s.ID, s.Index, time.Now().Format(time.RFC3339Nano))
	cmd := c.cfg.Network.Command(s.Index, c.cfg.Bin, c.args(s)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	// Die with the driver: no node outlives a crashed campaign.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("harness: start %s: %w", s.ID, err)
	}
	s.cmd, s.pid, s.state, s.expected = cmd, cmd.Process.Pid, Running, false
	s.exited = make(chan struct{})
	go c.wait(s, cmd, logf, s.exited)
	c.logf("started %s (slot %d, pid %d)", s.ID, s.Index, s.pid)
	return nil
}

// cleanEnv drops MYSTERYBOX_* variables, which would override flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MYSTERYBOX_") {
			env = append(env, kv)
		}
	}
	return env
}

func (c *Cluster) wait(s *Slot, cmd *exec.Cmd, logf *os.File, done chan struct{}) {
	err := cmd.Wait()
	fmt.Fprintf(logf, "=== chaos harness: %s exited: %v\n", s.ID, err)
	logf.Close()
	c.mu.Lock()
	st := "exit 0"
	if err != nil {
		st = err.Error()
	}
	c.exits = append(c.exits, Exit{Slot: s.Index, ID: s.ID, At: time.Now(), Status: st, Expected: s.expected})
	if !s.expected {
		c.logf("UNEXPECTED EXIT of %s: %s", s.ID, st)
	}
	if s.cmd == cmd {
		s.state = Stopped
	}
	c.mu.Unlock()
	close(done)
}

func (c *Cluster) waitToken(ctx context.Context) error {
	return Poll(ctx, 60*time.Second, "the admin token file", func() (bool, error) {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			return false, nil
		}
		c.token = strings.TrimSpace(string(b))
		return true, nil
	})
}

// Poll calls cond every 100ms until it returns true, an error, or d
// passes.
func Poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("timed out after %v waiting for %s: %v", d, what, last)
			}
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// Token is the region admin's token.
func (c *Cluster) Token() string { return c.token }

// Admin is a client with the admin token over every node's real address.
func (c *Cluster) Admin() *client.Client { return c.admin }

// Endpoints are the real gRPC addresses of all slots, for clients.
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, s := range c.slots[1:] {
		out = append(out, s.GRPC)
	}
	return out
}

// Size is the number of slots.
func (c *Cluster) Size() int { return len(c.slots) - 1 }

// SlotInfo is a copy of a slot's identity and state.
type SlotInfo struct {
	Index   int
	ID      string
	State   State
	PID     int
	DataDir string
	Log     string
	GRPCAdv string
	RaftAdv string
}

// Slot returns slot i's current identity and state.
func (c *Cluster) Slot(i int) SlotInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.slots[i]
	return SlotInfo{Index: s.Index, ID: s.ID, State: s.state, PID: s.pid, DataDir: s.DataDir, Log: s.Log, GRPCAdv: s.GRPCAdv, RaftAdv: s.RaftAdv}
}

// Slots returns all slots' identities and states.
func (c *Cluster) Slots() []SlotInfo {
	var out []SlotInfo
	for i := 1; i < len(c.slots); i++ {
		out = append(out, c.Slot(i))
	}
	return out
}

// Exits returns every node exit so far.
func (c *Cluster) Exits() []Exit {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Exit(nil), c.exits...)
}

// signal sends sig to slot i's process, marking the exit it causes as
// expected; it waits for the exit when wait > 0.
func (c *Cluster) signal(i int, sig syscall.Signal, wait time.Duration) error {
	c.mu.Lock()
	s := c.slots[i]
	if s.state == Stopped || s.cmd == nil {
		c.mu.Unlock()
		return nil
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM || sig == syscall.SIGQUIT {
		s.expected = true
	}
	done := s.exited
	err := s.cmd.Process.Signal(sig)
	switch sig {
	case syscall.SIGSTOP:
		s.state = Paused
	case syscall.SIGCONT:
		s.state = Running
	}
	c.mu.Unlock()
	if err != nil || wait <= 0 {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("harness: %s did not exit within %v of %v", s.ID, wait, sig)
	}
}

// Kill SIGKILLs slot i's node and waits for it to be gone.
func (c *Cluster) Kill(i int) error {
	c.logf("kill %s", c.Slot(i).ID)
	return c.signal(i, syscall.SIGKILL, 10*time.Second)
}

// Terminate SIGTERMs slot i's node (a graceful drain) and waits.
func (c *Cluster) Terminate(i int) error {
	c.logf("terminate %s", c.Slot(i).ID)
	if c.Slot(i).State == Paused {
		_ = c.signal(i, syscall.SIGCONT, 0)
	}
	err := c.signal(i, syscall.SIGTERM, TerminateWait)
	if err != nil {
		// Hung: have the Go runtime dump every goroutine into the node's
		// log (SIGQUIT), then kill it.
		_ = c.signal(i, syscall.SIGQUIT, 5*time.Second)
		_ = c.Kill(i)
		return fmt.Errorf("%w (goroutines dumped in %s)", err, c.Slot(i).Log)
	}
	return nil
}

// TerminateWait is how long a node may take to drain on SIGTERM (its
// --shutdown-timeout is 5s) before it counts as hung.
const TerminateWait = 15 * time.Second

// Pause SIGSTOPs slot i's node.
func (c *Cluster) Pause(i int) error {
	c.logf("pause %s", c.Slot(i).ID)
	return c.signal(i, syscall.SIGSTOP, 0)
}

// Resume SIGCONTs slot i's node.
func (c *Cluster) Resume(i int) error {
	if c.Slot(i).State != Paused {
		return nil
	}
	c.logf("resume %s", c.Slot(i).ID)
	return c.signal(i, syscall.SIGCONT, 0)
}

// Restart starts slot i's node again from its data directory, if stopped.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.slots[i].state != Stopped {
		return nil
	}
	return c.start(c.slots[i])
}

// Wipe replaces the stopped node in slot i by a new, empty one with a new
// id (never reused) and starts it; the caller removes the old id from Raft
// first. It returns the new id.
func (c *Cluster) Wipe(i int) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.slots[i]
	if s.state != Stopped {
		return "", fmt.Errorf("harness: wipe %s: it is %s", s.ID, s.state)
	}
	if err := os.RemoveAll(s.DataDir); err != nil {
		return "", err
	}
	old := s.ID
	s.setID(c.cfg.Dir, fmt.Sprintf("n%d", c.nextID))
	c.nextID++
	s.bootstrap = false
	c.logf("wiped %s; slot %d is now %s", old, i, s.ID)
	return s.ID, c.start(s)
}

// SetNet applies network faults: blocked directed links (by slot) and
// degraded links.
func (c *Cluster) SetNet(blocked []proxy.Link, quality map[proxy.Link]proxy.Quality) error {
	if c.cfg.Network.KernelCuts() {
		c.rules.Set(nil, quality)
		return c.cfg.Network.Cut(blocked)
	}
	c.rules.Set(blocked, quality)
	return nil
}

// HealNet removes every network fault.
func (c *Cluster) HealNet() error { return c.SetNet(nil, nil) }

func (c *Cluster) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
}

// Status asks slot i's node (directly, not through a proxy) for its Raft
// status.
func (c *Cluster) Status(ctx context.Context, i int) (*pb.ClusterStatusResponse, error) {
	c.mu.Lock()
	s := c.slots[i]
	conn, state := s.ctrl, s.state
	c.mu.Unlock()
	if state != Running {
		return nil, fmt.Errorf("%s is %s", s.ID, state)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return pb.NewClusterServiceClient(conn).Status(c.ctx(ctx), &pb.ClusterStatusRequest{})
}

// Statuses asks every running node at once; missing entries did not
// answer.
func (c *Cluster) Statuses(ctx context.Context) map[int]*pb.ClusterStatusResponse {
	out := map[int]*pb.ClusterStatusResponse{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 1; i < len(c.slots); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, err := c.Status(ctx, i); err == nil {
				mu.Lock()
				out[i] = st
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// Leader returns the slot of the node that says it leads, in the highest
// term, or 0.
func (c *Cluster) Leader(ctx context.Context) int {
	best, term := 0, uint64(0)
	for i, st := range c.Statuses(ctx) {
		if st.GetRaftState() == "leader" && st.GetTerm() >= term {
			best, term = i, st.GetTerm()
		}
	}
	return best
}

// SlotOf returns the slot of node id, or 0.
func (c *Cluster) SlotOf(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.slots[1:] {
		if s.ID == id {
			return s.Index
		}
	}
	return 0
}

// Members lists the region's Raft configuration (via the admin client).
func (c *Cluster) Members(ctx context.Context) ([]*pb.Member, error) {
	r, err := c.admin.Cluster().Members(ctx, &pb.ListMembersRequest{})
	return r.GetMembers(), err
}

// WaitHealthy waits until every slot's node runs, all agree on one leader,
// the configuration has exactly the current nodes as voters, and every
// node has applied what the leader had applied when it was first seen.
func (c *Cluster) WaitHealthy(ctx context.Context, d time.Duration) error {
	var target uint64
	return Poll(ctx, d, "a healthy region", func() (bool, error) {
		sts := c.Statuses(ctx)
		if len(sts) != c.Size() {
			var missing []string
			for i := 1; i <= c.Size(); i++ {
				if _, ok := sts[i]; !ok {
					missing = append(missing, c.Slot(i).ID)
				}
			}
			return false, fmt.Errorf("no status from %v", missing)
		}
		leader := ""
		for i, st := range sts {
			if st.GetLeaderId() == "" || (leader != "" && st.GetLeaderId() != leader) {
				return false, fmt.Errorf("%s sees leader %q", c.Slot(i).ID, st.GetLeaderId())
			}
			leader = st.GetLeaderId()
		}
		ls := c.SlotOf(leader)
		if ls == 0 || sts[ls].GetRaftState() != "leader" {
			return false, fmt.Errorf("leader %s is not a current node", leader)
		}
		// The leader's applied index, not its commit index: Raft's own
		// entries (no-op, barrier, configuration) never reach the FSM, so
		// in a quiet region followers never "apply" up to the commit index.
		if target == 0 {
			target = sts[ls].GetAppliedIndex()
		}
		mctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		members, err := c.Members(mctx)
		cancel()
		if err != nil {
			return false, err
		}
		want := map[string]bool{}
		for _, s := range c.Slots() {
			want[s.ID] = true
		}
		voters := 0
		for _, m := range members {
			if !want[m.GetNodeId()] || m.GetRaftRole() == "nonvoter" {
				return false, fmt.Errorf("member %s (%s) is not expected", m.GetNodeId(), m.GetRaftRole())
			}
			voters++
		}
		if voters != len(want) {
			return false, fmt.Errorf("%d voters, want %d", voters, len(want))
		}
		for i, st := range sts {
			if st.GetAppliedIndex() < target {
				return false, fmt.Errorf("%s applied %d < %d", c.Slot(i).ID, st.GetAppliedIndex(), target)
			}
		}
		return true, nil
	})
}

// RemoveNode removes node id from the region's Raft configuration.
func (c *Cluster) RemoveNode(ctx context.Context, id string) error {
	_, err := c.admin.Cluster().RemoveNode(ctx, &pb.RemoveNodeRequest{NodeId: id})
	return err
}

// Join adds slot i's node to the region, with its advertised addresses;
// the leader makes it a voter once it has caught up.
func (c *Cluster) Join(ctx context.Context, i int) error {
	s := c.Slot(i)
	_, err := c.admin.Cluster().Join(ctx, &pb.JoinRequest{NodeId: s.ID, RaftAddress: s.RaftAdv, GrpcAddress: s.GRPCAdv})
	return err
}

// Quiesce waits until every node has applied the same index and that
// stays so for a moment (no entry in flight).
func (c *Cluster) Quiesce(ctx context.Context, d time.Duration) (uint64, error) {
	var last uint64
	stable := 0
	err := Poll(ctx, d, "all nodes at the same applied index", func() (bool, error) {
		sts := c.Statuses(ctx)
		if len(sts) != c.Size() {
			stable = 0
			return false, fmt.Errorf("%d of %d nodes answer", len(sts), c.Size())
		}
		var idx uint64
		for _, st := range sts {
			if idx != 0 && st.GetAppliedIndex() != idx {
				stable = 0
				return false, fmt.Errorf("applied indexes differ")
			}
			idx = st.GetAppliedIndex()
		}
		if idx == last {
			stable++
		} else {
			last, stable = idx, 0
		}
		return stable >= 5, nil
	})
	return last, err
}

// StopAll stops every node for the replica check: once all have applied
// the same index, followers first and the leader last, each with SIGTERM,
// which must exit 0 within TerminateWait. A node that hangs instead is
// dumped (SIGQUIT) and killed; then every node is started again, and once
// the region is healthy the whole stop is tried again (up to three times),
// so that the stores can still be compared. A node killed in the last try
// is marked KilledAtStop (its store may lag). It returns the problems
// (hangs, unclean exits).
func (c *Cluster) StopAll(ctx context.Context) []string {
	var problems []string
	for attempt := 0; attempt < 3; attempt++ {
		for i := 1; i <= c.Size(); i++ {
			_ = c.Resume(i)
			c.setKilledAtStop(i, false)
		}
		if _, err := c.Quiesce(ctx, 60*time.Second); err != nil {
			problems = append(problems, "before stopping: "+err.Error())
		}
		leader := c.Leader(ctx)
		var order []int
		for i := 1; i <= c.Size(); i++ {
			if i != leader {
				order = append(order, i)
			}
		}
		if leader != 0 {
			order = append(order, leader)
		}
		hung := false
		for _, i := range order {
			if c.Slot(i).State == Stopped {
				continue
			}
			before := len(c.Exits())
			if err := c.Terminate(i); err != nil {
				problems = append(problems, err.Error())
				c.setKilledAtStop(i, true)
				hung = true
				break
			}
			for _, e := range c.Exits()[before:] {
				if e.Slot == i && e.Status != "exit 0" {
					problems = append(problems, fmt.Sprintf("%s exited with %q on SIGTERM", e.ID, e.Status))
				}
			}
		}
		if !hung || attempt == 2 {
			break
		}
		for i := 1; i <= c.Size(); i++ {
			if err := c.Restart(i); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if err := c.WaitHealthy(ctx, 90*time.Second); err != nil {
			problems = append(problems, "after restarting for another stop: "+err.Error())
		}
	}
	return problems
}

func (c *Cluster) setKilledAtStop(i int, v bool) {
	c.mu.Lock()
	c.slots[i].killedAtStop = v
	c.mu.Unlock()
}

// Replica is a stopped node's store, opened offline.
type Replica struct {
	Slot    int
	ID      string
	Applied uint64
	Term    uint64
	Hash    string
	Err     error
	// KilledAtStop: the node hung on SIGTERM and was killed, so its store
	// may lag the others (Pebble writes are not synced; the Raft log is).
	KilledAtStop bool
}

// Replicas opens every (stopped) node's store and hashes it.
func (c *Cluster) Replicas() []Replica {
	var out []Replica
	for _, s := range c.Slots() {
		c.mu.Lock()
		r := Replica{Slot: s.Index, ID: s.ID, KilledAtStop: c.slots[s.Index].killedAtStop}
		c.mu.Unlock()
		if s.State != Stopped {
			r.Err = fmt.Errorf("still %s", s.State)
			out = append(out, r)
			continue
		}
		st, err := store.Open(filepath.Join(s.DataDir, "fsm"), nil)
		if err != nil {
			r.Err = err
			out = append(out, r)
			continue
		}
		r.Applied, r.Term, r.Err = st.AppliedIndex()
		if r.Err == nil {
			r.Hash, r.Err = st.Hash()
		}
		st.Close()
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out
}

// Close kills every node still running and closes the proxies.
func (c *Cluster) Close() error {
	for i := 1; i < len(c.slots); i++ {
		if c.slots[i] == nil {
			continue
		}
		_ = c.Resume(i)
		_ = c.Kill(i)
	}
	if c.admin != nil {
		c.admin.Close()
	}
	for _, s := range c.slots[1:] {
		if s == nil {
			continue
		}
		if s.grpcProxy != nil {
			s.grpcProxy.Close()
		}
		if s.raftProxy != nil {
			s.raftProxy.Close()
		}
		if s.ctrl != nil {
			s.ctrl.Close()
		}
	}
	return c.cfg.Network.Close()
}
