package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/tlsutil"
)

// fakeRegion is the ClusterService view shared by the fake nodes of a test:
// its members and which of them leads.
type fakeRegion struct {
	mbv1.UnimplementedClusterServiceServer

	mu     sync.Mutex
	addrs  []string
	leader string // "" during an "election"
	deny   bool   // answer PERMISSION_DENIED, as for a non-admin token
	// unknownToken answers this many discovery calls UNAUTHENTICATED, as a
	// follower that has not applied the token yet.
	unknownToken int
	members      int // Members calls seen
	statusN      int // Status calls seen
}

func (r *fakeRegion) Members(ctx context.Context, _ *mbv1.ListMembersRequest) (*mbv1.ListMembersResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.members++
	if r.deny {
		return nil, status.Error(codes.PermissionDenied, "account lacks admin on the region")
	}
	if r.unknownToken > 0 {
		r.unknownToken--
		return nil, status.Error(codes.Unauthenticated, "unknown or revoked token")
	}
	out := &mbv1.ListMembersResponse{}
	for i, a := range r.addrs {
		role := "follower"
		if a == r.leader {
			role = "leader"
		}
		out.Members = append(out.Members, &mbv1.Member{NodeId: "n" + string(rune('0'+i)), GrpcAddress: a, RaftRole: role})
	}
	return out, nil
}

func (r *fakeRegion) Status(ctx context.Context, _ *mbv1.ClusterStatusRequest) (*mbv1.ClusterStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statusN++
	if r.deny {
		return nil, status.Error(codes.PermissionDenied, "account lacks admin on the region")
	}
	return &mbv1.ClusterStatusResponse{LeaderGrpcAddress: r.leader}, nil
}

func (r *fakeRegion) setLeader(a string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leader = a
}

func (r *fakeRegion) discoveryCalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.members + r.statusN
}

// fakeNode is one node: a SecretService that records calls, and the shared
// ClusterService.
type fakeNode struct {
	secrets *fakeSecrets
	addr    string
	srv     *grpc.Server
}

// startRegion starts n fake nodes serving r.
func startRegion(t *testing.T, n int, r *fakeRegion) []*fakeNode {
	t.Helper()
	var nodes []*fakeNode
	for i := 0; i < n; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		fn := &fakeNode{secrets: &fakeSecrets{}, addr: lis.Addr().String(), srv: grpc.NewServer()}
		mbv1.RegisterSecretServiceServer(fn.srv, fn.secrets)
		mbv1.RegisterClusterServiceServer(fn.srv, r)
		go fn.srv.Serve(lis)
		t.Cleanup(fn.srv.Stop)
		nodes = append(nodes, fn)
		r.mu.Lock()
		r.addrs = append(r.addrs, fn.addr)
		r.mu.Unlock()
	}
	return nodes
}

// methodCount returns how many calls of method node n saw.
func methodCount(n *fakeNode, method string) int { return n.secrets.count(method) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDiscoveryLearnsNodesAndLeader(t *testing.T) {
	r := &fakeRegion{}
	nodes := startRegion(t, 3, r)
	r.setLeader(nodes[2].addr)
	// Only the first node is configured; the other two are learned.
	c := newClient(t, Config{Endpoints: []string{nodes[0].addr}, Token: "admin"})
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Endpoints(), []string{nodes[0].addr, nodes[1].addr, nodes[2].addr}; !slices.Equal(got, want) {
		t.Fatalf("endpoints = %q, want %q", got, want)
	}
	if got := c.Leader(); got != nodes[2].addr {
		t.Fatalf("leader = %q, want %q", got, nodes[2].addr)
	}

	ctx := context.Background()
	// A stale read goes to any node: the first configured one.
	stale := metadata.AppendToOutgoingContext(ctx, HeaderConsistency, ConsistencyStale)
	if _, err := c.Secrets().Get(stale, &mbv1.GetSecretRequest{Id: "mbsec-1"}); err != nil {
		t.Fatal(err)
	}
	if methodCount(nodes[0], "Get") != 1 {
		t.Errorf("the stale read did not go to the first node")
	}
	// Mutations and linearizable reads go to the leader.
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: "mbsec-1"}); err != nil {
		t.Fatal(err)
	}
	if methodCount(nodes[2], "Create") != 1 || methodCount(nodes[2], "Get") != 1 {
		t.Errorf("leader saw %v, want the Create and the linearizable Get", nodes[2].secrets.seen())
	}
	if methodCount(nodes[0], "Create")+methodCount(nodes[1], "Create")+methodCount(nodes[1], "Get") != 0 {
		t.Errorf("a leader-bound call went to a follower")
	}
	// Calls to the leader do not pull stale reads there: they stay on the
	// node that last answered one (else every stale read would land on the
	// leader).
	if _, err := c.Secrets().Get(stale, &mbv1.GetSecretRequest{Id: "mbsec-1"}); err != nil {
		t.Fatal(err)
	}
	if methodCount(nodes[0], "Get") != 2 {
		t.Errorf("the stale read after leader-bound calls did not go to the first node (leader saw %d Gets)", methodCount(nodes[2], "Get"))
	}
}

func TestPrefersLeader(t *testing.T) {
	ctx := context.Background()
	stale := metadata.AppendToOutgoingContext(ctx, HeaderConsistency, ConsistencyStale)
	for _, c := range []struct {
		ctx    context.Context
		method string
		want   bool
	}{
		{ctx, "/mysterybox.v1.SecretService/Create", true},
		{stale, "/mysterybox.v1.SecretService/Create", true}, // writes always go to the leader
		{ctx, "/mysterybox.v1.PayloadService/GetByKey", true},
		{stale, "/mysterybox.v1.PayloadService/GetByKey", false},
		{ctx, "/mysterybox.v1.ClusterService/Status", false}, // describes the node that answers
		{ctx, "/mysterybox.v1.ClusterService/Members", false},
		{ctx, "/mysterybox.v1.ClusterService/TransferLeadership", true},
		{ctx, "/mysterybox.v1.AdminService/Rewrap", true},
		{ctx, "/grpc.health.v1.Health/Check", false},
	} {
		if got := prefersLeader(c.ctx, c.method); got != c.want {
			t.Errorf("prefersLeader(%s, stale=%v) = %v", c.method, c.ctx != ctx, got)
		}
	}
}

func TestLeaderFailoverRelearnsLeader(t *testing.T) {
	r := &fakeRegion{}
	nodes := startRegion(t, 3, r)
	r.setLeader(nodes[0].addr)
	c := newClient(t, Config{Endpoints: []string{nodes[0].addr, nodes[1].addr, nodes[2].addr}, Token: "admin"})
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.Leader() != nodes[0].addr {
		t.Fatalf("leader = %q", c.Leader())
	}
	// The leader dies; node 2 is elected.
	nodes[0].srv.Stop()
	r.setLeader(nodes[2].addr)

	ctx := context.Background()
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatalf("create after the leader died: %v", err)
	}
	// The failure made the client forget the dead leader and ask again.
	waitFor(t, "the new leader to be learned", func() bool { return c.Leader() == nodes[2].addr })
	before := methodCount(nodes[2], "Create")
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatal(err)
	}
	if methodCount(nodes[2], "Create") != before+1 {
		t.Errorf("the write after relearning did not go to the new leader")
	}
}

// A node that does not know the token yet (it has not applied its
// creation) answers UNAUTHENTICATED: discovery asks the next node, and
// does not give up for good.
func TestDiscoveryOutlivesAnUnknownToken(t *testing.T) {
	r := &fakeRegion{unknownToken: 3}
	nodes := startRegion(t, 3, r)
	r.setLeader(nodes[2].addr)
	c := newClient(t, Config{Endpoints: []string{nodes[0].addr}, Token: "viewer"})
	for i := 0; i < 4 && len(c.Endpoints()) != 3; i++ {
		if err := c.Refresh(context.Background()); err != nil && status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Refresh = %v", err)
		}
	}
	if got := c.Endpoints(); len(got) != 3 || c.DiscoveryErr() != nil {
		t.Fatalf("endpoints %q, discovery error %v: want the region learned once the token is known", got, c.DiscoveryErr())
	}
}

// A failed first discovery is tried again soon, without waiting for a
// call to fail or for the next RefreshInterval (here an hour).
func TestDiscoveryRetriesAFailedRefreshSoon(t *testing.T) {
	r := &fakeRegion{unknownToken: 2}
	nodes := startRegion(t, 3, r)
	r.setLeader(nodes[2].addr)
	c := newClient(t, Config{Endpoints: []string{nodes[0].addr}, Token: "viewer", RefreshInterval: time.Hour})
	waitFor(t, "the region learned after the token became known", func() bool { return len(c.Endpoints()) == 3 })
}

func TestDiscoveryDeniedFallsBackToEndpoints(t *testing.T) {
	r := &fakeRegion{deny: true}
	nodes := startRegion(t, 3, r)
	r.setLeader(nodes[2].addr)
	seeds := []string{nodes[0].addr, nodes[1].addr}
	c := newClient(t, Config{Endpoints: seeds, Token: "viewer"})
	err := c.Refresh(context.Background())
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Refresh = %v, want PERMISSION_DENIED", err)
	}
	if status.Code(c.DiscoveryErr()) != codes.PermissionDenied {
		t.Errorf("DiscoveryErr = %v", c.DiscoveryErr())
	}
	if got := c.Endpoints(); !slices.Equal(got, seeds) || c.Leader() != "" {
		t.Errorf("endpoints %q leader %q, want the seeds and no leader", got, c.Leader())
	}
	// Failover over the configured endpoints still works.
	nodes[0].srv.Stop()
	if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
		t.Fatal(err)
	}
	if methodCount(nodes[1], "Create") != 1 {
		t.Errorf("write did not fail over to the second endpoint")
	}
}

func TestDisableDiscoveryNeverAsks(t *testing.T) {
	r := &fakeRegion{}
	nodes := startRegion(t, 2, r)
	r.setLeader(nodes[1].addr)
	c := newClient(t, Config{Endpoints: []string{nodes[0].addr}, DisableDiscovery: true})
	for i := 0; i < 3; i++ {
		if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
			t.Fatal(err)
		}
	}
	c.Close() // waits for background work, were there any
	if n := r.discoveryCalls(); n != 0 {
		t.Errorf("%d discovery calls with DisableDiscovery", n)
	}
	if methodCount(nodes[0], "Create") != 3 {
		t.Errorf("writes did not stay on the configured endpoint")
	}
}

// hangingSecrets never answers Get or Create: a node that accepts
// connections but is stuck.
type hangingSecrets struct {
	mbv1.UnimplementedSecretServiceServer
	mu    sync.Mutex
	calls int
	keys  []string
}

func (h *hangingSecrets) hang(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	h.mu.Lock()
	h.calls++
	h.keys = append(h.keys, one(md, HeaderIdempotencyKey))
	h.mu.Unlock()
	<-ctx.Done()
	return status.FromContextError(ctx.Err()).Err()
}

func (h *hangingSecrets) Get(ctx context.Context, _ *mbv1.GetSecretRequest) (*mbv1.Secret, error) {
	return nil, h.hang(ctx)
}

func (h *hangingSecrets) Create(ctx context.Context, _ *mbv1.CreateSecretRequest) (*mbv1.Secret, error) {
	return nil, h.hang(ctx)
}

func TestAttemptTimeoutMovesOnFromHungNode(t *testing.T) {
	h := &hangingSecrets{}
	hung := startFake(t, h)
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{hung, startFake(t, f)}, Timeout: 20 * time.Second, AttemptTimeout: 300 * time.Millisecond})

	start := time.Now()
	if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
		t.Fatalf("create with the first node hung: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %v: the hung node ate the deadline", el)
	}
	h.mu.Lock()
	hungKeys := append([]string(nil), h.keys...)
	h.mu.Unlock()
	calls := f.seen()
	if len(hungKeys) != 1 || len(calls) != 1 || hungKeys[0] == "" || one(calls[0].md, HeaderIdempotencyKey) != hungKeys[0] {
		t.Errorf("hung node keys %q, second node calls %d: want one attempt each with the same key", hungKeys, len(calls))
	}
	// The node that answered is sticky: the next read does not wait again.
	if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"}); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	n := h.calls
	h.mu.Unlock()
	if n != 1 {
		t.Errorf("the hung node got %d calls, want only the first", n)
	}
}

func TestCallerDeadlineWinsOverAttemptTimeout(t *testing.T) {
	h := &hangingSecrets{}
	hung := startFake(t, h)
	c := newClient(t, Config{Endpoints: []string{hung}, Timeout: 400 * time.Millisecond, AttemptTimeout: 5 * time.Second})
	start := time.Now()
	_, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v, want about the 400ms timeout", el)
	}
}

func TestOnRetryEventsAndRounds(t *testing.T) {
	a := &fakeSecrets{failN: 2, failCode: codes.Unavailable}
	b := &fakeSecrets{failN: 1, failCode: codes.Unavailable}
	var mu sync.Mutex
	var events []RetryEvent
	c := newClient(t, Config{
		Endpoints: []string{startFake(t, a), startFake(t, b)},
		OnRetry: func(e RetryEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		},
	})
	if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"}); err != nil {
		t.Fatal(err)
	}
	// a fails, b fails (end of round 1: back off), a fails, b answers.
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 4 {
		t.Fatalf("events = %+v, want 3 retries and 1 done", events)
	}
	wantDelay := []bool{false, true, false}
	for i, e := range events[:3] {
		if e.Done || e.Attempt != i+1 || status.Code(e.Err) != codes.Unavailable || (e.Delay > 0) != wantDelay[i] {
			t.Errorf("event %d = %+v", i, e)
		}
	}
	if d := events[3]; !d.Done || d.Err != nil || d.Attempt != 4 {
		t.Errorf("done event = %+v", d)
	}
	if len(a.seen()) != 2 || len(b.seen()) != 2 {
		t.Errorf("attempts a=%d b=%d, want 2 and 2", len(a.seen()), len(b.seen()))
	}
}

func TestNoRetryEventsWithoutRetry(t *testing.T) {
	f := &fakeSecrets{}
	n := 0
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}, OnRetry: func(RetryEvent) { n++ }})
	if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"}); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d retry events for a call that did not retry", n)
	}
}

// TestInterceptorLostResponse: an interceptor that lets the first attempt
// through and then reports it UNAVAILABLE (its response lost) makes the client
// retry with the same idempotency key.
func TestInterceptorLostResponse(t *testing.T) {
	f := &fakeSecrets{}
	var mu sync.Mutex
	var keys []string
	lost := false
	icpt := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method != "/mysterybox.v1.SecretService/Create" {
			return err // discovery calls go through interceptors too
		}
		md, _ := metadata.FromOutgoingContext(ctx)
		mu.Lock()
		defer mu.Unlock()
		keys = append(keys, one(md, HeaderIdempotencyKey))
		if !lost && err == nil {
			lost = true
			return status.Error(codes.Unavailable, "test: response lost")
		}
		return err
	}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}, Interceptors: []grpc.UnaryClientInterceptor{icpt}})
	if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 2 || keys[0] == "" || keys[0] != keys[1] || len(f.seen()) != 2 {
		t.Errorf("attempts with keys %q (server saw %d): want two with one key", keys, len(f.seen()))
	}
}

func TestTLS(t *testing.T) {
	ca, err := tlsutil.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert, err := ca.Issue("server", "", "", []string{"127.0.0.1"}, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSecrets{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}})))
	mbv1.RegisterSecretServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c := newClient(t, Config{Endpoints: []string{lis.Addr().String()}, TLS: &tls.Config{RootCAs: pool}})
	if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"}); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	// Plaintext, or TLS without trusting the CA: the handshake fails.
	for _, tc := range []*tls.Config{nil, {}} {
		c := newClient(t, Config{Endpoints: []string{lis.Addr().String()}, TLS: tc, Timeout: 500 * time.Millisecond})
		if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"}); err == nil {
			t.Errorf("TLS config %v: call succeeded", tc)
		}
	}
	if n := len(f.seen()); n != 1 {
		t.Errorf("server saw %d calls, want 1", n)
	}
}

func TestCallAfterCloseFailsAtOnce(t *testing.T) {
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f), deadAddr(t)}, Timeout: 10 * time.Second})
	c.Close()
	start := time.Now()
	_, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"})
	if status.Code(err) != codes.Canceled {
		t.Errorf("err = %v, want CANCELED", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v: a closed client retried", el)
	}
}
