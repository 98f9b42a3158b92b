package main

// Tests of the mbox binary against an in-process fake gRPC server: the cases
// a dev server cannot produce on demand (auth failures, a slow call, many
// pages) and the exact requests and headers the CLI sends.

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

const fakeToken = "mbt1.local1.token-fake.verysecretpart"

type fakeCall struct {
	method string
	md     metadata.MD
	req    proto.Message
}

type fake struct {
	mbv1.UnimplementedSecretServiceServer
	mbv1.UnimplementedClusterServiceServer

	mu    sync.Mutex
	calls []fakeCall
	addr  string
	// admin is the AdminService; tests set its Rewrap state (under mu).
	admin *fakeAdmin
	// unavailable fails that many next Get calls with UNAVAILABLE, as a
	// region without a leader would (under mu).
	unavailable int
}

func startFakeServer(t *testing.T) *fake {
	t.Helper()
	return startFakeServerWith(t)
}

// startFakeServerWith starts the fake with server options (TLS).
func startFakeServerWith(t *testing.T, opts ...grpc.ServerOption) *fake {
	t.Helper()
	f := &fake{}
	f.admin = &fakeAdmin{f: f}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	mbv1.RegisterSecretServiceServer(srv, f)
	mbv1.RegisterClusterServiceServer(srv, f)
	mbv1.RegisterIdentityServiceServer(srv, &fakeIdentity{f: f})
	mbv1.RegisterAdminServiceServer(srv, f.admin)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	f.addr = lis.Addr().String()
	return f
}

func (f *fake) record(ctx context.Context, method string, req proto.Message) metadata.MD {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{method: method, md: md, req: req})
	return md
}

func (f *fake) last(t *testing.T) fakeCall {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		t.Fatal("the fake server saw no call")
	}
	return f.calls[len(f.calls)-1]
}

func (f *fake) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fake) run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return execMbox(t, append([]string{"MYSTERYBOX_ENDPOINTS=" + f.addr}, env...), nil, args...)
}

func secretN(i int) *mbv1.Secret {
	return &mbv1.Secret{Metadata: &mbv1.Metadata{Id: "mbsec-" + strconv.Itoa(i), ParentId: "project-1", Name: "s" + strconv.Itoa(i)}}
}

// Get checks the token like a server with auth: none or unknown is
// UNAUTHENTICATED, "viewer" lacks the role. "mbsec-slow" never answers.
func (f *fake) Get(ctx context.Context, req *mbv1.GetSecretRequest) (*mbv1.Secret, error) {
	md := f.record(ctx, "Get", req)
	f.mu.Lock()
	fail := f.unavailable > 0
	if fail {
		f.unavailable--
	}
	f.mu.Unlock()
	if fail {
		return nil, status.Error(codes.Unavailable, "no leader in this region right now; retry")
	}
	if req.GetId() == "mbsec-slow" {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	switch auth := md.Get("authorization"); {
	case len(auth) == 1 && auth[0] == "Bearer "+fakeToken:
	case len(auth) == 1 && auth[0] == "Bearer viewer":
		return nil, status.Error(codes.PermissionDenied, "account lacks mysterybox.viewer on "+req.GetId())
	default:
		return nil, status.Error(codes.Unauthenticated, "missing or unknown token")
	}
	return secretN(1), nil
}

// List serves 5 secrets, 2 per page by default.
func (f *fake) List(ctx context.Context, req *mbv1.ListSecretsRequest) (*mbv1.ListSecretsResponse, error) {
	f.record(ctx, "List", req)
	size := int(req.GetPageSize())
	if size == 0 {
		size = 2
	}
	start, _ := strconv.Atoi(req.GetPageToken())
	resp := &mbv1.ListSecretsResponse{}
	for i := start; i < 5 && i < start+size; i++ {
		resp.Secrets = append(resp.Secrets, secretN(i))
	}
	if start+size < 5 {
		resp.NextPageToken = strconv.Itoa(start + size)
	}
	return resp, nil
}

func (f *fake) Create(ctx context.Context, req *mbv1.CreateSecretRequest) (*mbv1.Secret, error) {
	f.record(ctx, "Create", req)
	s := proto.Clone(req.GetSecret()).(*mbv1.Secret)
	s.Metadata.Id = "mbsec-new"
	s.Spec.SecretVersion = nil
	return s, nil
}

func (f *fake) Update(ctx context.Context, req *mbv1.UpdateSecretRequest) (*mbv1.Secret, error) {
	f.record(ctx, "Update", req)
	return req.GetSecret(), nil
}

func (f *fake) Status(ctx context.Context, req *mbv1.ClusterStatusRequest) (*mbv1.ClusterStatusResponse, error) {
	f.record(ctx, "Status", req)
	return &mbv1.ClusterStatusResponse{NodeId: "n1", Region: "r1", RaftState: "leader", LeaderId: "n1", Term: 2, Voters: 3}, nil
}

func (f *fake) Join(ctx context.Context, req *mbv1.JoinRequest) (*mbv1.JoinResponse, error) {
	f.record(ctx, "Join", req)
	return &mbv1.JoinResponse{Members: []*mbv1.Member{
		{NodeId: "n1", RaftRole: "leader"},
		{NodeId: req.GetNodeId(), RaftRole: "follower", RaftAddress: req.GetRaftAddress(), GrpcAddress: req.GetGrpcAddress()},
	}}, nil
}

func (f *fake) RemoveNode(ctx context.Context, req *mbv1.RemoveNodeRequest) (*mbv1.RemoveNodeResponse, error) {
	f.record(ctx, "RemoveNode", req)
	return &mbv1.RemoveNodeResponse{}, nil
}

func (f *fake) TransferLeadership(ctx context.Context, req *mbv1.TransferLeadershipRequest) (*mbv1.TransferLeadershipResponse, error) {
	f.record(ctx, "TransferLeadership", req)
	id := req.GetNodeId()
	if id == "" {
		id = "n2"
	}
	return &mbv1.TransferLeadershipResponse{LeaderId: id}, nil
}

func TestFakeAuthAndExitCode4(t *testing.T) {
	f := startFakeServer(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(fakeToken+"\n"), 0o600)
	get := []string{"secret", "get", "mbsec-1"}

	cases := []struct {
		name string
		env  []string
		args []string
		exit int
		code string
	}{
		{"--token", nil, []string{"--token", fakeToken}, 0, ""},
		{"--token-file", nil, []string{"--token-file", tokenFile}, 0, ""},
		{"env", []string{"MYSTERYBOX_TOKEN=" + fakeToken}, nil, 0, ""},
		{"flag beats env", []string{"MYSTERYBOX_TOKEN=wrong"}, []string{"--token", fakeToken}, 0, ""},
		{"no token", nil, nil, 4, "UNAUTHENTICATED"},
		{"unknown token", nil, []string{"--token", "wrong"}, 4, "UNAUTHENTICATED"},
		{"no role", nil, []string{"--token", "viewer"}, 4, "PERMISSION_DENIED"},
		{"both flags", nil, []string{"--token", fakeToken, "--token-file", tokenFile}, 2, "USAGE"},
		{"missing token file", nil, []string{"--token-file", filepath.Join(t.TempDir(), "nope")}, 2, "USAGE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{}, c.args...), get...)
			for _, format := range []string{"text", "json"} {
				r := f.run(t, c.env, append([]string{"-o", format}, args...)...)
				if c.exit == 0 {
					if r.code != 0 || !strings.Contains(r.stdout, "mbsec-1") {
						t.Fatalf("want success, got %v", r)
					}
				} else {
					checkFail(t, r, c.exit, c.code, args)
				}
				if strings.Contains(r.stdout+r.stderr, "verysecretpart") {
					t.Errorf("token printed: %v", r)
				}
			}
		})
	}
	// The help text must not show a token taken from the environment.
	r := f.run(t, []string{"MYSTERYBOX_TOKEN=" + fakeToken}, "--help")
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "verysecretpart") {
		t.Errorf("--help: %v", r)
	}
}

func TestFakeConsistencyHeader(t *testing.T) {
	f := startFakeServer(t)
	base := []string{"--token", fakeToken, "secret", "get", "mbsec-1"}
	for _, c := range []struct {
		flag []string
		want []string
	}{
		{nil, nil},
		{[]string{"--consistency", "linearizable"}, nil},
		{[]string{"--consistency", "stale"}, []string{"stale"}},
	} {
		r := f.run(t, nil, append(c.flag, base...)...)
		if r.code != 0 {
			t.Fatalf("%q: %v", c.flag, r)
		}
		if got := f.last(t).md.Get("x-consistency"); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("%q: x-consistency = %q, want %q", c.flag, got, c.want)
		}
		if got := f.last(t).md.Get("x-idempotency-key"); len(got) != 0 {
			t.Errorf("a read carries x-idempotency-key %q", got)
		}
	}
	checkFail(t, f.run(t, nil, "--consistency", "eventual", "secret", "get", "x"), 2, "USAGE", nil)
}

func TestFakeDeadlineExceeded(t *testing.T) {
	f := startFakeServer(t)
	args := []string{"--timeout", "300ms", "secret", "get", "mbsec-slow"}
	checkFail(t, f.run(t, nil, args...), 5, "DEADLINE_EXCEEDED", args)
}

func TestFakeListFollowsPages(t *testing.T) {
	f := startFakeServer(t)
	n := f.count()
	lst := &mbv1.ListSecretsResponse{}
	r := f.run(t, nil, "-o", "json", "secret", "list", "--parent-id", "project-1")
	if r.code != 0 {
		t.Fatal(r)
	}
	if err := protojsonUnmarshal(r.stdout, lst); err != nil {
		t.Fatal(err)
	}
	if len(lst.GetSecrets()) != 5 || lst.GetNextPageToken() != "" || f.count()-n != 3 {
		t.Errorf("followed pages: %d secrets, token %q, %d calls; want 5, none, 3", len(lst.GetSecrets()), lst.GetNextPageToken(), f.count()-n)
	}
	r = f.run(t, nil, "-o", "json", "secret", "list", "--parent-id", "project-1", "--page-size", "2", "--page-token", "2")
	if err := protojsonUnmarshal(r.stdout, lst); err != nil {
		t.Fatal(err)
	}
	req := f.last(t).req.(*mbv1.ListSecretsRequest)
	if len(lst.GetSecrets()) != 2 || lst.GetNextPageToken() != "4" || req.GetPageSize() != 2 || req.GetPageToken() != "2" {
		t.Errorf("one page: %v from %v", lst, req)
	}
	// Text mode: the table on stdout, the next token as a hint on stderr.
	r = f.run(t, nil, "secret", "list", "--parent-id", "project-1", "--page-size", "2", "--show-deleted")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 3 || !strings.Contains(r.stderr, "--page-token 2") {
		t.Errorf("text page: %v", r)
	}
	if !f.last(t).req.(*mbv1.ListSecretsRequest).GetShowScheduledForDeletion() {
		t.Error("--show-deleted not sent")
	}
	checkFail(t, f.run(t, nil, "secret", "list", "--parent-id", "p", "--page-size", "0"), 2, "USAGE", nil)
}

func TestFakeCreateSendsIdempotencyKeyAndPayload(t *testing.T) {
	f := startFakeServer(t)
	r := f.run(t, nil, "secret", "create", "--parent-id", "project-1", "--name", "db", "--label", "env=prod",
		"--payload", "user=admin", "--generate", "pw=20")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "id:") {
		t.Fatal(r)
	}
	c := f.last(t)
	if k := c.md.Get("x-idempotency-key"); len(k) != 1 || len(k[0]) < 16 {
		t.Errorf("x-idempotency-key = %q", k)
	}
	s := c.req.(*mbv1.CreateSecretRequest).GetSecret()
	entries := s.GetSpec().GetSecretVersion().GetPayload().GetEntries()
	if s.GetMetadata().GetLabels()["env"] != "prod" || len(entries) != 2 ||
		entries[0].GetStringValue() != "admin" || len(entries[1].GetStringValue()) != 20 {
		t.Errorf("create request = %v", s)
	}
	if strings.Contains(r.stdout, entries[1].GetStringValue()) {
		t.Error("generated password printed")
	}
	// Without payload flags there is no first version.
	f.run(t, nil, "secret", "create", "--parent-id", "project-1", "--name", "bare")
	if sv := f.last(t).req.(*mbv1.CreateSecretRequest).GetSecret().GetSpec().GetSecretVersion(); sv != nil {
		t.Errorf("secret_version sent without payload flags: %v", sv)
	}
}

func TestFakeUpdateMask(t *testing.T) {
	f := startFakeServer(t)
	cases := []struct {
		args  []string
		paths []string
		check func(*mbv1.Secret) bool
	}{
		{[]string{"--name", "n2"}, []string{"metadata.name"}, func(s *mbv1.Secret) bool { return s.GetMetadata().GetName() == "n2" }},
		{[]string{"--label", "a=1", "--description", "d"}, []string{"metadata.labels", "spec.description"},
			func(s *mbv1.Secret) bool {
				return s.GetMetadata().GetLabels()["a"] == "1" && s.GetSpec().GetDescription() == "d"
			}},
		{[]string{"--description", ""}, []string{"spec.description"}, func(s *mbv1.Secret) bool { return s.GetSpec().GetDescription() == "" }},
		{[]string{"--primary-version-id", "mbsecver-9"}, []string{"spec.primary_version_id"},
			func(s *mbv1.Secret) bool { return s.GetSpec().GetPrimaryVersionId() == "mbsecver-9" }},
		{[]string{"--primary-version-id", "latest", "--resource-version", "7"}, []string{"spec.primary_version_id"},
			func(s *mbv1.Secret) bool {
				return s.GetSpec().GetPrimaryVersionId() == "" && s.GetMetadata().GetResourceVersion() == 7
			}},
		{[]string{"--clear-labels"}, []string{"metadata.labels"}, func(s *mbv1.Secret) bool { return len(s.GetMetadata().GetLabels()) == 0 }},
	}
	for _, c := range cases {
		r := f.run(t, nil, append([]string{"secret", "update", "mbsec-1"}, c.args...)...)
		if r.code != 0 {
			t.Fatalf("%q: %v", c.args, r)
		}
		req := f.last(t).req.(*mbv1.UpdateSecretRequest)
		if strings.Join(req.GetUpdateMask().GetPaths(), ",") != strings.Join(c.paths, ",") {
			t.Errorf("%q: mask %q, want %q", c.args, req.GetUpdateMask().GetPaths(), c.paths)
		}
		if req.GetSecret().GetMetadata().GetId() != "mbsec-1" || !c.check(req.GetSecret()) {
			t.Errorf("%q: request %v", c.args, req)
		}
		if k := f.last(t).md.Get("x-idempotency-key"); len(k) != 1 {
			t.Errorf("update without idempotency key")
		}
	}
	checkFail(t, f.run(t, nil, "secret", "update", "mbsec-1", "--label", "a=1", "--clear-labels"), 2, "USAGE", nil)
}

func TestFakeClusterMutations(t *testing.T) {
	f := startFakeServer(t)
	r := f.run(t, nil, "cluster", "join", "--node-id", "n2", "--raft-addr", "127.0.0.1:8701", "--grpc-addr", "127.0.0.1:8700")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "NODE_ID") || !strings.Contains(r.stdout, "n2") {
		t.Fatalf("join: %v", r)
	}
	join := f.last(t)
	if req := join.req.(*mbv1.JoinRequest); req.GetNodeId() != "n2" || req.GetRaftAddress() != "127.0.0.1:8701" || req.GetGrpcAddress() != "127.0.0.1:8700" {
		t.Errorf("join request = %v", req)
	}
	r = f.run(t, nil, "cluster", "remove-node", "n3")
	if r.code != 0 || f.last(t).req.(*mbv1.RemoveNodeRequest).GetNodeId() != "n3" {
		t.Errorf("remove-node: %v", r)
	}
	r = f.run(t, nil, "cluster", "transfer-leader")
	if r.code != 0 || r.stdout != "leader_id: n2\n" || f.last(t).req.(*mbv1.TransferLeadershipRequest).GetNodeId() != "" {
		t.Errorf("transfer-leader: %v", r)
	}
	r = f.run(t, nil, "-o", "json", "cluster", "transfer-leader", "n3")
	if r.code != 0 || !strings.Contains(r.stdout, `"leader_id": "n3"`) {
		t.Errorf("transfer-leader n3: %v", r)
	}
	f.mu.Lock()
	for _, c := range f.calls {
		if k := c.md.Get("x-idempotency-key"); len(k) != 1 || k[0] == "" {
			t.Errorf("%s without x-idempotency-key", c.method)
		}
	}
	f.mu.Unlock()
	r = f.run(t, nil, "cluster", "status")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "node_id:") {
		t.Errorf("status: %v", r)
	}
	checkFail(t, f.run(t, nil, "cluster", "join", "--node-id", "n2"), 2, "USAGE", nil)
	checkFail(t, f.run(t, nil, "cluster", "transfer-leader", "a", "b"), 2, "USAGE", nil)
}

func TestFakeFailover(t *testing.T) {
	f := startFakeServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	r := execMbox(t, nil, nil, "--endpoints", dead+","+f.addr, "--token", fakeToken, "secret", "get", "mbsec-1")
	if r.code != 0 || !strings.Contains(r.stdout, "mbsec-1") {
		t.Errorf("failover to the second endpoint: %v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"secret"},
		{"secret", "bogus"},
		{"secret", "get"},
		{"secret", "get", "a", "b"},
		{"secret", "get", "--bogus", "x"},
		{"secret", "create", "--name", "x"},
		{"secret", "list"},
		{"version", "create", "--parent-id", "mbsec-1"},
		{"payload", "get-by-key", "--secret-id", "mbsec-1"},
		{"project", "create"},
		{"-o", "xml", "project", "list"},
		{"--timeout", "soon", "project", "list"},
		{"--endpoints", "", "project", "list"},
		{"account"},
		{"account", "create"},
		{"account", "create", "--name", "x", "--type", "robot"},
		{"account", "get"},
		{"token", "create"},
		{"token", "create", "--account-id", "a", "--ttl", "1w"},
		{"token", "list"},
		{"token", "revoke"},
		{"access-binding", "create", "--resource-id", "r", "--account-id", "a", "--role", "owner"},
		{"access-binding", "list"},
		{"admin", "rewrap", "--batch-size", "0"},
		{"admin", "rewrap", "extra"},
	} {
		// No server listens at the default endpoint's replacement: a usage
		// error must be reported before any call is made.
		r := execMbox(t, []string{"MYSTERYBOX_ENDPOINTS=127.0.0.1:1"}, nil, args...)
		checkFail(t, r, 2, "USAGE", args)
	}
}
