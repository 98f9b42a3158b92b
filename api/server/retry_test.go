package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

// soloRaft is a one-node region's Raft reduced to what the API needs: it
// applies each proposal through a real FSM at once. beforeApply, when set,
// runs before each command is applied (to change the state between the
// leader's checks and the apply, as other entries may).
type soloRaft struct {
	mu          sync.Mutex
	f           *fsm.FSM
	index       uint64
	beforeApply func(cmd *fsmpb.Command)
	restores    []uint64 // the index of each RestoreBackup
	// duringRestore, when set, runs inside RestoreBackup before the FSM
	// restores (as entries committed while Raft reads the stream).
	duringRestore func()
	// refuseRestore, when set, is RestoreBackup's answer, given before it
	// reads anything (as Raft's when the node stopped leading).
	refuseRestore error
}

func (r *soloRaft) ID() string                                      { return "node-1" }
func (r *soloRaft) AcceptsWrites() bool                             { return true }
func (r *soloRaft) IsLeader() bool                                  { return true }
func (r *soloRaft) Leader() (string, string)                        { return "node-1", "" }
func (r *soloRaft) ReadBarrier(context.Context) error               { return nil }
func (r *soloRaft) ReadyTerm() (uint64, bool)                       { return 1, true }
func (r *soloRaft) ReadBarrierInTerm(context.Context, uint64) error { return nil }
func (r *soloRaft) AddNode(string, string) error                    { return errors.New("solo") }
func (r *soloRaft) RemoveServer(string) error                       { return errors.New("solo") }
func (r *soloRaft) TransferLeadership(string) error                 { return errors.New("solo") }
func (r *soloRaft) Stats() map[string]string                        { return nil }
func (r *soloRaft) AppliedIndex() uint64                            { r.mu.Lock(); defer r.mu.Unlock(); return r.index }
func (r *soloRaft) RestoreBackup(index uint64, _ int64, rd io.Reader) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restores = append(r.restores, index)
	if r.refuseRestore != nil {
		return r.refuseRestore
	}
	if r.duringRestore != nil {
		r.mu.Unlock() // it may propose
		r.duringRestore()
		r.mu.Lock()
	}
	if err := r.f.Restore(io.NopCloser(rd)); err != nil {
		return err
	}
	r.index = max(r.index, index) + 1 // as hashicorp/raft records a restore
	return nil
}
func (r *soloRaft) Servers() ([]cluster.ServerInfo, error) {
	return []cluster.ServerInfo{{ID: "node-1", Voter: true, Leader: true}}, nil
}

func (r *soloRaft) Apply(_ context.Context, data []byte) (interface{}, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.beforeApply != nil {
		r.beforeApply(fsm.DecodeCommand(data))
	}
	r.index++
	return r.f.Apply(&raft.Log{Index: r.index, Term: 1, Type: raft.LogCommand, Data: data}), nil
}

// gossipAt is a gossip view in which the region's one node advertises
// command version v.
type gossipAt int

func (g gossipAt) Members() []cluster.GossipMember {
	return []cluster.GossipMember{{Meta: cluster.NodeMeta{NodeID: "node-1", Region: "test1", CommandVersion: int(g)}, Health: cluster.HealthAlive}}
}
func (gossipAt) Addr() string { return "" }

type soloRegion struct {
	t   *testing.T
	s   *Server
	r   *soloRaft
	st  *store.Store
	ids *identityService
}

func newSoloRegion(t *testing.T, version int) *soloRegion {
	t.Helper()
	st, err := store.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f, err := fsm.New(st, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := region.GenerateKeyringFile("k1")
	if err != nil {
		t.Fatal(err)
	}
	kr, err := region.ParseKeyring(raw)
	if err != nil {
		t.Fatal(err)
	}
	r := &soloRaft{f: f}
	s, err := New(Config{Region: "test1", NodeID: "node-1", IdentityGeneration: f.IdentityGeneration}, r, st, kr, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDirectory(gossipAt(version))
	t.Cleanup(s.Close)
	reg := &soloRegion{t: t, s: s, r: r, st: st, ids: &identityService{s: s}}
	return reg
}

// bind grants accountID role on resourceID, as the caller of ctx.
func (reg *soloRegion) bind(ctx context.Context, resourceID, accountID, role string) *pb.AccessBinding {
	reg.t.Helper()
	ab, err := reg.ids.CreateAccessBinding(ctx, &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{
		Spec: &pb.AccessBindingSpec{ResourceId: resourceID, AccountId: accountID, Role: role},
	}})
	if err != nil {
		reg.t.Fatalf("bind %s as %s on %s: %v", accountID, role, resourceID, err)
	}
	return ab
}

// as is the context of a call made with token (and an idempotency key,
// when key is not empty), as the interceptor hands it to a handler.
func as(t *testing.T, token, key string) context.Context {
	t.Helper()
	md := metadata.Pairs(mdAuth, "Bearer "+token)
	if key != "" {
		md.Set(mdIdempotency, key)
	}
	ctx := metadata.NewIncomingContext(context.Background(), md)
	b, err := parseBearer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return context.WithValue(ctx, bearerKey{}, b)
}

// admin bootstraps the region's admin and returns its token.
func (reg *soloRegion) admin() string {
	token := NewToken("test1")
	parts := strings.Split(token, ".")
	sum := sha256.Sum256([]byte(parts[3]))
	if ok, err := reg.s.BootstrapAdmin(context.Background(), parts[2], sum[:]); err != nil || !ok {
		reg.t.Fatalf("bootstrap: %v %v", ok, err)
	}
	return token
}

// project creates a project as the caller of ctx and returns its id.
func (reg *soloRegion) project(ctx context.Context, name string) string {
	reg.t.Helper()
	p, err := reg.ids.CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: name}}})
	if err != nil {
		reg.t.Fatal(err)
	}
	return p.GetMetadata().GetId()
}

// account creates an account and a token for it, as the admin.
func (reg *soloRegion) account(adminCtx context.Context, name string) (id, token string) {
	reg.t.Helper()
	acct, err := reg.ids.CreateAccount(adminCtx, &pb.CreateAccountRequest{Account: &pb.Account{Metadata: &pb.Metadata{Name: name}}})
	if err != nil {
		reg.t.Fatal(err)
	}
	tok, err := reg.ids.CreateToken(adminCtx, &pb.CreateTokenRequest{AccountId: acct.GetMetadata().GetId()})
	if err != nil {
		reg.t.Fatal(err)
	}
	return acct.GetMetadata().GetId(), tok.GetSecret()
}

// TestRetryGetsTheOutcomeOfTheCallThatRemovedItsPermission: a project
// admin deletes an access binding on the project; the answer is lost and
// the client retries with the same idempotency key. The first call removed
// the binding, so the permission chain of the retry now ends at the region,
// which this account does not administer — but the retry must get the first
// call's outcome (OK), not PERMISSION_DENIED. Another account sending the
// same key gets neither the outcome nor a second deletion.
func TestRetryGetsTheOutcomeOfTheCallThatRemovedItsPermission(t *testing.T) {
	reg := newSoloRegion(t, fsm.CommandVersion)
	adminCtx := as(t, reg.admin(), "")
	projectID := reg.project(adminCtx, "p")
	ownerID, ownerToken := reg.account(adminCtx, "owner")
	viewerID, _ := reg.account(adminCtx, "viewer")
	reg.bind(adminCtx, projectID, ownerID, RoleAdmin)
	b := reg.bind(as(t, ownerToken, ""), projectID, viewerID, RoleViewer)

	del := &pb.DeleteAccessBindingRequest{Id: b.GetMetadata().GetId()}
	ctx := as(t, ownerToken, "delete-the-binding")
	first, err := reg.ids.DeleteAccessBinding(ctx, del)
	if err != nil {
		t.Fatal(err)
	}
	again, err := reg.ids.DeleteAccessBinding(ctx, del)
	if err != nil {
		t.Fatalf("retry of a call that succeeded: %v, want its outcome", err)
	}
	if !proto.Equal(first, again) {
		t.Fatalf("retry = %v, first call %v", again, first)
	}
	// Without the key it is a new call, checked as such.
	if _, err := reg.ids.DeleteAccessBinding(as(t, ownerToken, ""), del); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a new call on a binding that is gone: %v, want PERMISSION_DENIED", err)
	}
	// The region admin may delete bindings anywhere, but this key holds
	// another account's outcome.
	if _, err := reg.ids.DeleteAccessBinding(as(t, reg.adminToken(adminCtx), "delete-the-binding"), del); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "another account") {
		t.Fatalf("another account's call with the key: %v, want INVALID_ARGUMENT naming another account", err)
	}
}

// adminToken returns the bearer token string adminCtx carries.
func (reg *soloRegion) adminToken(adminCtx context.Context) string {
	md, _ := metadata.FromIncomingContext(adminCtx)
	return strings.TrimPrefix(md.Get(mdAuth)[0], "Bearer ")
}

// TestRetryWhoseRecordExpiredIsCheckedAsANewCall: the leader lets a retry
// through on the strength of its idempotency record, and the record
// expires before the command applies. Nothing is applied as a replay; the
// call is checked again as a new one, and refused if its caller now lacks
// the permission — never applied unchecked.
func TestRetryWhoseRecordExpiredIsCheckedAsANewCall(t *testing.T) {
	reg := newSoloRegion(t, fsm.CommandVersion)
	adminCtx := as(t, reg.admin(), "")
	projectID := reg.project(adminCtx, "p")
	ownerID, ownerToken := reg.account(adminCtx, "owner")
	own := reg.bind(adminCtx, projectID, ownerID, RoleAdmin)
	secrets := &secretService{s: reg.s}
	create := &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: projectID, Name: "db"}}}
	ctx := as(t, ownerToken, "create-db")
	if _, err := secrets.Create(ctx, create); err != nil {
		t.Fatal(err)
	}
	// The owner loses the project; then the record goes, between the
	// leader's look at it and the apply of the retry.
	if _, err := reg.ids.DeleteAccessBinding(adminCtx, &pb.DeleteAccessBindingRequest{Id: own.GetMetadata().GetId()}); err != nil {
		t.Fatal(err)
	}
	var replays, proposals int
	reg.r.beforeApply = func(cmd *fsmpb.Command) {
		if cmd.GetIdempotencyKey() != "create-db" {
			return
		}
		proposals++
		if cmd.GetReplayOnly() {
			replays++
			forget(t, reg.st, "create-db")
		}
	}
	_, err := secrets.Create(ctx, create)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("retry whose record expired, by an account that lost the permission: %v, want PERMISSION_DENIED", err)
	}
	if replays != 1 || proposals != 1 {
		t.Fatalf("%d proposals, %d replay-only; want the one replay-only proposal, then the check as a new call", proposals, replays)
	}
	if list, err := secrets.List(adminCtx, &pb.ListSecretsRequest{ParentId: projectID}); err != nil || len(list.GetSecrets()) != 1 {
		t.Fatalf("secrets of the project: %v, %v; want the first call's one", list, err)
	}
	// With the permission back, the same situation proposes the call anew,
	// and it applies once (ALREADY_EXISTS: the first call made the secret).
	reg.bind(adminCtx, projectID, ownerID, RoleAdmin)
	reg.r.beforeApply = nil
	if _, err := secrets.Create(ctx, create); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("a new call after the record is gone: %v, want ALREADY_EXISTS", err)
	}
}

// forget deletes an idempotency record, as pruning does once it expires.
func forget(t *testing.T, st *store.Store, key string) {
	t.Helper()
	var rec *fsmpb.IdempotencyRecord
	if err := st.Read(func(v *store.View) error {
		var err error
		rec, err = v.Idempotency(key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	defer b.Close()
	if err := b.DeleteIdempotency(key, rec); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestCallerIsNamedOnlyWhenEveryNodeKnowsTheField: while a node applies an
// older command version, commands name no caller (that node would ignore
// the field and its records would differ) and retries are checked as new
// calls, as before.
func TestCallerIsNamedOnlyWhenEveryNodeKnowsTheField(t *testing.T) {
	reg := newSoloRegion(t, fsm.CallerVersion-1)
	adminCtx := as(t, reg.admin(), "")
	var named []string
	reg.r.beforeApply = func(cmd *fsmpb.Command) {
		if cmd.GetCaller() != "" || cmd.GetReplayOnly() {
			named = append(named, cmd.GetIdempotencyKey())
		}
	}
	req := &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "p"}}}
	ctx := as(t, reg.adminToken(adminCtx), "create-p")
	first, err := reg.ids.CreateProject(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := reg.ids.CreateProject(ctx, req)
	if err != nil || !proto.Equal(first, again) {
		t.Fatalf("retry = %v, %v; want the first call's project", again, err)
	}
	if len(named) != 0 {
		t.Fatalf("commands named their caller (or were replay-only) before every node applies version %d: %v", fsm.CallerVersion, named)
	}
}

// TestRetryInTheVersionCheckWindowIsCheckedAsNew: the leader's view of the
// region's versions is up to a second old; when a node that does not know
// replay-only commands has appeared meanwhile, the fresh check before
// proposing refuses the replay-only command — and the retry then goes on
// as a new call (checked, and answered from its record by the FSM), not
// FAILED_PRECONDITION for a call that succeeded.
func TestRetryInTheVersionCheckWindowIsCheckedAsNew(t *testing.T) {
	reg := newSoloRegion(t, fsm.CommandVersion)
	adminCtx := as(t, reg.admin(), "")
	req := &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "p"}}}
	ctx := as(t, reg.adminToken(adminCtx), "create-p")
	first, err := reg.ids.CreateProject(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !reg.s.versions.supports(fsm.CallerVersion) { // the cached view: every node at 5
		t.Fatal("setup: the version cache does not see version 5")
	}
	reg.s.SetDirectory(gossipAt(fsm.CallerVersion - 1)) // a node of 4 now
	var replayOnly int
	reg.r.beforeApply = func(cmd *fsmpb.Command) {
		if cmd.GetReplayOnly() {
			replayOnly++
		}
	}
	again, err := reg.ids.CreateProject(ctx, req)
	if err != nil {
		t.Fatalf("retry while a version-4 node appeared: %v, want the first call's project", err)
	}
	if !proto.Equal(first, again) || replayOnly != 0 {
		t.Fatalf("retry = %v (%d replay-only proposals), want the first call's project and none", again, replayOnly)
	}
}
