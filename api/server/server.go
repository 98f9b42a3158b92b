// Package server implements MysteryBox's gRPC API on one node: request
// validation, forwarding of writes and linearizable reads to the leader,
// stamping and proposing commands, reading the store, and the one table that
// maps domain errors to gRPC codes.
//
// Every endpoint follows the same shape: validate fully on the receiving
// node; if this node cannot serve the call, forward it unchanged to the
// leader (one hop); otherwise propose a command (writes) or pass the read
// barrier and read Pebble (reads).
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

// Raft is what the API needs from the replication layer.
type Raft interface {
	ID() string
	// AcceptsWrites: this node is the Raft leader and may propose.
	AcceptsWrites() bool
	// IsLeader: leader whose post-election barrier has returned (may serve
	// linearizable reads after ReadBarrier).
	IsLeader() bool
	Leader() (id, raftAddr string)
	Apply(ctx context.Context, data []byte) (interface{}, error)
	ReadBarrier(ctx context.Context) error
	// ReadyTerm: the term in which IsLeader holds, if it does.
	ReadyTerm() (uint64, bool)
	// ReadBarrierInTerm: ReadBarrier for a read already made in term.
	ReadBarrierInTerm(ctx context.Context, term uint64) error
	Servers() ([]cluster.ServerInfo, error)
	// AddNode adds a non-voter that the leader promotes once caught up.
	AddNode(id, addr string) error
	RemoveServer(id string) error
	TransferLeadership(id string) error
	Stats() map[string]string
	AppliedIndex() uint64
	RestoreBackup(index uint64, size int64, r io.Reader) error
}

// Config configures the API of one node.
type Config struct {
	Region      string
	NodeID      string
	GRPCAddress string // advertised to peers for forwarding
	RaftAddress string
	// PurgeAfter is how long soft-deleted secrets and versions wait before
	// the leader purges them.
	PurgeAfter time.Duration
	// PeerCreds are the transport credentials for calls to other nodes
	// (forwarding, status); nil means plaintext.
	PeerCreds credentials.TransportCredentials
	// IdentityGeneration is the FSM's identity generation (see
	// fsm.FSM.IdentityGeneration); nil disables the authentication cache.
	IdentityGeneration func() uint64
	// Audit records every call that reads a payload or changes state.
	Audit bool
	// AuditFailOpen serves a payload read even when its audit record could
	// not be written (default: fail closed).
	AuditFailOpen bool
	// AuditRetention is how long audit records are kept (0: forever).
	AuditRetention time.Duration
	// MaintenanceInterval is how often the leader looks for due purges and
	// expired idempotency keys (default 1s).
	MaintenanceInterval time.Duration
}

// Server is the gRPC API of one node.
type Server struct {
	cfg    Config
	raft   Raft
	store  *store.Store
	keys   atomic.Pointer[region.Keyring]
	logger hclog.Logger
	fwd    *forwarder
	health *health.Server
	dir    Directory // nil without gossip
	obs    Observer  // nil without metrics
	audit  *auditor  // nil without audit
	// versions caches the region's oldest command version (callRecord
	// asks on every write).
	versions versionCache
	auth     authCache
	// leaderHint caches {leader id, its gRPC address}.
	leaderHint atomic.Pointer[[2]string]
	// registry is held by a backup restore from reading the node registry,
	// which it carries into the restored state, until the restore is done,
	// and by every change of the registry this node proposes: a change
	// committed in between would be overwritten by the registry read
	// before it (a removal tombstone lost, and the node added back).
	registry sync.Mutex
}

// Directory is what gossip tells about every node of every region.
type Directory interface {
	Members() []cluster.GossipMember
	// Addr is this node's own advertised gossip address.
	Addr() string
}

// Observer is told about forwarded calls and refused audit records
// (metrics).
type Observer interface {
	Forwarded(method string)
	AuditRefused()
}

// SetObserver installs o before serving.
func (s *Server) SetObserver(o Observer) { s.obs = o }

// identityGen returns the current identity generation; without a source
// every call gets a fresh one, which disables the cache.
func (s *Server) identityGen() uint64 {
	if s.cfg.IdentityGeneration != nil {
		return s.cfg.IdentityGeneration()
	}
	return uint64(time.Now().UnixNano())
}

// peerCreds returns the credentials for dialing other nodes.
func (s *Server) peerCreds() credentials.TransportCredentials {
	if s.cfg.PeerCreds != nil {
		return s.cfg.PeerCreds
	}
	return insecure.NewCredentials()
}

// SetDirectory gives the API the gossip view (before serving).
func (s *Server) SetDirectory(d Directory) { s.dir = d }

// New builds the API over a node's Raft, store and keyring.
func New(cfg Config, r Raft, st *store.Store, kr *region.Keyring, logger hclog.Logger) (*Server, error) {
	if cfg.Region == "" || cfg.NodeID == "" {
		return nil, errors.New("server: region and node id are required")
	}
	if cfg.PurgeAfter <= 0 {
		cfg.PurgeAfter = 720 * time.Hour
	}
	if cfg.MaintenanceInterval <= 0 {
		cfg.MaintenanceInterval = time.Second
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	s := &Server{cfg: cfg, raft: r, store: st, logger: logger, health: health.NewServer()}
	s.versions.s = s
	if err := s.SetKeyring(kr); err != nil {
		return nil, err
	}
	s.fwd = newForwarder(s, logger.Named("forward"))
	if cfg.Audit {
		s.audit = newAuditor(s)
	}
	return s, nil
}

// Register adds every MysteryBox service, health and reflection to g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterSecretServiceServer(g, &secretService{s: s})
	pb.RegisterSecretVersionServiceServer(g, &versionService{s: s})
	pb.RegisterPayloadServiceServer(g, &payloadService{s: s})
	pb.RegisterIdentityServiceServer(g, &identityService{s: s})
	pb.RegisterClusterServiceServer(g, &clusterService{s: s})
	pb.RegisterAdminServiceServer(g, &adminService{s: s})
	pb.RegisterAuditServiceServer(g, &auditService{s: s})
	s.registerNodeService(g)
	healthpb.RegisterHealthServer(g, s.health)
	reflection.Register(g)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
}

// Close releases forwarding connections and marks the node not serving.
func (s *Server) Close() {
	if s.audit != nil {
		s.audit.close()
	}
	s.health.Shutdown()
	s.fwd.close()
}

// propose stamps cmd with the leader's time, the call's idempotency key and
// the leader's grant (g; zero for internal commands), replicates it, and
// returns the FSM's response. A replay_only command whose record is gone
// returns fsm.ErrReplayGone, which proposeAuthorized handles.
func (s *Server) propose(ctx context.Context, req proto.Message, cmd *fsmpb.Command, g grant) (proto.Message, error) {
	cmd.TimeUnixNano = time.Now().UnixNano()
	key, err := idempotencyKey(ctx)
	if err != nil {
		return nil, err
	}
	hashKeyID := ""
	cmd.Caller, cmd.ReplayOnly = "", false
	if key != "" {
		cmd.IdempotencyKey = key
		cmd.Caller, cmd.ReplayOnly = g.caller, g.replayOnly
		hashKeyID = s.keyring().ActiveKeyID()
	}
	cmd.Audit = s.callRecord(ctx, req)
	if err := s.checkVersions(cmd); err != nil {
		if cmd.ReplayOnly {
			// The grant came from a version check up to a second old; a
			// voter that would not know to only replay is there now.
			return nil, fsm.ErrReplayGone // check the call as a new one
		}
		return nil, err
	}
	// A retry whose first call was hashed under a key that has rotated
	// since is answered with fsm.HashKeyMismatch: hash again with that key.
	for attempt := 0; ; attempt++ {
		if key != "" {
			cmd.RequestHashKeyId = hashKeyID
			cmd.RequestHash, err = s.fingerprint(ctx, hashKeyID, req)
			if err != nil {
				return nil, toStatus(err)
			}
		}
		data, err := fsm.EncodeCommand(cmd)
		if err != nil {
			return nil, toStatus(fmt.Errorf("encode command: %w", err))
		}
		res, err := s.raft.Apply(ctx, data)
		if err != nil {
			return nil, toStatus(err)
		}
		r, ok := res.(*fsm.Result)
		if !ok {
			return nil, toStatus(fmt.Errorf("unexpected apply response %T", res))
		}
		var mismatch *fsm.HashKeyMismatch
		if errors.As(r.Err, &mismatch) && attempt == 0 {
			if !s.keyring().Has(mismatch.KeyID) {
				// The key's first call took effect (or failed) and its
				// outcome stands; only the comparison is impossible. Telling
				// the caller to just use a new key would apply it twice.
				return nil, status.Errorf(codes.InvalidArgument, "x-idempotency-key already holds the outcome of a call whose request was hashed under key %s, which this node's keyring does not have (retired, or not loaded here yet), so this request cannot be compared with it; that call is not applied again: check its effect before repeating the operation under a new idempotency key", mismatch.KeyID)
			}
			hashKeyID = mismatch.KeyID
			continue
		}
		if errors.Is(r.Err, fsm.ErrReplayGone) {
			return nil, r.Err // nothing applied, nor recorded
		}
		if cmd.Audit != nil && !errors.As(r.Err, &mismatch) {
			markRecorded(ctx) // applied, with the record
		}
		if r.Err != nil {
			return nil, toStatus(r.Err)
		}
		return r.Response, nil
	}
}

// checkVersions refuses a command type some member of the Raft
// configuration does not support yet (it would stop that node), as far as
// gossip tells. Without gossip the
// operator upgrades every node before using new features.
func (s *Server) checkVersions(cmd *fsmpb.Command) error {
	need := fsm.RequiredVersion(cmd)
	if need <= 1 || s.dir == nil {
		return nil
	}
	id, v, err := s.oldestMember()
	if err != nil {
		return toStatus(err)
	}
	if v < need {
		return status.Errorf(codes.FailedPrecondition, "node %s applies commands up to version %d; this operation needs version %d: upgrade every node first", id, v, need)
	}
	return nil
}

// oldestMember returns the member of the Raft configuration that
// advertises the lowest command version in gossip, and that version (0 for
// a member gossip does not know). Non-voters count: they apply every
// command too (a new node is one until it has caught up). The caller
// checks that gossip runs (s.dir != nil).
func (s *Server) oldestMember() (id string, version int, err error) {
	servers, err := s.raft.Servers()
	if err != nil {
		return "", 0, err
	}
	have := map[string]int{}
	for _, m := range s.dir.Members() {
		if m.Meta.Region == s.cfg.Region {
			have[m.Meta.NodeID] = m.Meta.CommandVersion
		}
	}
	version = -1
	for _, sv := range servers {
		if v := have[sv.ID]; version < 0 || v < version {
			id, version = sv.ID, v
		}
	}
	return id, max(version, 0), nil
}

// versionCache answers whether every node of the region applies a command
// version, from a check at most a second old: the members of the Raft
// configuration, and every node gossip shows in the region, so a node
// that is joining counts before Raft adds it. Without gossip the versions are unknown and the answer
// is no: features that need them stay off.
type versionCache struct {
	s       *Server
	mu      sync.Mutex
	oldest  int
	checked time.Time
}

func (c *versionCache) supports(version int) bool {
	if c.s.dir == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) > time.Second {
		c.oldest = 0
		if _, v, err := c.s.oldestMember(); err == nil {
			c.oldest = v
			for _, m := range c.s.dir.Members() {
				if m.Meta.Region == c.s.cfg.Region && m.Health != cluster.HealthDead && m.Health != cluster.HealthLeft {
					c.oldest = min(c.oldest, m.Meta.CommandVersion)
				}
			}
		}
		c.checked = time.Now()
	}
	return c.oldest >= version
}

// mutate runs a write: forward it when this node is not the leader;
// otherwise authorize the caller against the leader's state, build the
// command and propose it.
func mutate[T proto.Message](ctx context.Context, s *Server, req proto.Message, acc access, build func() (*fsmpb.Command, error)) (T, error) {
	var zero T
	if !s.raft.AcceptsWrites() {
		out := newMessage[T]()
		if err := s.fwd.forward(ctx, req, out); err != nil {
			return zero, err
		}
		return out, nil
	}
	resp, err := s.proposeAuthorized(ctx, req, acc, build)
	if err != nil {
		return zero, err
	}
	out, ok := resp.(T)
	if !ok {
		return zero, toStatus(fmt.Errorf("unexpected response type %T", resp))
	}
	return out, nil
}

// grant is the leader's authorization of a call it is about to propose.
type grant struct {
	// caller is the authenticated account, named in the command and so in
	// its idempotency record, once every node applies fsm.CallerVersion.
	caller string
	// replayOnly: the call is let through without its permission check as
	// caller's retry of a call whose idempotency record the leader holds;
	// the FSM replays that record's outcome or applies nothing.
	replayOnly bool
}

// proposeAuthorized authorizes a caller's mutation on this leader, then
// proposes the command build makes.
//
// A retry with the idempotency key of the caller's own earlier call gets
// that call's outcome even when the call itself took away the permission
// it needed (deleting one's own binding, say, or a secret since purged):
// the retry is let through as replay-only. Only when the record is gone by
// the time the command applies is it checked and proposed as a new call.
func (s *Server) proposeAuthorized(ctx context.Context, req proto.Message, acc access, build func() (*fsmpb.Command, error)) (proto.Message, error) {
	if err := s.awaitBarrier(ctx); err != nil {
		return nil, err
	}
	resp, err := s.authorizeAndPropose(ctx, req, acc, build, true)
	if errors.Is(err, fsm.ErrReplayGone) {
		// The record expired before the command applied: a new call.
		resp, err = s.authorizeAndPropose(ctx, req, acc, build, false)
	}
	if errors.Is(err, fsm.ErrReplayGone) {
		return nil, status.Error(codes.Internal, "a call proposed as new was refused as a replay")
	}
	return resp, err
}

// authorizeAndPropose is one attempt of proposeAuthorized.
func (s *Server) authorizeAndPropose(ctx context.Context, req proto.Message, acc access, build func() (*fsmpb.Command, error), replay bool) (proto.Message, error) {
	g, err := s.authorizeMutation(ctx, acc, replay)
	if err != nil {
		return nil, err
	}
	cmd, err := build()
	if err != nil {
		return nil, toStatus(err)
	}
	return s.propose(ctx, req, cmd, g)
}

// leaderCheck authorizes a call about to be served by this leader, once
// the leader's state holds every acknowledged write (a revocation that
// returned is seen here). Its grant names the caller for propose.
func (s *Server) leaderCheck(ctx context.Context, acc access) (grant, error) {
	if err := s.awaitBarrier(ctx); err != nil {
		return grant{}, err
	}
	return s.authorizeMutation(ctx, acc, false)
}

// authorizeMutation authenticates the call and checks its permission
// against this node's state, unless replay allows the call through as the
// retry of the same account's earlier call (proposeAuthorized).
func (s *Server) authorizeMutation(ctx context.Context, acc access, replay bool) (grant, error) {
	named := s.versions.supports(fsm.CallerVersion)
	key := ""
	if replay && named {
		key, _ = idempotencyKey(ctx) // a malformed key is refused by propose
		if key != "" && !s.store.MayHoldIdempotency(key) {
			key = "" // a first call, not a retry (the usual case)
		}
	}
	var g grant
	viewGen := s.identityGen() // before the view (see authenticate)
	err := s.store.Read(func(v *store.View) error {
		c, err := s.authenticate(ctx, v, viewGen)
		if err != nil {
			s.logAuthnRefusal(ctx, err)
			return err
		}
		noteAccount(ctx, c.accountID)
		if named {
			g.caller = c.accountID
		}
		if key != "" {
			rec, err := v.Idempotency(key)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			if err == nil && rec.GetCaller() != "" && rec.GetCaller() == c.accountID && rec.GetExpiresUnixNano() > time.Now().UnixNano() {
				g.replayOnly = true
				return nil
			}
		}
		return s.permit(ctx, v, c, acc)
	})
	return g, toStatus(err)
}

// check authorizes the call against this node's current state.
func (s *Server) check(ctx context.Context, acc access) error {
	return toStatus(s.readAuthorized(ctx, acc, func(*store.View, *caller) error { return nil }))
}

// awaitBarrier waits, briefly, for a new leader's post-election barrier.
func (s *Server) awaitBarrier(ctx context.Context) error {
	if s.raft.IsLeader() {
		return nil
	}
	deadline := time.NewTimer(leaderWait)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !s.raft.IsLeader() {
		if !s.raft.AcceptsWrites() {
			return status.Error(codes.Unavailable, "leadership changed while the call waited; retry")
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-deadline.C:
			return status.Error(codes.Unavailable, "this node is still establishing leadership; retry")
		case <-tick.C:
		}
	}
	return nil
}

// query runs a read: stale reads answer from the local store; linearizable
// ones are served by the leader after a read barrier, forwarded otherwise.
// The caller is authorized against the same view the read uses.
func query[T proto.Message](ctx context.Context, s *Server, req proto.Message, acc access, read func(v *store.View, c *caller) (T, error)) (T, error) {
	var zero T
	var checkAfter *callInfo // a payload read: leadership is checked after reading
	var readTerm uint64      // the term the read's view is taken in
	if !isStale(ctx) {
		if !s.raft.IsLeader() && !s.raft.AcceptsWrites() {
			out := newMessage[T]()
			if err := s.fwd.forward(ctx, req, out); err != nil {
				return zero, err
			}
			return out, nil
		}
		if err := s.awaitBarrier(ctx); err != nil {
			return zero, err
		}
		// A payload read waits for its audit record's commit anyway: its
		// leadership check runs after the read, during that commit, rather
		// than before it. Confirming leadership after the read's snapshot
		// still rules out a newer leader having acknowledged a write
		// before the snapshot (its majority and ours intersect).
		if ci := infoFrom(ctx); ci != nil && isPayloadRead(ci.method) {
			// The confirmation must be of the term the view is taken in
			// (ReadBarrierInTerm says why); taken before the view, a
			// term that changes before it makes the check fail.
			term, ok := s.raft.ReadyTerm()
			if !ok {
				return zero, status.Error(codes.Unavailable, "leadership changed while the call waited; retry")
			}
			checkAfter, readTerm = ci, term
		} else if err := s.raft.ReadBarrier(ctx); err != nil {
			return zero, toStatus(err)
		}
	}
	if checkAfter != nil {
		defer func() {
			ch := make(chan error, 1)
			checkAfter.leadership = ch
			go func() { ch <- s.raft.ReadBarrierInTerm(ctx, readTerm) }()
		}()
	}
	var out T
	err := s.readAuthorized(ctx, acc, func(v *store.View, c *caller) error {
		var err error
		out, err = read(v, c)
		return err
	})
	if err != nil {
		return zero, toStatus(err)
	}
	return out, nil
}

func newMessage[T proto.Message]() T {
	var zero T
	return zero.ProtoReflect().Type().New().Interface().(T)
}
