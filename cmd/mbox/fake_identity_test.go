package main

// The fake IdentityService (accounts, tokens, access bindings) and
// AdminService, and the tests of the commands built on them.

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// fakeBearer is the bearer token the fake's CreateToken returns.
const fakeBearer = "mbt1.local1.token-new.Zm9vYmFyc2VjcmV0cGFydA"

var fakeCreated = timestamppb.New(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC))

// fakeAuthz answers like a server with auth: fakeToken has every role,
// "viewer" is a known token without the role, anything else is unknown.
func fakeAuthz(md metadata.MD) error {
	switch auth := md.Get("authorization"); {
	case len(auth) == 1 && auth[0] == "Bearer "+fakeToken:
		return nil
	case len(auth) == 1 && auth[0] == "Bearer viewer":
		return status.Error(codes.PermissionDenied, "account serviceaccount-viewer lacks admin on region local1")
	}
	return status.Error(codes.Unauthenticated, "missing or unknown token")
}

type fakeIdentity struct {
	mbv1.UnimplementedIdentityServiceServer
	f *fake
}

func (x *fakeIdentity) check(ctx context.Context, method string, req proto.Message) error {
	return fakeAuthz(x.f.record(ctx, method, req))
}

func fakeAccount(id string) *mbv1.Account {
	return &mbv1.Account{
		Metadata: &mbv1.Metadata{Id: id, ParentId: "local1", Name: "name-of-" + id, ResourceVersion: 1, CreatedAt: fakeCreated},
		Spec:     &mbv1.AccountSpec{Type: mbv1.AccountType_SERVICE, Description: "ci"},
		Status:   &mbv1.AccountStatus{Region: "local1"},
	}
}

func (x *fakeIdentity) CreateAccount(ctx context.Context, req *mbv1.CreateAccountRequest) (*mbv1.Account, error) {
	if err := x.check(ctx, "CreateAccount", req); err != nil {
		return nil, err
	}
	acc := proto.Clone(req.GetAccount()).(*mbv1.Account)
	acc.Metadata.Id = "serviceaccount-new"
	if acc.GetSpec().GetType() == mbv1.AccountType_USER {
		acc.Metadata.Id = "useraccount-new"
	}
	acc.Metadata.ParentId, acc.Metadata.ResourceVersion, acc.Metadata.CreatedAt = "local1", 1, fakeCreated
	acc.Status = &mbv1.AccountStatus{Region: "local1"}
	return acc, nil
}

func (x *fakeIdentity) GetAccount(ctx context.Context, req *mbv1.GetAccountRequest) (*mbv1.Account, error) {
	if err := x.check(ctx, "GetAccount", req); err != nil {
		return nil, err
	}
	if req.GetId() == "serviceaccount-missing" {
		return nil, status.Error(codes.NotFound, "account serviceaccount-missing not found")
	}
	return fakeAccount(req.GetId()), nil
}

// ListAccounts serves 3 accounts, 2 per page.
func (x *fakeIdentity) ListAccounts(ctx context.Context, req *mbv1.ListAccountsRequest) (*mbv1.ListAccountsResponse, error) {
	if err := x.check(ctx, "ListAccounts", req); err != nil {
		return nil, err
	}
	if req.GetPageToken() == "" {
		return &mbv1.ListAccountsResponse{Accounts: []*mbv1.Account{fakeAccount("serviceaccount-1"), fakeAccount("serviceaccount-2")}, NextPageToken: "p2"}, nil
	}
	return &mbv1.ListAccountsResponse{Accounts: []*mbv1.Account{fakeAccount("serviceaccount-3")}}, nil
}

func (x *fakeIdentity) DeleteAccount(ctx context.Context, req *mbv1.DeleteAccountRequest) (*mbv1.DeleteAccountResponse, error) {
	if err := x.check(ctx, "DeleteAccount", req); err != nil {
		return nil, err
	}
	return &mbv1.DeleteAccountResponse{RevokedTokens: 2, RemovedBindings: 3}, nil
}

func fakeTokenMsg(id, account string) *mbv1.Token {
	return &mbv1.Token{
		Metadata: &mbv1.Metadata{Id: id, ParentId: account, ResourceVersion: 1, CreatedAt: fakeCreated},
		Spec:     &mbv1.TokenSpec{Description: "deploy"},
		Status:   &mbv1.TokenStatus{Region: "local1"},
	}
}

// CreateToken returns fakeBearer; for "serviceaccount-nosecret" it
// misbehaves and returns no bearer string.
func (x *fakeIdentity) CreateToken(ctx context.Context, req *mbv1.CreateTokenRequest) (*mbv1.CreateTokenResponse, error) {
	if err := x.check(ctx, "CreateToken", req); err != nil {
		return nil, err
	}
	tok := fakeTokenMsg("token-new", req.GetAccountId())
	tok.Spec.Description = req.GetDescription()
	if req.GetTtl() != nil {
		tok.Spec.ExpiresAt = timestamppb.New(fakeCreated.AsTime().Add(req.GetTtl().AsDuration()))
	}
	resp := &mbv1.CreateTokenResponse{Token: tok, Secret: fakeBearer}
	if req.GetAccountId() == "serviceaccount-nosecret" {
		resp.Secret = ""
	}
	return resp, nil
}

func (x *fakeIdentity) GetToken(ctx context.Context, req *mbv1.GetTokenRequest) (*mbv1.Token, error) {
	if err := x.check(ctx, "GetToken", req); err != nil {
		return nil, err
	}
	return fakeTokenMsg(req.GetId(), "serviceaccount-1"), nil
}

func (x *fakeIdentity) ListTokens(ctx context.Context, req *mbv1.ListTokensRequest) (*mbv1.ListTokensResponse, error) {
	if err := x.check(ctx, "ListTokens", req); err != nil {
		return nil, err
	}
	t2 := fakeTokenMsg("token-2", req.GetAccountId())
	t2.Spec.ExpiresAt = timestamppb.New(time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC))
	return &mbv1.ListTokensResponse{Tokens: []*mbv1.Token{fakeTokenMsg("token-1", req.GetAccountId()), t2}}, nil
}

func (x *fakeIdentity) RevokeToken(ctx context.Context, req *mbv1.RevokeTokenRequest) (*mbv1.RevokeTokenResponse, error) {
	if err := x.check(ctx, "RevokeToken", req); err != nil {
		return nil, err
	}
	return &mbv1.RevokeTokenResponse{}, nil
}

func fakeBinding(id, resource, account, role string) *mbv1.AccessBinding {
	return &mbv1.AccessBinding{
		Metadata: &mbv1.Metadata{Id: id, ParentId: resource, ResourceVersion: 1, CreatedAt: fakeCreated},
		Spec:     &mbv1.AccessBindingSpec{ResourceId: resource, AccountId: account, Role: role},
	}
}

func (x *fakeIdentity) CreateAccessBinding(ctx context.Context, req *mbv1.CreateAccessBindingRequest) (*mbv1.AccessBinding, error) {
	if err := x.check(ctx, "CreateAccessBinding", req); err != nil {
		return nil, err
	}
	sp := req.GetBinding().GetSpec()
	return fakeBinding("accessbinding-new", sp.GetResourceId(), sp.GetAccountId(), sp.GetRole()), nil
}

func (x *fakeIdentity) GetAccessBinding(ctx context.Context, req *mbv1.GetAccessBindingRequest) (*mbv1.AccessBinding, error) {
	if err := x.check(ctx, "GetAccessBinding", req); err != nil {
		return nil, err
	}
	return fakeBinding(req.GetId(), "project-1", "serviceaccount-1", "mysterybox.viewer"), nil
}

func (x *fakeIdentity) ListAccessBindings(ctx context.Context, req *mbv1.ListAccessBindingsRequest) (*mbv1.ListAccessBindingsResponse, error) {
	if err := x.check(ctx, "ListAccessBindings", req); err != nil {
		return nil, err
	}
	return &mbv1.ListAccessBindingsResponse{Bindings: []*mbv1.AccessBinding{
		fakeBinding("accessbinding-1", req.GetResourceId(), "serviceaccount-1", "mysterybox.viewer"),
		fakeBinding("accessbinding-2", req.GetResourceId(), "useraccount-2", "mysterybox.editor"),
	}}, nil
}

func (x *fakeIdentity) DeleteAccessBinding(ctx context.Context, req *mbv1.DeleteAccessBindingRequest) (*mbv1.DeleteAccessBindingResponse, error) {
	if err := x.check(ctx, "DeleteAccessBinding", req); err != nil {
		return nil, err
	}
	return &mbv1.DeleteAccessBindingResponse{}, nil
}

// fakeAdmin re-wraps `remaining` data keys, batch_size (default 100) per
// call. With stall set a call re-wraps nothing; failAfter > 0 makes the
// call after that many fail with INTERNAL. Fields are guarded by f.mu.
type fakeAdmin struct {
	mbv1.UnimplementedAdminServiceServer
	f *fake

	remaining int64
	stall     bool
	failAfter int
	served    int
}

func (x *fakeAdmin) setRewrap(remaining int64, stall bool, failAfter int) {
	x.f.mu.Lock()
	defer x.f.mu.Unlock()
	x.remaining, x.stall, x.failAfter, x.served = remaining, stall, failAfter, 0
}

func (x *fakeAdmin) Rewrap(ctx context.Context, req *mbv1.RewrapRequest) (*mbv1.RewrapResponse, error) {
	if err := fakeAuthz(x.f.record(ctx, "Rewrap", req)); err != nil {
		return nil, err
	}
	x.f.mu.Lock()
	defer x.f.mu.Unlock()
	if x.failAfter > 0 && x.served == x.failAfter {
		return nil, status.Error(codes.Internal, "injected rewrap failure")
	}
	x.served++
	n := int64(req.GetBatchSize())
	if n == 0 {
		n = 100
	}
	n = min(n, x.remaining)
	if x.stall {
		n = 0
	}
	x.remaining -= n
	resp := &mbv1.RewrapResponse{Rewrapped: n, Remaining: x.remaining, ActiveKeyId: "k2", KeysInUse: []string{"k2"}}
	if x.remaining > 0 {
		resp.KeysInUse = []string{"k1", "k2"}
	}
	return resp, nil
}

// ---------------------------------------------------------------- tests

// authed runs mbox against the fake with the all-powerful token.
func (f *fake) authed(t *testing.T, args ...string) result {
	t.Helper()
	return f.run(t, []string{"MYSTERYBOX_TOKEN=" + fakeToken}, args...)
}

// callsSince returns the calls made after the first n.
func (f *fake) callsSince(n int) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls[n:]...)
}

func idemKey(c fakeCall) string {
	if k := c.md.Get("x-idempotency-key"); len(k) == 1 {
		return k[0]
	}
	return ""
}

func TestFakeAccountCommands(t *testing.T) {
	f := startFakeServer(t)

	r := f.authed(t, "account", "create", "--name", "ci-deployer", "--description", "deploys", "--label", "team=core")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("create: %v", r)
	}
	c := f.last(t)
	acc := c.req.(*mbv1.CreateAccountRequest).GetAccount()
	if c.method != "CreateAccount" || acc.GetMetadata().GetName() != "ci-deployer" || acc.GetSpec().GetType() != mbv1.AccountType_SERVICE ||
		acc.GetSpec().GetDescription() != "deploys" || acc.GetMetadata().GetLabels()["team"] != "core" {
		t.Errorf("create request = %v", c.req)
	}
	if len(idemKey(c)) < 16 {
		t.Errorf("CreateAccount without x-idempotency-key: %v", c.md)
	}
	for _, line := range []string{"id:               serviceaccount-new\n", "name:             ci-deployer\n", "type:             SERVICE\n",
		"region:           local1\n", "created_at:       2024-01-02T03:04:05Z\n"} {
		if !strings.Contains(r.stdout, line) {
			t.Errorf("create text lacks %q:\n%s", line, r.stdout)
		}
	}
	if !strings.HasPrefix(r.stdout, "id:") {
		t.Errorf("create text should start with the id:\n%s", r.stdout)
	}

	r = f.authed(t, "-o", "json", "account", "create", "--name", "alice", "--type", "USER")
	got := &mbv1.Account{}
	if r.code != 0 || protojsonUnmarshal(r.stdout, got) != nil || got.GetMetadata().GetId() != "useraccount-new" || got.GetSpec().GetType() != mbv1.AccountType_USER {
		t.Errorf("create --type user: %v", r)
	}
	if !strings.Contains(r.stdout, `"type": "USER"`) {
		t.Errorf("json type:\n%s", r.stdout)
	}

	n := f.count()
	checkFail(t, f.authed(t, "account", "create", "--name", "x", "--type", "robot"), 2, "USAGE", nil)
	checkFail(t, f.authed(t, "account", "create", "--type", "user"), 2, "USAGE", nil)
	if f.count() != n {
		t.Error("a usage error made a call")
	}

	// list follows both pages.
	n = f.count()
	lst := &mbv1.ListAccountsResponse{}
	r = f.authed(t, "-o", "json", "account", "list")
	if r.code != 0 || protojsonUnmarshal(r.stdout, lst) != nil || len(lst.GetAccounts()) != 3 || f.count()-n != 2 {
		t.Errorf("list json: %d accounts in %d calls: %v", len(lst.GetAccounts()), f.count()-n, r)
	}
	r = f.authed(t, "account", "list")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "TYPE") ||
		!strings.Contains(lines[3], "serviceaccount-3") || !strings.Contains(lines[1], "SERVICE") {
		t.Errorf("list text: %v", r)
	}
	r = f.authed(t, "account", "list", "--page-size", "2")
	if r.code != 0 || !strings.Contains(r.stderr, "--page-token p2") || f.last(t).req.(*mbv1.ListAccountsRequest).GetPageSize() != 2 {
		t.Errorf("list one page: %v", r)
	}

	r = f.authed(t, "account", "get", "serviceaccount-7")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "id:               serviceaccount-7\n") || f.last(t).req.(*mbv1.GetAccountRequest).GetId() != "serviceaccount-7" {
		t.Errorf("get: %v", r)
	}
	if k := idemKey(f.last(t)); k != "" {
		t.Errorf("GetAccount carries x-idempotency-key %q", k)
	}
	checkFail(t, f.authed(t, "account", "get", "serviceaccount-missing"), 3, "NOT_FOUND", nil)

	r = f.authed(t, "account", "delete", "serviceaccount-7", "--resource-version", "4")
	if r.code != 0 || r.stdout != "deleted account serviceaccount-7: revoked 2 tokens, removed 3 access bindings\n" {
		t.Errorf("delete: %v", r)
	}
	c = f.last(t)
	if req := c.req.(*mbv1.DeleteAccountRequest); req.GetId() != "serviceaccount-7" || req.GetResourceVersion() != 4 || idemKey(c) == "" {
		t.Errorf("delete request = %v, md %v", req, c.md)
	}
	del := &mbv1.DeleteAccountResponse{}
	r = f.authed(t, "-o", "json", "account", "delete", "serviceaccount-7")
	if r.code != 0 || protojsonUnmarshal(r.stdout, del) != nil || del.GetRevokedTokens() != 2 || del.GetRemovedBindings() != 3 {
		t.Errorf("delete json: %v", r)
	}
	if !strings.Contains(r.stdout, `"revoked_tokens": "2"`) {
		t.Errorf("delete json uses proto names and int64 strings:\n%s", r.stdout)
	}
}

func TestFakeTokenCreateStdoutExact(t *testing.T) {
	f := startFakeServer(t)

	r := f.authed(t, "token", "create", "--account-id", "serviceaccount-1", "--description", "ci")
	if r.code != 0 {
		t.Fatalf("create: %v", r)
	}
	// Only the bearer string and one newline: TOKEN=$(mbox token create ...).
	if r.stdout != fakeBearer+"\n" {
		t.Errorf("stdout = %q, want exactly %q", r.stdout, fakeBearer+"\n")
	}
	if !strings.Contains(r.stderr, "shown only once") || !strings.Contains(r.stderr, "token-new") || strings.Contains(r.stderr, fakeBearer) ||
		strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("stderr note = %q", r.stderr)
	}
	c := f.last(t)
	req := c.req.(*mbv1.CreateTokenRequest)
	if c.method != "CreateToken" || req.GetAccountId() != "serviceaccount-1" || req.GetDescription() != "ci" || req.GetTtl() != nil {
		t.Errorf("request = %v", req)
	}
	if idemKey(c) == "" {
		t.Error("CreateToken without x-idempotency-key")
	}

	// json and yaml: the whole response, bearer string included.
	r = f.authed(t, "-o", "json", "token", "create", "--account-id", "serviceaccount-1")
	resp := &mbv1.CreateTokenResponse{}
	if r.code != 0 || r.stderr != "" || protojsonUnmarshal(r.stdout, resp) != nil || resp.GetSecret() != fakeBearer ||
		resp.GetToken().GetMetadata().GetId() != "token-new" || resp.GetToken().GetMetadata().GetParentId() != "serviceaccount-1" {
		t.Errorf("json: %v", r)
	}
	r = f.authed(t, "-o", "yaml", "token", "create", "--account-id", "serviceaccount-1")
	var doc map[string]any
	if r.code != 0 || yaml.Unmarshal([]byte(r.stdout), &doc) != nil || doc["secret"] != fakeBearer {
		t.Errorf("yaml: %v", r)
	}

	// --ttl: Go durations, days, both; 0 means none.
	for _, c := range []struct {
		ttl  string
		want time.Duration
	}{
		{"30d", 30 * 24 * time.Hour},
		{"1d12h", 36 * time.Hour},
		{"90m", 90 * time.Minute},
		{"0", 0},
		{"0d", 0},
	} {
		r := f.authed(t, "-o", "json", "token", "create", "--account-id", "serviceaccount-1", "--ttl", c.ttl)
		if r.code != 0 {
			t.Fatalf("--ttl %s: %v", c.ttl, r)
		}
		got := f.last(t).req.(*mbv1.CreateTokenRequest).GetTtl()
		if (c.want == 0 && got != nil) || (c.want != 0 && got.AsDuration() != c.want) {
			t.Errorf("--ttl %s sent %v, want %v", c.ttl, got, c.want)
		}
		resp := &mbv1.CreateTokenResponse{}
		protojsonUnmarshal(r.stdout, resp)
		if exp := resp.GetToken().GetSpec().GetExpiresAt(); (c.want == 0) != (exp == nil) {
			t.Errorf("--ttl %s: expires_at %v", c.ttl, exp)
		}
	}
	r = f.authed(t, "token", "create", "--account-id", "serviceaccount-1", "--ttl", "30d")
	if r.stdout != fakeBearer+"\n" || !strings.Contains(r.stderr, "2024-02-01T03:04:05Z") {
		t.Errorf("--ttl 30d text: %v", r)
	}

	n := f.count()
	for _, bad := range []string{"-1h", "soon", "1.5d", "d", "-2d", "1d-1h", "", "99999999999d"} {
		checkFail(t, f.authed(t, "token", "create", "--account-id", "serviceaccount-1", "--ttl", bad), 2, "USAGE", []string{"--ttl", bad})
	}
	checkFail(t, f.authed(t, "token", "create"), 2, "USAGE", nil)
	if f.count() != n {
		t.Error("a usage error made a call")
	}

	// A response without the bearer string is an error, not an empty line.
	checkFail(t, f.authed(t, "token", "create", "--account-id", "serviceaccount-nosecret"), 1, "INTERNAL", nil)
}

func TestFakeTokenListGetRevoke(t *testing.T) {
	f := startFakeServer(t)

	r := f.authed(t, "token", "list", "--account-id", "serviceaccount-1")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[1], "never") ||
		!strings.Contains(lines[2], "2024-02-01T00:00:00Z") || !strings.Contains(lines[1], "serviceaccount-1") {
		t.Errorf("list text: %v", r)
	}
	if req := f.last(t).req.(*mbv1.ListTokensRequest); req.GetAccountId() != "serviceaccount-1" {
		t.Errorf("list request = %v", req)
	}
	lst := &mbv1.ListTokensResponse{}
	r = f.authed(t, "-o", "json", "token", "list", "--account-id", "serviceaccount-1")
	if r.code != 0 || protojsonUnmarshal(r.stdout, lst) != nil || len(lst.GetTokens()) != 2 {
		t.Errorf("list json: %v", r)
	}

	r = f.authed(t, "token", "get", "token-1")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "id:               token-1\n") || !strings.Contains(r.stdout, "account_id:       serviceaccount-1\n") ||
		!strings.Contains(r.stdout, "expires_at:       never\n") {
		t.Errorf("get: %v", r)
	}
	if f.last(t).req.(*mbv1.GetTokenRequest).GetId() != "token-1" {
		t.Errorf("get request = %v", f.last(t).req)
	}

	r = f.authed(t, "token", "revoke", "token-1")
	c := f.last(t)
	if r.code != 0 || r.stdout != "revoked token token-1\n" || c.method != "RevokeToken" || c.req.(*mbv1.RevokeTokenRequest).GetId() != "token-1" {
		t.Errorf("revoke: %v", r)
	}
	if idemKey(c) == "" {
		t.Error("RevokeToken without x-idempotency-key")
	}
	if r = f.authed(t, "-o", "json", "token", "revoke", "token-1"); r.code != 0 || r.stdout != "{}\n" {
		t.Errorf("revoke json: %v", r)
	}
	// Only token create ever prints a bearer string.
	for _, args := range [][]string{{"token", "list", "--account-id", "a"}, {"-o", "yaml", "token", "get", "token-1"}} {
		if r := f.authed(t, args...); strings.Contains(r.stdout+r.stderr, "mbt1.") {
			t.Errorf("%q printed a bearer token: %v", args, r)
		}
	}
	checkFail(t, f.authed(t, "token", "list"), 2, "USAGE", nil)
	checkFail(t, f.authed(t, "token", "revoke"), 2, "USAGE", nil)
}

func TestFakeAccessBindingCommands(t *testing.T) {
	f := startFakeServer(t)

	for _, role := range []string{"mysterybox.viewer", "mysterybox.payload-viewer", "mysterybox.editor", "mysterybox.admin", "admin"} {
		r := f.authed(t, "access-binding", "create", "--resource-id", "project-1", "--account-id", "serviceaccount-1", "--role", role)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "id:               accessbinding-new\n") || !strings.Contains(r.stdout, "role:             "+role+"\n") {
			t.Errorf("create %s: %v", role, r)
		}
		c := f.last(t)
		sp := c.req.(*mbv1.CreateAccessBindingRequest).GetBinding().GetSpec()
		if sp.GetResourceId() != "project-1" || sp.GetAccountId() != "serviceaccount-1" || sp.GetRole() != role || idemKey(c) == "" {
			t.Errorf("create %s request = %v", role, sp)
		}
	}

	// An unknown role is a usage error listing the valid ones; nothing is sent.
	n := f.count()
	for _, role := range []string{"viewer", "mysterybox.owner", "Admin", ""} {
		args := []string{"access-binding", "create", "--resource-id", "project-1", "--account-id", "serviceaccount-1", "--role", role}
		r := f.authed(t, args...)
		checkFail(t, r, 2, "USAGE", args)
		for _, valid := range []string{"mysterybox.viewer", "mysterybox.payload-viewer", "mysterybox.editor", "mysterybox.admin", "admin"} {
			if !strings.Contains(r.stderr, valid) {
				t.Errorf("role %q: error does not list %s: %q", role, valid, r.stderr)
			}
		}
	}
	checkFail(t, f.authed(t, "access-binding", "create", "--resource-id", "project-1", "--account-id", "a"), 2, "USAGE", nil)
	checkFail(t, f.authed(t, "access-binding", "list"), 2, "USAGE", nil)
	if f.count() != n {
		t.Error("a usage error made a call")
	}

	r := f.authed(t, "access-binding", "list", "--resource-id", "project-9")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "ROLE") ||
		!strings.Contains(lines[2], "mysterybox.editor") || !strings.Contains(lines[1], "project-9") {
		t.Errorf("list text: %v", r)
	}
	if f.last(t).req.(*mbv1.ListAccessBindingsRequest).GetResourceId() != "project-9" {
		t.Errorf("list request = %v", f.last(t).req)
	}
	lst := &mbv1.ListAccessBindingsResponse{}
	r = f.authed(t, "-o", "json", "access-binding", "list", "--resource-id", "project-9")
	if r.code != 0 || protojsonUnmarshal(r.stdout, lst) != nil || len(lst.GetBindings()) != 2 || !strings.Contains(r.stdout, `"resource_id": "project-9"`) {
		t.Errorf("list json: %v", r)
	}
	r = f.authed(t, "access-binding", "get", "accessbinding-5")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "id:               accessbinding-5\n") || f.last(t).req.(*mbv1.GetAccessBindingRequest).GetId() != "accessbinding-5" {
		t.Errorf("get: %v", r)
	}
	r = f.authed(t, "access-binding", "delete", "accessbinding-5")
	c := f.last(t)
	if r.code != 0 || r.stdout != "deleted access binding accessbinding-5\n" || c.req.(*mbv1.DeleteAccessBindingRequest).GetId() != "accessbinding-5" || idemKey(c) == "" {
		t.Errorf("delete: %v", r)
	}
}

func TestFakeAdminRewrap(t *testing.T) {
	f := startFakeServer(t)

	f.admin.setRewrap(250, false, 0)
	n := f.count()
	r := f.authed(t, "admin", "rewrap")
	if r.code != 0 || r.stdout != "rewrapped 250 data keys; keys in use: k2\n" {
		t.Errorf("rewrap: %v", r)
	}
	// stderr is not a terminal here: no progress.
	if r.stderr != "" {
		t.Errorf("progress written to a non-terminal stderr: %q", r.stderr)
	}
	calls := f.callsSince(n)
	keys := map[string]bool{}
	for _, c := range calls {
		if c.req.(*mbv1.RewrapRequest).GetBatchSize() != 0 {
			t.Errorf("batch_size sent without --batch-size: %v", c.req)
		}
		keys[idemKey(c)] = true
	}
	// Each batch is its own call with its own idempotency key (one key
	// reused would return the first batch's result again).
	if len(calls) != 3 || len(keys) != 3 || keys[""] {
		t.Errorf("%d calls with %d distinct idempotency keys, want 3 and 3", len(calls), len(keys))
	}

	f.admin.setRewrap(250, false, 0)
	n = f.count()
	sum := &mbv1.RewrapResponse{}
	r = f.authed(t, "-o", "json", "admin", "rewrap", "--batch-size", "60")
	if r.code != 0 || protojsonUnmarshal(r.stdout, sum) != nil || sum.GetRewrapped() != 250 || sum.GetRemaining() != 0 ||
		sum.GetActiveKeyId() != "k2" || strings.Join(sum.GetKeysInUse(), ",") != "k2" {
		t.Errorf("rewrap json: %v", r)
	}
	if calls := f.callsSince(n); len(calls) != 5 || calls[0].req.(*mbv1.RewrapRequest).GetBatchSize() != 60 {
		t.Errorf("--batch-size 60: %d calls, first %v", len(calls), calls[0].req)
	}

	// Nothing to do: one call.
	f.admin.setRewrap(0, false, 0)
	n = f.count()
	if r = f.authed(t, "admin", "rewrap"); r.code != 0 || r.stdout != "rewrapped 0 data keys; keys in use: k2\n" || f.count()-n != 1 {
		t.Errorf("rewrap with nothing to do: %v", r)
	}

	// No progress: give up instead of looping forever.
	f.admin.setRewrap(40, true, 0)
	r = f.authed(t, "admin", "rewrap")
	checkFail(t, r, 1, "FAILED_PRECONDITION", nil)
	if !strings.Contains(r.stderr, "40 data keys remain") {
		t.Errorf("stall error: %q", r.stderr)
	}

	// A failure midway keeps its code and says how far it got.
	f.admin.setRewrap(500, false, 2)
	r = f.authed(t, "admin", "rewrap")
	checkFail(t, r, 1, "INTERNAL", nil)
	if !strings.Contains(r.stderr, "injected rewrap failure") || !strings.Contains(r.stderr, "re-wrapped 200 data keys before this error") {
		t.Errorf("midway error: %q", r.stderr)
	}
	// ... and a rerun finishes the job.
	f.admin.clearFailure()
	if r = f.authed(t, "admin", "rewrap"); r.code != 0 || r.stdout != "rewrapped 300 data keys; keys in use: k2\n" {
		t.Errorf("rerun: %v", r)
	}

	n = f.count()
	checkFail(t, f.authed(t, "admin", "rewrap", "--batch-size", "0"), 2, "USAGE", nil)
	checkFail(t, f.authed(t, "admin", "rewrap", "--batch-size", "-5"), 2, "USAGE", nil)
	checkFail(t, f.authed(t, "admin"), 2, "USAGE", nil)
	if f.count() != n {
		t.Error("a usage error made a call")
	}
}

func (x *fakeAdmin) clearFailure() {
	x.f.mu.Lock()
	defer x.f.mu.Unlock()
	x.failAfter = 0
}

// TestFakeRewrapProgressOnTerminal runs mbox in-process with stderr flagged
// as a terminal (a pipe cannot be one).
func TestFakeRewrapProgressOnTerminal(t *testing.T) {
	f := startFakeServer(t)
	f.admin.setRewrap(250, false, 0)
	var stdout, stderr bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, stderrTTY: true}
	code := a.execute(context.Background(), []string{"--endpoints", f.addr, "--token", fakeToken, "admin", "rewrap"})
	if code != 0 || stdout.String() != "rewrapped 250 data keys; keys in use: k2\n" {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"rewrapped 100, 150 remaining", "rewrapped 200, 50 remaining"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("progress lacks %q: %q", want, stderr.String())
		}
	}
	if !strings.HasSuffix(stderr.String(), "\n") || strings.Contains(stderr.String(), "250") {
		t.Errorf("progress should end with a newline and stop before the result: %q", stderr.String())
	}
}

func TestFakeIdentityExit4(t *testing.T) {
	f := startFakeServer(t)
	commands := [][]string{
		{"account", "create", "--name", "a"},
		{"account", "list"},
		{"account", "get", "serviceaccount-1"},
		{"account", "delete", "serviceaccount-1"},
		{"token", "create", "--account-id", "serviceaccount-1", "--ttl", "30d"},
		{"token", "list", "--account-id", "serviceaccount-1"},
		{"token", "get", "token-1"},
		{"token", "revoke", "token-1"},
		{"access-binding", "create", "--resource-id", "project-1", "--account-id", "serviceaccount-1", "--role", "mysterybox.viewer"},
		{"access-binding", "list", "--resource-id", "project-1"},
		{"access-binding", "get", "accessbinding-1"},
		{"access-binding", "delete", "accessbinding-1"},
		{"admin", "rewrap"},
	}
	for _, args := range commands {
		for _, format := range []string{"text", "json"} {
			a := append([]string{"-o", format}, args...)
			checkFail(t, f.run(t, []string{"MYSTERYBOX_TOKEN=viewer"}, a...), 4, "PERMISSION_DENIED", a)
			checkFail(t, f.run(t, nil, a...), 4, "UNAUTHENTICATED", a)
			checkFail(t, f.run(t, []string{"MYSTERYBOX_TOKEN=mbt1.local1.token-revoked.x"}, a...), 4, "UNAUTHENTICATED", a)
		}
	}
}
