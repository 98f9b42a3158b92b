package client

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// call is what the fake server saw of one request.
type call struct {
	method string
	md     metadata.MD
}

// fakeSecrets is an in-process SecretService that records the metadata of
// every call and fails the first failN calls with failCode.
type fakeSecrets struct {
	mbv1.UnimplementedSecretServiceServer

	mu       sync.Mutex
	calls    []call
	failN    int
	failCode codes.Code
}

func (f *fakeSecrets) record(ctx context.Context, method string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{method: method, md: md})
	if f.failN > 0 {
		f.failN--
		return status.Error(f.failCode, "injected failure")
	}
	return nil
}

func (f *fakeSecrets) seen() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// count returns how many calls of method f saw.
func (f *fakeSecrets) count(method string) int {
	n := 0
	for _, c := range f.seen() {
		if c.method == method {
			n++
		}
	}
	return n
}

func (f *fakeSecrets) Create(ctx context.Context, req *mbv1.CreateSecretRequest) (*mbv1.Secret, error) {
	if err := f.record(ctx, "Create"); err != nil {
		return nil, err
	}
	s := req.GetSecret()
	s.Metadata.Id = "mbsec-1"
	return s, nil
}

func (f *fakeSecrets) Get(ctx context.Context, req *mbv1.GetSecretRequest) (*mbv1.Secret, error) {
	if err := f.record(ctx, "Get"); err != nil {
		return nil, err
	}
	return &mbv1.Secret{Metadata: &mbv1.Metadata{Id: req.GetId()}}, nil
}

// startFake serves f on 127.0.0.1:0 and returns its address.
func startFake(t *testing.T, f mbv1.SecretServiceServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	mbv1.RegisterSecretServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// deadAddr returns an address on which nothing listens: connections to it
// are refused at once.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	cfg.BaseBackoff = 5 * time.Millisecond
	cfg.MaxBackoff = 20 * time.Millisecond
	c, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func createReq() *mbv1.CreateSecretRequest {
	return &mbv1.CreateSecretRequest{Secret: &mbv1.Secret{Metadata: &mbv1.Metadata{ParentId: "project-1", Name: "db"}}}
}

func one(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) == 1 {
		return v[0]
	}
	return ""
}

func TestHeadersSent(t *testing.T) {
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}, Token: "tok-123", Consistency: "stale"})
	ctx := context.Background()
	if _, err := c.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: "mbsec-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatal(err)
	}
	calls := f.seen()
	if len(calls) != 2 {
		t.Fatalf("calls = %d, want 2", len(calls))
	}
	for _, cl := range calls {
		if got := one(cl.md, "authorization"); got != "Bearer tok-123" {
			t.Errorf("%s: authorization = %q", cl.method, got)
		}
		if got := one(cl.md, "x-consistency"); got != "stale" {
			t.Errorf("%s: x-consistency = %q", cl.method, got)
		}
	}
	if got := calls[0].md.Get("x-idempotency-key"); len(got) != 0 {
		t.Errorf("Get carries an idempotency key %q; reads must not", got)
	}
	if got := one(calls[1].md, "x-idempotency-key"); len(got) < 16 {
		t.Errorf("Create idempotency key = %q, want a random key", got)
	}
}

func TestNoOptionalHeadersByDefault(t *testing.T) {
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}})
	if _, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "mbsec-1"}); err != nil {
		t.Fatal(err)
	}
	md := f.seen()[0].md
	for _, k := range []string{"authorization", "x-consistency", "x-idempotency-key"} {
		if v := md.Get(k); len(v) != 0 {
			t.Errorf("%s = %q, want absent", k, v)
		}
	}
}

func TestIdempotencyKeyReusedAcrossRetry(t *testing.T) {
	f := &fakeSecrets{failN: 2, failCode: codes.Unavailable}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}})
	ctx := context.Background()
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatal(err)
	}
	calls := f.seen()
	if len(calls) != 3 {
		t.Fatalf("attempts = %d, want 3 (two UNAVAILABLE, then OK)", len(calls))
	}
	key := one(calls[0].md, "x-idempotency-key")
	if key == "" {
		t.Fatal("no idempotency key")
	}
	for i, cl := range calls {
		if got := one(cl.md, "x-idempotency-key"); got != key {
			t.Errorf("attempt %d key = %q, want %q", i, got, key)
		}
	}

	// A new logical call gets a new key.
	if _, err := c.Secrets().Create(ctx, createReq()); err != nil {
		t.Fatal(err)
	}
	calls = f.seen()
	if got := one(calls[len(calls)-1].md, "x-idempotency-key"); got == key || got == "" {
		t.Errorf("second logical call key = %q, want a fresh one (first was %q)", got, key)
	}
}

func TestIdempotencyKeyFromContext(t *testing.T) {
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}})
	if _, err := c.Secrets().Create(WithIdempotencyKey(context.Background(), "my-key"), createReq()); err != nil {
		t.Fatal(err)
	}
	if got := one(f.seen()[0].md, "x-idempotency-key"); got != "my-key" {
		t.Errorf("key = %q, want my-key", got)
	}
}

// Generated keys are 32 hex digits that sort by the millisecond they were
// made in (so the server's records of them append in its store), and keys
// made in the same millisecond still differ.
func TestIdempotencyKeysSortByTimeAndDiffer(t *testing.T) {
	t0 := time.UnixMilli(1_765_000_000_000)
	seen := map[string]bool{}
	prev := ""
	for ms := range 50 {
		for range 200 {
			key := newIdempotencyKey(t0.Add(time.Duration(ms) * time.Millisecond))
			if len(key) != 32 || strings.Trim(key, "0123456789abcdef") != "" {
				t.Fatalf("key %q: want 32 lowercase hex digits", key)
			}
			if seen[key] {
				t.Fatalf("key %q made twice", key)
			}
			seen[key] = true
			if got, want := key[:12], fmt.Sprintf("%012x", t0.UnixMilli()+int64(ms)); got != want {
				t.Fatalf("key %q starts with %s, want the millisecond %s", key, got, want)
			}
			if key[:12] < prev[:min(len(prev), 12)] {
				t.Fatalf("key %q sorts before the earlier %q", key, prev)
			}
			prev = key
		}
	}
	if a, b := NewIdempotencyKey(), NewIdempotencyKey(); a == b {
		t.Fatalf("two keys are equal: %q", a)
	}
}

func TestFailoverToSecondEndpoint(t *testing.T) {
	f := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{deadAddr(t), startFake(t, f)}})
	ctx := context.Background()
	s, err := c.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: "mbsec-7"})
	if err != nil {
		t.Fatalf("Get through failover: %v", err)
	}
	if s.GetMetadata().GetId() != "mbsec-7" {
		t.Fatalf("got %v", s)
	}
	// The endpoint that answered is tried first from now on.
	if got := c.order(false)[0]; got != c.Endpoints()[1] {
		t.Errorf("preferred endpoint = %s, want the second (%s)", got, c.Endpoints()[1])
	}
	if _, err := c.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: "mbsec-8"}); err != nil {
		t.Fatal(err)
	}
	if n := len(f.seen()); n != 2 {
		t.Errorf("second endpoint saw %d calls, want 2", n)
	}
}

func TestFailoverMutationKeepsKey(t *testing.T) {
	a := &fakeSecrets{failN: 1, failCode: codes.Unavailable} // e.g. a node that lost its leader
	b := &fakeSecrets{}
	c := newClient(t, Config{Endpoints: []string{startFake(t, a), startFake(t, b)}})
	if _, err := c.Secrets().Create(context.Background(), createReq()); err != nil {
		t.Fatal(err)
	}
	ca, cb := a.seen(), b.seen()
	if len(ca) != 1 || len(cb) != 1 {
		t.Fatalf("calls a=%d b=%d, want 1 and 1", len(ca), len(cb))
	}
	ka, kb := one(ca[0].md, "x-idempotency-key"), one(cb[0].md, "x-idempotency-key")
	if ka == "" || ka != kb {
		t.Errorf("keys differ across failover: %q vs %q", ka, kb)
	}
}

func TestNoRetryOnOtherErrors(t *testing.T) {
	for _, code := range []codes.Code{codes.NotFound, codes.Aborted, codes.InvalidArgument, codes.PermissionDenied} {
		f := &fakeSecrets{failN: 1, failCode: code}
		c := newClient(t, Config{Endpoints: []string{startFake(t, f)}})
		_, err := c.Secrets().Create(context.Background(), createReq())
		if status.Code(err) != code {
			t.Errorf("err = %v, want %v", err, code)
		}
		if n := len(f.seen()); n != 1 {
			t.Errorf("%v: attempts = %d, want 1", code, n)
		}
	}
}

func TestAllEndpointsDownStopsAtDeadline(t *testing.T) {
	c := newClient(t, Config{Endpoints: []string{deadAddr(t), deadAddr(t)}, Timeout: 500 * time.Millisecond})
	start := time.Now()
	_, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "mbsec-1"})
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want UNAVAILABLE or DEADLINE_EXCEEDED", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("took %v, want about the 500ms timeout", el)
	}
}

func TestMaxAttemptsWithoutDeadline(t *testing.T) {
	f := &fakeSecrets{failN: 100, failCode: codes.Unavailable}
	c, err := New(context.Background(), Config{Endpoints: []string{startFake(t, f)}, MaxAttempts: 3, BaseBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v", err)
	}
	if n := len(f.seen()); n != 3 {
		t.Errorf("attempts = %d, want 3", n)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(context.Background(), Config{}); err == nil {
		t.Error("no endpoints: want error")
	}
	if _, err := New(context.Background(), Config{Endpoints: []string{"a:1"}, Consistency: "eventual"}); err == nil {
		t.Error("bad consistency: want error")
	}
	c, err := New(context.Background(), Config{Endpoints: []string{" a:1, b:2 ", "c:3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Endpoints(); len(got) != 3 || got[0] != "a:1" || got[1] != "b:2" || got[2] != "c:3" {
		t.Errorf("endpoints = %q", got)
	}
}

func TestIsMutation(t *testing.T) {
	cases := map[string]bool{
		"/mysterybox.v1.SecretService/Create":                   true,
		"/mysterybox.v1.SecretService/Update":                   true,
		"/mysterybox.v1.SecretService/Delete":                   true,
		"/mysterybox.v1.SecretService/Undelete":                 true,
		"/mysterybox.v1.SecretVersionService/Create":            true,
		"/mysterybox.v1.IdentityService/CreateProject":          true,
		"/mysterybox.v1.IdentityService/DeleteProject":          true,
		"/mysterybox.v1.ClusterService/Join":                    true,
		"/mysterybox.v1.ClusterService/RemoveNode":              true,
		"/mysterybox.v1.ClusterService/TransferLeadership":      true,
		"/mysterybox.v1.IdentityService/CreateAccount":          true,
		"/mysterybox.v1.IdentityService/DeleteAccount":          true,
		"/mysterybox.v1.IdentityService/CreateToken":            true,
		"/mysterybox.v1.IdentityService/RevokeToken":            true,
		"/mysterybox.v1.IdentityService/DeleteToken":            true,
		"/mysterybox.v1.IdentityService/CreateAccessBinding":    true,
		"/mysterybox.v1.IdentityService/DeleteAccessBinding":    true,
		"/mysterybox.v1.AdminService/Rewrap":                    true,
		"/mysterybox.v1.IdentityService/GetToken":               false,
		"/mysterybox.v1.IdentityService/ListTokens":             false,
		"/mysterybox.v1.IdentityService/ListAccessBindings":     false,
		"/mysterybox.v1.SecretService/Get":                      false,
		"/mysterybox.v1.SecretService/GetByName":                false,
		"/mysterybox.v1.SecretService/List":                     false,
		"/mysterybox.v1.PayloadService/GetByKey":                false,
		"/mysterybox.v1.IdentityService/ListProjects":           false,
		"/mysterybox.v1.ClusterService/Status":                  false,
		"/mysterybox.v1.ClusterService/Members":                 false,
		"/grpc.health.v1.Health/Check":                          false,
		"/mysterybox.v1.SecretVersionService/UnknownFutureCall": true,
	}
	for m, want := range cases {
		if got := IsMutation(m); got != want {
			t.Errorf("IsMutation(%q) = %v, want %v", m, got, want)
		}
	}
}

// fakeAdminIdentity serves AdminService.Rewrap and IdentityService.RevokeToken
// with the fakeSecrets recording and failure injection.
type fakeAdminIdentity struct {
	mbv1.UnimplementedAdminServiceServer
	mbv1.UnimplementedIdentityServiceServer
	*fakeSecrets
}

func (f *fakeAdminIdentity) Rewrap(ctx context.Context, _ *mbv1.RewrapRequest) (*mbv1.RewrapResponse, error) {
	if err := f.record(ctx, "Rewrap"); err != nil {
		return nil, err
	}
	return &mbv1.RewrapResponse{ActiveKeyId: "k2"}, nil
}

func (f *fakeAdminIdentity) RevokeToken(ctx context.Context, _ *mbv1.RevokeTokenRequest) (*mbv1.RevokeTokenResponse, error) {
	if err := f.record(ctx, "RevokeToken"); err != nil {
		return nil, err
	}
	return &mbv1.RevokeTokenResponse{}, nil
}

// TestAdminAndRevokeAreRetriedMutations: Rewrap and RevokeToken carry an
// idempotency key, the same on every retry after UNAVAILABLE.
func TestAdminAndRevokeAreRetriedMutations(t *testing.T) {
	f := &fakeAdminIdentity{fakeSecrets: &fakeSecrets{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	mbv1.RegisterAdminServiceServer(srv, f)
	mbv1.RegisterIdentityServiceServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c := newClient(t, Config{Endpoints: []string{lis.Addr().String()}})
	ctx := context.Background()

	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"Rewrap", func() error { _, err := c.Admin().Rewrap(ctx, &mbv1.RewrapRequest{BatchSize: 10}); return err }},
		{"RevokeToken", func() error {
			_, err := c.Identity().RevokeToken(ctx, &mbv1.RevokeTokenRequest{Id: "token-1"})
			return err
		}},
	} {
		f.mu.Lock()
		f.calls, f.failN, f.failCode = nil, 2, codes.Unavailable
		f.mu.Unlock()
		if err := call.do(); err != nil {
			t.Fatalf("%s: %v", call.name, err)
		}
		calls := f.seen()
		if len(calls) != 3 {
			t.Fatalf("%s: attempts = %d, want 3", call.name, len(calls))
		}
		key := one(calls[0].md, HeaderIdempotencyKey)
		if len(key) < 16 {
			t.Fatalf("%s: idempotency key = %q", call.name, key)
		}
		for i, cl := range calls {
			if got := one(cl.md, HeaderIdempotencyKey); got != key || cl.method != call.name {
				t.Errorf("%s attempt %d: %s key %q, want %q", call.name, i, cl.method, got, key)
			}
		}
	}
}

func TestMaxAttemptsWithDeadline(t *testing.T) {
	f := &fakeSecrets{failN: 100, failCode: codes.Unavailable}
	c := newClient(t, Config{Endpoints: []string{startFake(t, f)}, MaxAttempts: 1, Timeout: 5 * time.Second})
	_, err := c.Secrets().Get(context.Background(), &mbv1.GetSecretRequest{Id: "x"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v", err)
	}
	if n := len(f.seen()); n != 1 {
		t.Errorf("attempts = %d, want 1", n)
	}
}

// A caller that cancels while the client waits between rounds gets
// CANCELLED, not the last node's UNAVAILABLE (a CLI would report "node
// unavailable" for a run the user interrupted).
func TestCancelDuringBackoffReturnsCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := New(ctx, Config{
		Endpoints:        []string{deadAddr(t)},
		DisableDiscovery: true,
		BaseBackoff:      time.Minute,
		MaxBackoff:       time.Minute,
		OnRetry: func(e RetryEvent) {
			if e.Delay > 0 {
				cancel() // the client is about to wait a minute
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Secrets().Get(ctx, &mbv1.GetSecretRequest{Id: "mbsec-1"}); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled during the backoff: %v, want CANCELLED", err)
	}
}
