package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// Roles of SPEC 3.
const (
	RoleViewer        = "mysterybox.viewer"
	RolePayloadViewer = "mysterybox.payload-viewer"
	RoleEditor        = "mysterybox.editor"
	RoleAdmin         = "mysterybox.admin"
	RoleRegionAdmin   = "admin"
)

// perm is what a call needs on its resource.
type perm int

const (
	permView        perm = iota + 1 // metadata of secrets, versions, projects
	permPayload                     // payload values
	permWrite                       // create/update/delete secrets and versions
	permBindings                    // manage access bindings on the resource
	permRegionAdmin                 // projects, accounts, tokens, cluster
)

var permNames = map[perm]string{
	permView: "view", permPayload: "read payloads of", permWrite: "change",
	permBindings: "manage access bindings on", permRegionAdmin: "administer",
}

var rolePerms = map[string][]perm{
	RoleViewer:        {permView},
	RolePayloadViewer: {permView, permPayload},
	RoleEditor:        {permView, permWrite},
	RoleAdmin:         {permView, permPayload, permWrite, permBindings},
	RoleRegionAdmin:   {permView, permPayload, permWrite, permBindings, permRegionAdmin},
}

func validRole(r string) bool { _, ok := rolePerms[r]; return ok }

// Token format: mbt1.<region>.<token-id>.<secret>.
const tokenVersion = "mbt1"

// bearer is a parsed, not yet authenticated, token.
type bearer struct {
	region, tokenID, secret string
}

type bearerKey struct{}

// exemptMethods need no token.
func exempt(method string) bool {
	// Node-to-node calls are authenticated by the region's keyring in
	// their handlers (ship.go), not by an account token.
	return strings.HasPrefix(method, "/grpc.health.v1.") || strings.HasPrefix(method, "/grpc.reflection.") || nodeMethod(method)
}

func parseBearer(ctx context.Context) (*bearer, error) {
	// ValueFromIncomingContext copies one key's values, not the whole map
	// (which FromIncomingContext copies on every call).
	vals := metadata.ValueFromIncomingContext(ctx, mdAuth)
	if len(vals) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no token: send metadata `authorization: Bearer <token>`")
	}
	v := vals[0]
	if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
		return nil, status.Error(codes.Unauthenticated, "authorization must be `Bearer <token>`")
	}
	parts := strings.Split(strings.TrimSpace(v[7:]), ".")
	if len(parts) != 4 || parts[0] != tokenVersion || parts[1] == "" || !strings.HasPrefix(parts[2], prefixToken) || parts[3] == "" {
		return nil, status.Error(codes.Unauthenticated, "malformed token: want mbt1.<region>.<token-id>.<secret>")
	}
	return &bearer{region: parts[1], tokenID: parts[2], secret: parts[3]}, nil
}

// UnaryInterceptor rejects calls without a well-formed token, and tokens of
// another region, before anything else runs; also on forwarded calls, so
// the leader checks again. Token validity and roles are checked by each
// endpoint against the state it reads (the leader's for linearizable calls).
func (s *Server) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if exempt(info.FullMethod) {
		return handler(ctx, req)
	}
	b, err := parseBearer(ctx)
	if err != nil {
		s.logRefusal(info.FullMethod, "", err)
		return nil, err
	}
	if b.region != s.cfg.Region {
		err := status.Errorf(codes.PermissionDenied, "token of region %s presented to region %s: only accounts of region %s may call it", b.region, s.cfg.Region, s.cfg.Region)
		s.logRefusal(info.FullMethod, "", err)
		return nil, err
	}
	s.hintLeader(ctx)
	return handler(context.WithValue(ctx, bearerKey{}, b), req)
}

// mdLeader tells clients where the leader is, so they can send writes and
// linearizable reads there directly (any token may learn it; Status and
// Members need a region admin).
const mdLeader = "x-mysterybox-leader"

// hintLeader attaches the leader's gRPC address, when known, to the
// response headers. A call that fails without a message gets a
// trailers-only response, which carries the headers set so far, so the
// hint reaches the client then too (TestLeaderHintReachesAnyClient); a
// trailer as well cost 2-3 % of a read's CPU on the leader.
func (s *Server) hintLeader(ctx context.Context) {
	addr := s.leaderGRPCAddr()
	if addr == "" {
		return
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdLeader, addr))
}

// leaderGRPCAddr returns the leader's gRPC address without waiting, from
// a small cache refreshed when the leader changes.
func (s *Server) leaderGRPCAddr() string {
	id, _ := s.raft.Leader()
	if id == "" {
		return ""
	}
	if c := s.leaderHint.Load(); c != nil && c[0] == id {
		return c[1]
	}
	addr := ""
	if id == s.cfg.NodeID {
		addr = s.cfg.GRPCAddress
	} else if a, err := s.fwd.lookupLeaderAddr(id); err == nil {
		addr = a
	}
	if addr != "" {
		s.leaderHint.Store(&[2]string{id, addr})
	}
	return addr
}

// StreamInterceptor applies the same region rule to streaming calls.
func (s *Server) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if exempt(info.FullMethod) {
		return handler(srv, ss)
	}
	b, err := parseBearer(ss.Context())
	if err == nil && b.region != s.cfg.Region {
		err = status.Errorf(codes.PermissionDenied, "token of region %s presented to region %s: only accounts of region %s may call it", b.region, s.cfg.Region, s.cfg.Region)
	}
	if err != nil {
		s.logRefusal(info.FullMethod, "", err)
		return err
	}
	return handler(srv, &authedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), bearerKey{}, b)})
}

// authedStream carries the parsed token in the stream's context.
type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *authedStream) Context() context.Context { return a.ctx }

func (s *Server) logRefusal(method, accountID string, err error) {
	st, _ := status.FromError(err)
	s.logger.Warn("call refused", "method", method, "account_id", accountID, "code", st.Code().String(), "reason", st.Message())
}

// caller is an authenticated account and the roles it holds, by resource.
type caller struct {
	accountID string
	roles     map[string][]string
}

func (c *caller) has(p perm, chain []string) bool {
	for _, res := range chain {
		for _, role := range c.roles[res] {
			for _, rp := range rolePerms[role] {
				if rp == p {
					return true
				}
			}
		}
	}
	return false
}

// authCache remembers resolved tokens between calls. An entry is valid
// only while the FSM's identity generation is the one it was filled at:
// any applied change to tokens, accounts or bindings (or a restore)
// invalidates every entry, so the cache never answers differently from
// the store.
type authCache struct {
	mu      sync.Mutex
	entries map[string]*authEntry
}

type authEntry struct {
	gen        uint64
	secretHash []byte
	expires    *timestamppb.Timestamp
	caller     *caller
}

const maxAuthCache = 10000

func (a *authCache) get(tokenID string, gen uint64) *authEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.entries[tokenID]; e != nil && e.gen == gen {
		return e
	}
	return nil
}

func (a *authCache) put(tokenID string, e *authEntry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.entries == nil || len(a.entries) >= maxAuthCache {
		a.entries = map[string]*authEntry{}
	}
	a.entries[tokenID] = e
}

// authenticate resolves the call's token against v, the view the call is
// served from (taken after the read barrier when linearizable); viewGen is
// the identity generation read before v was taken. A cache entry at the
// current generation is as new as v. A miss is resolved from v itself —
// never from a second view: a nested Store.Read waits behind a restore
// waiting for v's, and the node deadlocks — and cached under viewGen, which
// v is at least as new as (the FSM moves the generation after it commits).
func (s *Server) authenticate(ctx context.Context, v *store.View, viewGen uint64) (*caller, error) {
	b, ok := ctx.Value(bearerKey{}).(*bearer)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no token")
	}
	e := s.auth.get(b.tokenID, s.identityGen())
	if e == nil {
		var err error
		if e, err = s.resolveToken(v, b.tokenID, viewGen); err != nil {
			return nil, err
		}
	}
	if e.caller == nil {
		return nil, status.Errorf(codes.Unauthenticated, "unknown or revoked token %s", b.tokenID)
	}
	sum := sha256.Sum256([]byte(b.secret))
	if subtle.ConstantTimeCompare(sum[:], e.secretHash) != 1 {
		return nil, status.Errorf(codes.Unauthenticated, "unknown or revoked token %s", b.tokenID)
	}
	if e.expires != nil && !time.Now().Before(e.expires.AsTime()) {
		return nil, status.Errorf(codes.Unauthenticated, "token %s expired at %s", b.tokenID, e.expires.AsTime().UTC().Format(time.RFC3339))
	}
	return e.caller, nil
}

// resolveToken reads a token and its account's bindings from v, and
// caches them (also a miss, as an entry without caller) at generation gen.
func (s *Server) resolveToken(v *store.View, tokenID string, gen uint64) (*authEntry, error) {
	e := &authEntry{gen: gen}
	err := func() error {
		rec, err := v.Token(tokenID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		accountID := rec.GetToken().GetMetadata().GetParentId()
		bindings, err := v.BindingsOfAccount(accountID)
		if err != nil {
			return err
		}
		c := &caller{accountID: accountID, roles: map[string][]string{}}
		for _, ab := range bindings {
			res := ab.GetSpec().GetResourceId()
			c.roles[res] = append(c.roles[res], ab.GetSpec().GetRole())
		}
		e.secretHash, e.expires, e.caller = rec.GetSecretHash(), rec.GetToken().GetSpec().GetExpiresAt(), c
		return nil
	}()
	if err != nil {
		return nil, err
	}
	s.auth.put(tokenID, e)
	return e, nil
}

// access is what an endpoint requires: a permission on a resource, whose
// chain (the resource, its parents, the region) is resolved from the state.
type access struct {
	perm  perm
	chain func(v *store.View) ([]string, error)
}

// readAuthorized runs fn on a view of the store, with the call
// authenticated and its permission checked against that same view. It
// passes fn the caller, for endpoints that filter by permission.
func (s *Server) readAuthorized(ctx context.Context, a access, fn func(v *store.View, c *caller) error) error {
	viewGen := s.identityGen() // before the view (see authenticate)
	return s.store.Read(func(v *store.View) error {
		c, err := s.authorize(ctx, v, viewGen, a)
		if err != nil {
			return err
		}
		return fn(v, c)
	})
}

// authorize authenticates the call and checks its permission, both against
// v (viewGen: the identity generation read before v was taken).
func (s *Server) authorize(ctx context.Context, v *store.View, viewGen uint64, a access) (*caller, error) {
	c, err := s.authenticate(ctx, v, viewGen)
	if err != nil {
		s.logAuthnRefusal(ctx, err)
		return nil, err
	}
	noteAccount(ctx, c.accountID)
	if err := s.permit(ctx, v, c, a); err != nil {
		return nil, err
	}
	return c, nil
}

// logAuthnRefusal logs a refused authentication (not a storage error).
func (s *Server) logAuthnRefusal(ctx context.Context, err error) {
	if _, ok := status.FromError(err); ok {
		method, _ := grpc.Method(ctx)
		s.logRefusal(method, "", err)
	}
}

// permit checks that the authenticated caller c holds a's permission on
// a's resource, against v.
func (s *Server) permit(ctx context.Context, v *store.View, c *caller, a access) error {
	if a.perm == 0 {
		return nil
	}
	chain, err := a.chain(v)
	if err != nil {
		return err
	}
	if !c.has(a.perm, chain) {
		err := status.Errorf(codes.PermissionDenied, "account %s may not %s %s", c.accountID, permNames[a.perm], chain[0])
		method, _ := grpc.Method(ctx)
		s.logRefusal(method, c.accountID, err)
		return err
	}
	return nil
}

// ---------------------------------------------------------------- chains

// Chains list a resource and its parents up to the region. A resource that
// does not exist yields only the region, so that a caller without a
// region-wide role learns nothing about which ids exist.

func (s *Server) regionChain() access {
	return access{perm: permRegionAdmin, chain: func(*store.View) ([]string, error) { return []string{s.cfg.Region}, nil }}
}

func (s *Server) projectChain(p perm, projectID string) access {
	return access{perm: p, chain: func(v *store.View) ([]string, error) {
		return []string{projectID, s.cfg.Region}, nil
	}}
}

func (s *Server) secretChain(p perm, secretID string) access {
	return access{perm: p, chain: func(v *store.View) ([]string, error) {
		return s.secretParents(v, secretID)
	}}
}

func (s *Server) secretParents(v *store.View, secretID string) ([]string, error) {
	rec, err := v.SharedSecret(secretID)
	if errors.Is(err, store.ErrNotFound) {
		return []string{s.cfg.Region}, nil
	}
	if err != nil {
		return nil, err
	}
	return []string{secretID, rec.GetSecret().GetMetadata().GetParentId(), s.cfg.Region}, nil
}

func (s *Server) versionChain(p perm, versionID string) access {
	return access{perm: p, chain: func(v *store.View) ([]string, error) {
		rec, err := v.SharedVersion(versionID)
		if errors.Is(err, store.ErrNotFound) {
			return []string{s.cfg.Region}, nil
		}
		if err != nil {
			return nil, err
		}
		return s.secretParents(v, rec.GetVersion().GetMetadata().GetParentId())
	}}
}

// resourceChain is the chain of a binding's resource: the region, a
// project or a secret.
func (s *Server) resourceChain(v *store.View, resourceID string) ([]string, error) {
	switch fsm.ResourceKind(resourceID) {
	case "project":
		return []string{resourceID, s.cfg.Region}, nil
	case "secret":
		return s.secretParents(v, resourceID)
	default:
		return []string{s.cfg.Region}, nil
	}
}

// ---------------------------------------------------------------- bootstrap

// BootstrapAdmin creates the region's first admin account with the token
// (id and SHA-256 of its secret), unless the region already has one. It
// returns whether it did.
func (s *Server) BootstrapAdmin(ctx context.Context, tokenID string, secretHash []byte) (bool, error) {
	if !strings.HasPrefix(tokenID, prefixToken) || len(secretHash) != sha256.Size {
		return false, fmt.Errorf("bootstrap admin token %q is malformed", tokenID)
	}
	acct := &pb.Account{
		Metadata: &pb.Metadata{Id: newID(prefixAccountUser), ParentId: s.cfg.Region, Name: "admin"},
		Spec:     &pb.AccountSpec{Type: pb.AccountType_USER, Description: "region administrator created at bootstrap"},
		Status:   &pb.AccountStatus{Region: s.cfg.Region},
	}
	tok := &fsmpb.TokenRecord{
		Token: &pb.Token{
			Metadata: &pb.Metadata{Id: tokenID, ParentId: acct.GetMetadata().GetId()},
			Spec:     &pb.TokenSpec{Description: "bootstrap admin token"},
			Status:   &pb.TokenStatus{Region: s.cfg.Region},
		},
		SecretHash: secretHash,
	}
	ab := &pb.AccessBinding{
		Metadata: &pb.Metadata{Id: newID(prefixBinding), ParentId: s.cfg.Region},
		Spec:     &pb.AccessBindingSpec{ResourceId: s.cfg.Region, AccountId: acct.GetMetadata().GetId(), Role: RoleRegionAdmin},
	}
	resp, err := s.propose(ctx, nil, &fsmpb.Command{Op: &fsmpb.Command_BootstrapAdmin{BootstrapAdmin: &fsmpb.BootstrapAdmin{Account: acct, Token: tok, Binding: ab, ClusterId: newID("cluster-")}}}, grant{})
	if err != nil {
		return false, err
	}
	r, _ := resp.(*fsmpb.BootstrapResult)
	return r.GetApplied(), nil
}

// HasToken reports whether this node's state has token id.
func (s *Server) HasToken(id string) bool {
	found := false
	_ = s.store.Read(func(v *store.View) error {
		_, err := v.Token(id)
		found = err == nil
		return nil
	})
	return found
}

// Bootstrapped reports whether this node's state has the region's admin.
func (s *Server) Bootstrapped() (bool, error) {
	var done bool
	err := s.store.Read(func(v *store.View) error {
		var err error
		done, err = v.Bootstrapped()
		return err
	})
	return done, err
}

// ClusterID is the random id the region's first admin was created with,
// the same on every node of one cluster ("" before that).
func (s *Server) ClusterID() (string, error) {
	var id string
	err := s.store.Read(func(v *store.View) error {
		var err error
		id, err = v.ClusterID()
		return err
	})
	return id, err
}
