// Package client is the Go client of MysteryBox.
//
// A Client holds one gRPC connection per configured endpoint and implements
// grpc.ClientConnInterface itself, so the generated service clients returned
// by Secrets, Versions, Payloads, Identity, Cluster and Admin all go through one
// call path that:
//
//   - sends "authorization: Bearer <token>" when a token is configured;
//   - sends "x-consistency: stale" when stale reads are requested;
//   - gives every mutation an "x-idempotency-key", generated once per logical
//     call and reused on every retry, so a retry through a failover never
//     applies twice;
//   - on UNAVAILABLE (which includes connection failures) retries on the next
//     endpoint with capped exponential backoff and jitter, within the caller's
//     deadline.
//
// Errors returned by calls are always gRPC status errors (status.FromError
// works on them), including deadline and cancellation errors.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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

// Config configures a Client.
type Config struct {
	// Endpoints are gRPC addresses (host:port) of nodes of one region. At
	// least one is required. Calls start on the last endpoint that answered.
	Endpoints []string
	// Token is sent as "authorization: Bearer <token>" when not empty.
	Token string
	// Timeout bounds each logical call, retries included, when > 0. A shorter
	// deadline on the caller's context wins.
	Timeout time.Duration
	// Consistency of reads: "" or "linearizable" (the server default), or
	// "stale" to let any node answer from its own state.
	Consistency string

	// MaxAttempts bounds the attempts of one call when its context has no
	// deadline (with a deadline, retries go on until it is near). Default 10.
	MaxAttempts int
	// BaseBackoff and MaxBackoff shape the retry delay: BaseBackoff doubles on
	// every retry up to MaxBackoff, and each delay is jittered. Defaults 50ms
	// and 2s.
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	// DialOptions are appended to the client's own (insecure transport).
	DialOptions []grpc.DialOption
}

// Client is a MysteryBox client. It is safe for concurrent use.
type Client struct {
	cfg   Config
	conns []*grpc.ClientConn
	addrs []string
	// next is the index of the endpoint to try first: the last one that
	// answered, so a healthy endpoint stays sticky after a failover.
	next atomic.Uint32

	closeOnce sync.Once
	closeErr  error
}

// Compile-time check: the generated clients can use a *Client as connection.
var _ grpc.ClientConnInterface = (*Client)(nil)

// New validates cfg and creates the connections. Connections are made lazily,
// so New does not fail when a node is down; ctx is not used to dial and is
// kept in the signature for future endpoint discovery.
func New(ctx context.Context, cfg Config) (*Client, error) {
	_ = ctx
	var addrs []string
	for _, e := range cfg.Endpoints {
		for _, a := range strings.Split(e, ",") {
			if a = strings.TrimSpace(a); a != "" {
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
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 50 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	if cfg.MaxBackoff < cfg.BaseBackoff {
		cfg.MaxBackoff = cfg.BaseBackoff
	}

	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A payload may be up to 1 MiB; leave room for the envelope.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}, cfg.DialOptions...)

	c := &Client{cfg: cfg, addrs: addrs}
	for _, a := range addrs {
		// passthrough: the address is dialled as given, without a DNS
		// resolver that would spread one endpoint over several IPs.
		cc, err := grpc.NewClient("passthrough:///"+a, opts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("client: endpoint %q: %w", a, err)
		}
		c.conns = append(c.conns, cc)
	}
	return c, nil
}

// Close closes every connection.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, cc := range c.conns {
			errs = append(errs, cc.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// Endpoints returns the endpoints the client uses, in order.
func (c *Client) Endpoints() []string { return append([]string(nil), c.addrs...) }

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

// WithIdempotencyKey returns a context whose mutations carry key instead of a
// generated one, e.g. to retry a logical operation across process restarts.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idemKeyCtx{}, key)
}

type idemKeyCtx struct{}

// NewIdempotencyKey returns a random 128-bit key in hex.
func NewIdempotencyKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
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

// Invoke performs a unary call with headers, idempotency key and failover.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if c.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	ctx = c.outgoing(ctx, method)

	_, hasDeadline := ctx.Deadline()
	start := int(c.next.Load()) % len(c.conns)
	var lastErr error
	for attempt := 0; ; attempt++ {
		i := (start + attempt) % len(c.conns)
		err := c.conns[i].Invoke(ctx, method, args, reply, opts...)
		if err == nil {
			c.next.Store(uint32(i))
			return nil
		}
		lastErr = toStatus(err)
		if !retryable(lastErr) || ctx.Err() != nil {
			return lastErr
		}
		if !hasDeadline && attempt+1 >= c.cfg.MaxAttempts {
			return lastErr
		}
		d := c.backoff(attempt)
		// Sleeping past the deadline would only turn the endpoint's real
		// error into DEADLINE_EXCEEDED; report the real one instead.
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return lastErr
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return lastErr
		case <-t.C:
		}
	}
}

// NewStream opens a stream on the preferred endpoint. Streams are not retried:
// a stream may have been partly consumed, so only the caller can restart it.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx = c.outgoing(ctx, method)
	i := int(c.next.Load()) % len(c.conns)
	s, err := c.conns[i].NewStream(ctx, desc, method, opts...)
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

// backoff returns the delay before retry number attempt+1: exponential from
// BaseBackoff, capped at MaxBackoff, with "equal jitter" (half fixed, half
// random) so clients that failed together do not retry in lockstep.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.cfg.BaseBackoff
	for i := 0; i < attempt && d < c.cfg.MaxBackoff; i++ {
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
// endpoint. UNAVAILABLE covers refused and lost connections and "no leader
// now"; reads are safe to repeat and mutations carry an idempotency key.
func retryable(err error) bool {
	return status.Code(err) == codes.Unavailable
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
