// Package proxy is the fault-injecting TCP proxy of the chaos tests.
//
// One Proxy stands in front of one listener of one node (its Raft or gRPC
// port): peers dial the proxy (the node advertises the proxy's address) and
// the proxy forwards to the real port. Every accepted connection is
// attributed to the node that dialled it (Identify), so each direction of
// each connection belongs to a directed link From -> To between two nodes
// (slots), and the shared Rules decide what happens to the bytes on it:
//
//   - blocked: bytes are held, unread and unforwarded, until the link heals,
//     exactly what TCP does across a partition that drops every packet: the
//     sender's buffers fill, nothing arrives, and after the heal the stream
//     resumes where it stopped (unless an endpoint gave up and closed it);
//   - delay and jitter: every chunk is delivered Delay + [0, Jitter) after
//     it was read, in order;
//   - loss: TCP cannot lose bytes, so a lost segment shows up as a
//     retransmission: with probability Loss a chunk is held an extra
//     retransmission timeout (200 ms, doubling while losses follow each other).
//
// The kernel of the test machines has no netem, which is why delay and loss
// live here; in network-namespace mode partitions are done by the kernel
// (scripts/chaos/netns.sh) and the proxy only adds delay and loss.
package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// External is the slot of a dialler that is not a node (a client, the test
// driver): links from or to it are never faulted.
const External = -1

// Link is a directed link between two nodes, identified by slot.
type Link struct{ From, To int }

// Quality describes a degraded link.
type Quality struct {
	Delay  time.Duration `json:"delay,omitempty"`
	Jitter time.Duration `json:"jitter,omitempty"`
	// Loss is the probability that a chunk is "lost" and retransmitted.
	Loss float64 `json:"loss,omitempty"`
}

func (q Quality) zero() bool { return q.Delay == 0 && q.Jitter == 0 && q.Loss == 0 }

// Rules are the faults currently applied to links; one Rules is shared by
// all proxies of a cluster. The zero value is not usable: use NewRules.
type Rules struct {
	mu      sync.Mutex
	blocked map[Link]bool
	quality map[Link]Quality
	changed chan struct{}
	rng     *rand.Rand
}

// NewRules returns healed rules; seed drives jitter and loss.
func NewRules(seed uint64) *Rules {
	return &Rules{
		blocked: map[Link]bool{},
		quality: map[Link]Quality{},
		changed: make(chan struct{}),
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Set replaces the faults: the given links are blocked, the given
// qualities applied; every other link is healthy.
func (r *Rules) Set(blocked []Link, quality map[Link]Quality) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blocked = map[Link]bool{}
	for _, l := range blocked {
		if l.From != l.To && l.From != External && l.To != External {
			r.blocked[l] = true
		}
	}
	r.quality = map[Link]Quality{}
	for l, q := range quality {
		if !q.zero() {
			r.quality[l] = q
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// Heal removes every fault.
func (r *Rules) Heal() { r.Set(nil, nil) }

// Blocked reports whether bytes from -> to are currently held.
func (r *Rules) Blocked(from, to int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blocked[Link{from, to}]
}

// hold returns, for a chunk read at readAt on link l, whether the link is
// blocked, when the chunk is due otherwise, and a channel closed at the
// next change of the rules.
func (r *Rules) hold(l Link, readAt time.Time, lossRun *int) (blocked bool, due time.Time, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.blocked[l] {
		return true, time.Time{}, r.changed
	}
	q := r.quality[l]
	due = readAt.Add(q.Delay)
	if q.Jitter > 0 {
		due = due.Add(time.Duration(r.rng.Int64N(int64(q.Jitter))))
	}
	if q.Loss > 0 && r.rng.Float64() < q.Loss {
		rto := 200 * time.Millisecond << min(*lossRun, 4)
		*lossRun++
		due = due.Add(rto)
	} else {
		*lossRun = 0
	}
	return false, due, r.changed
}

// Proxy forwards the connections accepted on one listener to one node.
type Proxy struct {
	ln       net.Listener
	to       int
	upstream string
	identify func(net.Conn) int
	rules    *Rules

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// New returns a proxy for node slot to, forwarding what ln accepts to
// upstream. identify maps an accepted connection to
// the slot of the node that dialled it (External if none).
func New(ln net.Listener, to int, upstream string, identify func(net.Conn) int, rules *Rules) *Proxy {
	p := &Proxy{ln: ln, to: to, upstream: upstream, identify: identify, rules: rules, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p
}

// Addr is the address peers dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.closed {
		close(p.done)
	}
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.handle(c)
	}
}

func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	from := External
	if p.identify != nil {
		from = p.identify(client)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A blocked link holds even the connection: the dialler sees its
	// connect succeed (the proxy accepted it) and then silence, as across
	// a partition once the SYN got through.
	if !p.waitOpen(ctx, Link{from, p.to}) {
		return
	}
	var d net.Dialer
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	server, err := d.DialContext(dctx, "tcp", p.upstream)
	dcancel()
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	go func() { p.pipe(ctx, client, server, Link{from, p.to}); done <- struct{}{} }()
	go func() { p.pipe(ctx, server, client, Link{p.to, from}); done <- struct{}{} }()
	<-done
	// One direction ended (EOF or error): give the other a moment to
	// drain what is already in flight, then close both.
	t := time.NewTimer(2 * time.Second)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
}

// waitOpen waits until neither direction of the connection's link is
// blocked (a TCP handshake needs both); false if the proxy closed meanwhile.
// A client that gives up while held is noticed once the link heals (its
// first read returns EOF).
func (p *Proxy) waitOpen(ctx context.Context, l Link) bool {
	for {
		p.rules.mu.Lock()
		blocked := p.rules.blocked[l] || p.rules.blocked[Link{l.To, l.From}]
		changed := p.rules.changed
		p.rules.mu.Unlock()
		if !blocked {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		case <-p.done:
			return false
		}
	}
}

type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst under the rules of link l.
func (p *Proxy) pipe(ctx context.Context, src, dst net.Conn, l Link) {
	ch := make(chan chunk, 64)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case ch <- chunk{buf[:n], time.Now()}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	lossRun := 0
	for c := range ch {
		for {
			blocked, due, changed := p.rules.hold(l, c.at, &lossRun)
			if blocked {
				select {
				case <-changed:
					continue
				case <-ctx.Done():
					return
				}
			}
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
				// Re-check: the link may have been cut while the chunk waited.
				if p.rules.Blocked(l.From, l.To) {
					continue
				}
			}
			break
		}
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
	// src reached EOF: pass the half-close on.
	if tc, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}
