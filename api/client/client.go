// Package client is the Go client of MysteryBox.
//
// A Client keeps one gRPC connection per node of a region and implements
// grpc.ClientConnInterface itself, so the generated service clients returned
// by Secrets, Versions, Payloads, Identity, Cluster and Admin all go through
// one call path that:
//
//   - sends "authorization: Bearer <token>" when a token is configured;
//   - sends "x-consistency: stale" when stale reads are requested;
//   - gives every mutation an "x-idempotency-key", generated once per logical
//     call (or taken from WithIdempotencyKey) and reused on every retry, so a
//     retry through a failover never applies twice;
//   - sends mutations and linearizable reads to the region's leader when it
//     is known, saving the hop a follower would forward them over;
//   - on UNAVAILABLE (no leader now, not the leader, refused or lost
//     connection, outcome unknown) or an attempt that ran out of its own
//     deadline (Config.AttemptTimeout), moves on to the next node at once,
//     and after every node failed backs off (capped exponential, jittered)
//     before the next round, all within the caller's deadline.
//
// The nodes are seeded from Config.Endpoints and, unless discovery is
// disabled, learned from ClusterService.Members (all nodes, the leader) and
// ClusterService.Status (the leader) in the background, which answer any
// token of the region. A server that refuses them (PERMISSION_DENIED, as
// releases before 2026-12-05 did to non-admin tokens) makes the client keep
// to the configured endpoints, which is all failover needs.
//
// Errors returned by calls are always gRPC status errors (status.FromError
// works on them), including deadline and cancellation errors.
package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// Metadata keys of the MysteryBox API (SPEC section 3).
const (
	HeaderAuthorization  = "authorization"
	HeaderConsistency    = "x-consistency"
	HeaderIdempotencyKey = "x-idempotency-key"
)

// Consistency levels accepted in Config.Consistency.
const (
	ConsistencyDefault      = ""
	ConsistencyLinearizable = "linearizable"
	ConsistencyStale        = "stale"
)

// Defaults of Config.
const (
	DefaultMaxAttempts     = 10
	DefaultBaseBackoff     = 50 * time.Millisecond
	DefaultMaxBackoff      = 2 * time.Second
	DefaultAttemptTimeout  = 5 * time.Second
	DefaultRefreshInterval = 30 * time.Second
)

const (
	methodMembers = "/mysterybox.v1.ClusterService/Members"
	methodStatus  = "/mysterybox.v1.ClusterService/Status"

	// discoveryTimeout bounds one discovery call to one node.
	discoveryTimeout = 3 * time.Second
	// minRefreshGap rate-limits the discoveries that failures trigger.
	minRefreshGap = 200 * time.Millisecond
)

// Config configures a Client.
type Config struct {
	// Endpoints are gRPC addresses (host:port) of nodes of one region; an
	// element may itself be a comma-separated list. At least one is
	// required. They are always kept, also when discovery does not list them.
	Endpoints []string
	// Token is sent as "authorization: Bearer <token>" when not empty.
	Token string
	// Timeout bounds each logical call, retries included, when > 0. A shorter
	// deadline on the caller's context wins.
	Timeout time.Duration
	// AttemptTimeout bounds each attempt, so that a node that hangs does not
	// eat the whole deadline: when it passes, the attempt counts as failed
	// and the call moves on to the next node. Default 5s; negative: none.
	AttemptTimeout time.Duration
	// Consistency of reads: "" or "linearizable" (the server default), or
	// "stale" to let any node answer from its own state.
	Consistency string

	// MaxAttempts, when > 0, bounds the attempts of one call (1: no retry).
	// When 0, a call whose context has a deadline retries until the
	// deadline is near, and one without a deadline makes at most
	// DefaultMaxAttempts (10) attempts.
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape the wait between rounds (a round tries
	// every known node once): BaseBackoff doubles after every round up to
	// MaxBackoff, and each wait is jittered. Defaults 50ms and 2s.
	BaseBackoff time.Duration
	MaxBackoff  time.Duration

	// DisableDiscovery keeps the client to Endpoints and never asks the
	// region for its members or leader; a leader named in a response
	// (HeaderLeader) is followed only if it is one of Endpoints.
	DisableDiscovery bool
	// RefreshInterval is how often the members are fetched again; failures
	// and an unknown leader trigger earlier (rate-limited) refreshes.
	// Default 30s.
	RefreshInterval time.Duration

	// OnRetry, when set, is called synchronously from the calling goroutine
	// after an attempt failed and will be retried, and once more (with Done
	// set) when a call that needed retries ends. It must be quick and safe
	// for concurrent use; the CLI uses it to show a spinner.
	OnRetry func(RetryEvent)
	// Interceptors run around every attempt, on the connection of the node
	// it goes to, after the client set its headers (and idempotency key).
	Interceptors []grpc.UnaryClientInterceptor
	// TLS, when set, secures every connection (server verification, and a
	// client certificate for servers that ask for one). Nil: plaintext, as
	// a --dev server speaks.
	TLS *tls.Config
	// DialOptions are appended to the client's own (transport security,
	// message size, reconnect backoff, Interceptors).
	DialOptions []grpc.DialOption
}

// RetryEvent describes a failed attempt that will be retried, or (Done) the
// end of a call that needed retries.
type RetryEvent struct {
	// Method is the full gRPC method name.
	Method string
	// Attempt is the number (from 1) of the attempt that failed; with Done,
	// the number of attempts made.
	Attempt int
	// Endpoint is the node the failed attempt went to.
	Endpoint string
	// Err is the attempt's error; with Done, the call's result (nil: success).
	Err error
	// Delay is the wait before the next attempt (0 when it goes at once to
	// another node).
	Delay time.Duration
	Done  bool
}

// Client is a MysteryBox client. It is safe for concurrent use.
type Client struct {
	cfg   Config
	opts  []grpc.DialOption
	seeds []string

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	// nodes are the addresses calls may go to: the seeds, then the nodes
	// discovery found that are not seeds.
	nodes []string
	// leader is the leader's address as last learned, "" when unknown.
	leader string
	// sticky is the node that answered last: calls that do not go to the
	// leader start there, so a healthy node stays preferred after failover.
	sticky string
	// discoveryOff is set when discovery is disabled or was refused.
	discoveryOff bool
	discoveryErr error

	kick   chan struct{}
	bg     context.Context
	stopBg context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Compile-time check: the generated clients can use a *Client as connection.
var _ grpc.ClientConnInterface = (*Client)(nil)

// New validates cfg, creates the connections and, unless disabled, starts
// discovering the region in the background. Connections are made lazily, so
// New does not fail when a node is down and does not wait for one; ctx is not
// used.
func New(ctx context.Context, cfg Config) (*Client, error) {
	_ = ctx
	var addrs []string
	for _, e := range cfg.Endpoints {
		for _, a := range strings.Split(e, ",") {
			if a = strings.TrimSpace(a); a != "" && !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("client: no endpoints")
	}
	switch cfg.Consistency {
	case ConsistencyDefault, ConsistencyLinearizable, ConsistencyStale:
	default:
		return nil, fmt.Errorf("client: consistency %q: want %q or %q", cfg.Consistency, ConsistencyLinearizable, ConsistencyStale)
	}
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, errors.New("client: token contains a line break")
	}
	if cfg.MaxAttempts < 0 {
		cfg.MaxAttempts = 0
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = DefaultBaseBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.BaseBackoff {
		cfg.MaxBackoff = cfg.BaseBackoff
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}

	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// A payload may be up to 1 MiB; leave room for the envelope.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
		// Reconnect to a node that came back within seconds, not the
		// default two minutes: it may be the new leader.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if len(cfg.Interceptors) > 0 {
		opts = append(opts, grpc.WithChainUnaryInterceptor(cfg.Interceptors...))
	}
	opts = append(opts, cfg.DialOptions...)

	c := &Client{
		cfg:          cfg,
		opts:         opts,
		seeds:        addrs,
		conns:        map[string]*grpc.ClientConn{},
		nodes:        append([]string(nil), addrs...),
		discoveryOff: cfg.DisableDiscovery,
		kick:         make(chan struct{}, 1),
	}
	c.bg, c.stopBg = context.WithCancel(context.Background())
	for _, a := range addrs {
		if _, err := c.connLocked(a); err != nil {
			c.Close()
			return nil, fmt.Errorf("client: endpoint %q: %w", a, err)
		}
	}
	if !cfg.DisableDiscovery {
		c.wg.Add(1)
		go c.discoveryLoop()
	}
	return c, nil
}

// connLocked returns the connection to addr, creating it on first use. The
// caller holds c.mu (or is New, before the client is shared).
func (c *Client) connLocked(addr string) (*grpc.ClientConn, error) {
	if c.bg.Err() != nil {
		return nil, errClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	// passthrough: the address is dialled as given, without a DNS resolver
	// that would spread one endpoint over several IPs.
	cc, err := grpc.NewClient("passthrough:///"+addr, c.opts...)
	if err != nil {
		return nil, err
	}
	c.conns[addr] = cc
	return cc, nil
}

func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connLocked(addr)
}

// Close stops discovery and closes every connection.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.stopBg()
		c.wg.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		var errs []error
		for _, cc := range c.conns {
			errs = append(errs, cc.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Endpoints returns the nodes the client uses: the configured endpoints in
// order, then the ones discovery found.
func (c *Client) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.nodes...)
}

// Leader returns the gRPC address of the region's leader as last learned by
// discovery, or "" when it is not known (discovery disabled or refused, an
// election, or the leader just failed).
func (c *Client) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// DiscoveryErr returns why discovery stopped (for instance PERMISSION_DENIED:
// the token lacks the region's admin role), or nil while it runs or when it
// was disabled by Config.
func (c *Client) DiscoveryErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.discoveryErr
}

// Secrets returns the SecretService client.
func (c *Client) Secrets() mbv1.SecretServiceClient { return mbv1.NewSecretServiceClient(c) }

// Versions returns the SecretVersionService client.
func (c *Client) Versions() mbv1.SecretVersionServiceClient {
	return mbv1.NewSecretVersionServiceClient(c)
}

// Payloads returns the PayloadService client.
func (c *Client) Payloads() mbv1.PayloadServiceClient { return mbv1.NewPayloadServiceClient(c) }

// Identity returns the IdentityService client.
func (c *Client) Identity() mbv1.IdentityServiceClient { return mbv1.NewIdentityServiceClient(c) }

// Cluster returns the ClusterService client.
func (c *Client) Cluster() mbv1.ClusterServiceClient { return mbv1.NewClusterServiceClient(c) }

// Admin returns the AdminService client (key rewrap).
func (c *Client) Admin() mbv1.AdminServiceClient { return mbv1.NewAdminServiceClient(c) }

// Audit is the AuditService.
func (c *Client) Audit() mbv1.AuditServiceClient { return mbv1.NewAuditServiceClient(c) }

// WithIdempotencyKey returns a context whose mutations carry key instead of a
// generated one, e.g. to retry a logical operation across process restarts.
// Use a fresh key for each logical operation: the server answers a repeated
// key with the first call's result (for 24 h), and rejects it with
// INVALID_ARGUMENT when the request differs.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idemKeyCtx{}, key)
}

type idemKeyCtx struct{}

// NewIdempotencyKey returns a new 128-bit key in hex: 48 bits of Unix
// milliseconds then 80 random bits (as in a UUIDv7, without its version
// bits), so keys sort by creation time. The server stores each key's
// record for 24 h under the key itself; keys that arrive in time order
// append to the end of that range in its LSM store instead of landing all
// over it, which makes flushes and compactions cheaper
// (docs/performance.md). 80 random bits keep keys unguessable and unique.
func NewIdempotencyKey() string {
	return newIdempotencyKey(time.Now())
}

func newIdempotencyKey(now time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		// crypto/rand does not fail on supported platforms (Go 1.24+).
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// IsMutation reports whether the full gRPC method name (as in
// "/mysterybox.v1.SecretService/Create") changes state. Reads are the
// methods named Get*, List*, Status, Members and Regions; everything else,
// including methods added later (IdentityService/RevokeToken,
// AdminService/Rewrap, ...), is treated as a mutation so it is never retried
// without an idempotency key.
func IsMutation(fullMethod string) bool {
	name := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	switch {
	case strings.HasPrefix(name, "Get"), strings.HasPrefix(name, "List"):
		return false
	case name == "Status", name == "Members", name == "Regions", name == "Check", name == "Watch":
		return false
	}
	return true
}

// prefersLeader reports whether a call would be forwarded to the leader by a
// follower, so sending it to the leader directly saves a hop: mutations and
// linearizable reads. Stale reads and the node-local ClusterService reads
// (Status describes the node that answers) go to any node.
func prefersLeader(ctx context.Context, method string) bool {
	if strings.HasPrefix(method, "/mysterybox.v1.ClusterService/") && !IsMutation(method) {
		return false
	}
	if strings.HasPrefix(method, "/grpc.") {
		return false
	}
	if IsMutation(method) {
		return true
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	return !slices.Contains(md.Get(HeaderConsistency), ConsistencyStale)
}

// order returns the nodes to try, in order: the leader first when preferred
// and known, then every node starting at the sticky one.
func (c *Client) order(preferLeader bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.nodes)
	start := max(slices.Index(c.nodes, c.sticky), 0)
	out := make([]string, 0, n)
	if preferLeader && c.leader != "" {
		out = append(out, c.leader)
	}
	for i := 0; i < n; i++ {
		if a := c.nodes[(start+i)%n]; len(out) == 0 || a != out[0] {
			out = append(out, a)
		}
	}
	return out
}

// Invoke performs a unary call with headers, idempotency key and failover.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) (callErr error) {
	if c.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	ctx = c.outgoing(ctx, method)
	prefer := prefersLeader(ctx, method)
	maxAttempts := c.cfg.MaxAttempts
	if _, hasDeadline := ctx.Deadline(); maxAttempts == 0 && !hasDeadline {
		maxAttempts = DefaultMaxAttempts
	}

	attempts := 0
	if c.cfg.OnRetry != nil {
		defer func() {
			if attempts > 1 {
				c.cfg.OnRetry(RetryEvent{Method: method, Attempt: attempts, Err: callErr, Done: true})
			}
		}()
	}
	order := c.order(prefer)
	pos, round := 0, 0
	for {
		addr := order[pos]
		pos++
		attempts++
		err := c.attempt(ctx, addr, method, args, reply, opts)
		if err == nil {
			c.succeeded(addr, prefer)
			return nil
		}
		if ctx.Err() != nil || !retryable(err) {
			return cancelled(ctx, err)
		}
		c.failed(addr)
		if maxAttempts > 0 && attempts >= maxAttempts {
			return err
		}
		// The next node goes at once; after a round in which every node
		// failed, wait before the next one.
		var d time.Duration
		newRound := pos == len(order)
		if newRound {
			d = c.backoff(round)
			round++
			// Sleeping past the deadline would only turn the nodes' real
			// error into DEADLINE_EXCEEDED; report the real one instead.
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
				return err
			}
		}
		if c.cfg.OnRetry != nil {
			c.cfg.OnRetry(RetryEvent{Method: method, Attempt: attempts, Endpoint: addr, Err: err, Delay: d})
		}
		if newRound {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return cancelled(ctx, err)
			case <-t.C:
			}
			// Take the latest view: discovery may know the leader now.
			order = c.order(prefer)
			pos = 0
		}
	}
}

// cancelled returns CANCELLED once the caller has cancelled ctx, whatever
// the last attempt's error (a caller's deadline keeps the nodes' real
// error, which says more than DEADLINE_EXCEEDED).
func cancelled(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return status.FromContextError(ctx.Err()).Err()
	}
	return err
}

// attempt makes one try on one node, within AttemptTimeout.
func (c *Client) attempt(ctx context.Context, addr, method string, args, reply any, opts []grpc.CallOption) error {
	cc, err := c.conn(addr)
	if err != nil {
		return connErr(addr, err)
	}
	if c.cfg.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		defer cancel()
	}
	var header, trailer metadata.MD
	err = cc.Invoke(ctx, method, args, reply, append(opts, grpc.Header(&header), grpc.Trailer(&trailer))...)
	for _, md := range []metadata.MD{header, trailer} {
		if v := md.Get(HeaderLeader); len(v) > 0 && v[0] != "" {
			c.learnLeader(v[0])
			break
		}
	}
	return toStatus(err)
}

// HeaderLeader is the response metadata in which every node names the
// leader's gRPC address, so any client (whatever its token may read) sends
// writes and linearizable reads straight there.
const HeaderLeader = "x-mysterybox-leader"

// succeeded makes addr sticky for calls that may go to any node and, when
// the leader is wanted but unknown, asks discovery to find it. A call that
// went to the leader does not move the sticky node there: stale reads
// would then all land on the leader instead of spreading.
func (c *Client) succeeded(addr string, preferLeader bool) {
	c.mu.Lock()
	if !preferLeader || c.sticky == "" {
		c.sticky = addr
	}
	unknown := c.leader == ""
	c.mu.Unlock()
	if preferLeader && unknown {
		c.kickDiscovery()
	}
}

// failed forgets addr as the leader if it was, moves the next call's start
// past it, and asks discovery to look again.
func (c *Client) failed(addr string) {
	c.mu.Lock()
	if addr == c.leader {
		c.leader = ""
	}
	if addr == c.sticky || c.sticky == "" {
		if i := slices.Index(c.nodes, addr); i >= 0 {
			c.sticky = c.nodes[(i+1)%len(c.nodes)]
		}
	}
	c.mu.Unlock()
	c.kickDiscovery()
}

// NewStream opens a stream on the preferred node. Streams are not retried:
// a stream may have been partly consumed, so only the caller can restart it.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx = c.outgoing(ctx, method)
	addr := c.order(prefersLeader(ctx, method))[0]
	cc, err := c.conn(addr)
	if err != nil {
		return nil, connErr(addr, err)
	}
	s, err := cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, toStatus(err)
	}
	return s, nil
}

// outgoing adds the per-call metadata once, before the first attempt, so
// every retry carries exactly the same headers (and idempotency key).
func (c *Client) outgoing(ctx context.Context, method string) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	if c.cfg.Token != "" {
		md.Set(HeaderAuthorization, "Bearer "+c.cfg.Token)
	}
	if c.cfg.Consistency == ConsistencyStale {
		md.Set(HeaderConsistency, ConsistencyStale)
	}
	if IsMutation(method) && len(md.Get(HeaderIdempotencyKey)) == 0 {
		key, _ := ctx.Value(idemKeyCtx{}).(string)
		if key == "" {
			key = NewIdempotencyKey()
		}
		md.Set(HeaderIdempotencyKey, key)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// backoff returns the wait after round number round (from 0): exponential
// from BaseBackoff, capped at MaxBackoff, with "equal jitter" (half fixed,
// half random) so clients that failed together do not retry in lockstep.
func (c *Client) backoff(round int) time.Duration {
	d := c.cfg.BaseBackoff
	for i := 0; i < round && d < c.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.cfg.MaxBackoff)
	half := int64(d / 2)
	n, err := rand.Int(rand.Reader, big.NewInt(half+1))
	if err != nil {
		return d
	}
	return time.Duration(half + n.Int64())
}

// retryable reports whether a failed attempt may be repeated on another
// node. UNAVAILABLE covers refused and lost connections, "no leader now",
// "not the leader" and "outcome unknown"; DEADLINE_EXCEEDED here is the
// attempt's own deadline (the caller's has been checked before). Reads are
// safe to repeat and mutations carry an idempotency key.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

var errClosed = errors.New("client: closed")

// connErr is the status of a failure to set up the connection to addr: a
// closed client is final (CANCELED), anything else a node to skip.
func connErr(addr string, err error) error {
	if errors.Is(err, errClosed) {
		return status.Error(codes.Canceled, "client is closed")
	}
	return status.Errorf(codes.Unavailable, "endpoint %s: %v", addr, err)
}

// toStatus makes sure callers always get a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if s := status.FromContextError(err); s.Code() != codes.Unknown {
		return s.Err()
	}
	return status.Error(codes.Unknown, err.Error())
}
