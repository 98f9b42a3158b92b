package client

import (
	"context"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// discoveryLoop learns the region: all members at once and every
// RefreshInterval; the leader alone (ClusterService.Status, answered locally
// by any node) when a call kicks it, at most every minRefreshGap. It ends at
// Close, or when the region refuses discovery (PERMISSION_DENIED from an
// older server to a non-admin token, or a server that does not implement
// it): the client then keeps to the configured endpoints.
func (c *Client) discoveryLoop() {
	defer c.wg.Done()
	tick := time.NewTicker(c.cfg.RefreshInterval)
	defer tick.Stop()
	full := true
	retryGap := minRefreshGap
	for {
		start := time.Now()
		var err error
		if full {
			err = c.Refresh(c.bg)
		} else {
			err = c.refreshLeader(c.bg)
		}
		if c.discoveryStopped() {
			return
		}
		// A failed full refresh is tried again on the next occasion, and
		// soon even without one (a node may not know the token yet), backing
		// off up to RefreshInterval.
		var retry <-chan time.Time
		var retryTimer *time.Timer
		if full && err != nil {
			retryTimer = time.NewTimer(retryGap)
			retry = retryTimer.C
			retryGap = min(2*retryGap, c.cfg.RefreshInterval)
		} else if full {
			retryGap = minRefreshGap
		}
		full = full && err != nil
		select {
		case <-c.bg.Done():
			if retryTimer != nil {
				retryTimer.Stop()
			}
			return
		case <-retry:
		case <-tick.C:
			full = true
		case <-c.kick:
			if wait := minRefreshGap - time.Since(start); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-c.bg.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
		if retryTimer != nil {
			retryTimer.Stop()
		}
	}
}

// kickDiscovery asks the discovery loop to look for the leader soon; it never
// blocks.
func (c *Client) kickDiscovery() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Client) discoveryStopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.discoveryOff
}

// Refresh fetches the region's members now (ClusterService.Members, through
// the first node that answers) and from then on sends calls to them too, and
// leader-bound calls to the leader. The configured endpoints are always kept.
// When the server refuses discovery (PERMISSION_DENIED, UNIMPLEMENTED) it
// returns that error and background discovery stops.
func (c *Client) Refresh(ctx context.Context) error {
	return askAnyNode(ctx, c, methodMembers, &mbv1.ListMembersRequest{}, func(resp *mbv1.ListMembersResponse) {
		c.learnMembers(resp.GetMembers())
	})
}

// refreshLeader asks the first node that answers which node leads.
func (c *Client) refreshLeader(ctx context.Context) error {
	return askAnyNode(ctx, c, methodStatus, &mbv1.ClusterStatusRequest{}, func(resp *mbv1.ClusterStatusResponse) {
		if a := resp.GetLeaderGrpcAddress(); a != "" {
			c.learnLeader(a)
		}
	})
}

// askAnyNode makes one discovery call on each node in turn until one
// answers, and hands the answer to learn. A refusal (the token may not
// discover) stops background discovery for good.
func askAnyNode[T any](ctx context.Context, c *Client, method string, req any, learn func(*T)) error {
	var lastErr error
	for _, addr := range c.order(false) {
		resp := new(T)
		err := c.discoveryCall(ctx, addr, method, req, resp)
		if err == nil {
			learn(resp)
			return nil
		}
		if refused(err) {
			c.stopDiscovery(err)
			return err
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return lastErr
}

// discoveryCall is one attempt on one node, without retries (the loop has
// its own schedule) and without OnRetry events.
func (c *Client) discoveryCall(ctx context.Context, addr, method string, req, resp any) error {
	cc, err := c.conn(addr)
	if err != nil {
		return connErr(addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	return toStatus(cc.Invoke(c.outgoing(ctx, method), method, req, resp))
}

// refused reports whether the region will not answer discovery for this
// client, now or later. UNAUTHENTICATED is not such an answer: ClusterService
// answers from the node's own state, and a follower may not have applied a
// token created a moment ago (the next node, or the next round, knows it).
func refused(err error) bool {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unimplemented:
		return true
	}
	return false
}

func (c *Client) stopDiscovery(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.discoveryOff = true
	c.discoveryErr = err
}

// learnMembers replaces the discovered nodes and the leader.
func (c *Client) learnMembers(members []*mbv1.Member) {
	var found []string
	leader := ""
	for _, m := range members {
		a := m.GetGrpcAddress()
		if a == "" {
			continue
		}
		if !slices.Contains(found, a) {
			found = append(found, a)
		}
		if m.GetRaftRole() == "leader" {
			leader = a
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bg.Err() != nil {
		return // closed: open no connection
	}
	nodes := append([]string(nil), c.seeds...)
	for _, a := range found {
		if slices.Contains(nodes, a) {
			continue
		}
		if _, err := c.connLocked(a); err == nil {
			nodes = append(nodes, a)
		}
	}
	c.nodes = nodes
	if leader != "" && !slices.Contains(nodes, leader) {
		leader = ""
	}
	c.leader = leader
}

// learnLeader records the leader's address, adding it to the nodes if new
// — unless discovery is disabled by configuration, which keeps the client
// to Endpoints: the leader's advertised address may not be reachable from
// here (a port-forward, NAT, a certificate for another name), and each
// call would spend an attempt on it before coming back.
func (c *Client) learnLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bg.Err() != nil {
		return
	}
	if !slices.Contains(c.nodes, addr) {
		if c.cfg.DisableDiscovery {
			return
		}
		if _, err := c.connLocked(addr); err != nil {
			return
		}
		c.nodes = append(c.nodes, addr)
	}
	c.leader = addr
}
