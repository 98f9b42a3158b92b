package clustertest

// End-to-end tests of api/client against a real 3-node region: leader
// failover under load, and exactly-once writes when a response is lost.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// failoverBound is the longest a client may go without a successful call
// around one leader failover. The harness uses 300 ms Raft timeouts; an
// election plus the client's backoff takes about a second on loopback, so
// this leaves room for a loaded CI machine running -race.
const failoverBound = 5 * time.Second

func cfPayload(key, value string) *pb.Payload {
	return &pb.Payload{Entries: []*pb.PayloadEntry{{Key: key, Value: &pb.PayloadEntry_StringValue{StringValue: value}}}}
}

// cfClient returns a client of c's region as its admin (so discovery works).
func cfClient(t *testing.T, c *Cluster, endpoints []string, extra func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{Endpoints: endpoints, Token: c.AdminToken, Timeout: 30 * time.Second}
	if extra != nil {
		extra(&cfg)
	}
	cl, err := client.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// cfSecret creates a project and a secret whose first version is described
// "initial", through cl.
func cfSecret(t *testing.T, cl *client.Client, name string) string {
	t.Helper()
	ctx := context.Background()
	p, err := cl.Identity().CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: name}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := cl.Secrets().Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{
		Metadata: &pb.Metadata{ParentId: p.GetMetadata().GetId(), Name: "db"},
		Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Description: "initial", Payload: cfPayload("value", "initial")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return s.GetMetadata().GetId()
}

// cfVersions returns, for each version description of the secret, the ids
// of the versions carrying it.
func cfVersions(t *testing.T, cl *client.Client, secretID string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	token := ""
	for {
		resp, err := cl.Versions().List(context.Background(), &pb.ListSecretVersionsRequest{ParentId: secretID, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("list versions: %v", err)
		}
		for _, v := range resp.GetVersions() {
			d := v.GetSpec().GetDescription()
			out[d] = append(out[d], v.GetMetadata().GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// opLog is what the load loop saw.
type opLog struct {
	mu      sync.Mutex
	okAt    []time.Time       // completion time of every successful call
	written map[string]string // value -> version id, of writes that succeeded
	failed  []string          // values of writes that returned an error
	errs    []string          // every error, with the op and its time
	stale   []string          // reads that missed the write before them
	maxCall time.Duration     // the slowest successful call
	writes  int
}

func (l *opLog) ok(start time.Time) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.okAt = append(l.okAt, now)
	l.maxCall = max(l.maxCall, now.Sub(start))
}

func (l *opLog) fail(op string, start time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, fmt.Sprintf("%s at %s after %v: %v", op, start.Format("15:04:05.000"), time.Since(start).Round(time.Millisecond), err))
}

// okSince counts successful calls that completed after t.
func (l *opLog) okSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.okAt) - sort.Search(len(l.okAt), func(i int) bool { return l.okAt[i].After(t) })
}

// longestGap returns the longest time without a successful call that
// overlaps [from, to): the unavailability around a failover.
func (l *opLog) longestGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var worst time.Duration
	for i := 1; i < len(l.okAt); i++ {
		a, b := l.okAt[i-1], l.okAt[i]
		if b.After(from) && a.Before(to) {
			worst = max(worst, b.Sub(a))
		}
	}
	return worst
}

// load writes a new version with a unique value, then reads the secret's
// primary value back (it must be the value just written: reads are
// linearizable), until stop is closed.
func load(cl *client.Client, secretID string, l *opLog, stop <-chan struct{}) {
	ctx := context.Background()
	for i := 1; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		val := fmt.Sprintf("w-%06d", i)
		start := time.Now()
		v, err := cl.Versions().Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{ParentId: secretID},
			Spec:     &pb.SecretVersionSpec{Description: val, Payload: cfPayload("value", val)},
		}})
		l.mu.Lock()
		l.writes++
		l.mu.Unlock()
		if err != nil {
			l.fail("write "+val, start, err)
			l.mu.Lock()
			l.failed = append(l.failed, val)
			l.mu.Unlock()
			continue
		}
		l.ok(start)
		l.mu.Lock()
		l.written[val] = v.GetMetadata().GetId()
		l.mu.Unlock()

		start = time.Now()
		r, err := cl.Payloads().GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: secretID, Key: "value"})
		if err != nil {
			l.fail("read after "+val, start, err)
			continue
		}
		l.ok(start)
		if got := r.GetEntry().GetStringValue(); got != val {
			l.mu.Lock()
			l.stale = append(l.stale, fmt.Sprintf("read %q (version %s) right after writing %q (version %s)", got, r.GetVersionId(), val, v.GetMetadata().GetId()))
			l.mu.Unlock()
		}
	}
}

// TestClientFailoverLeaderStopRestart: a client seeded with one node writes
// and reads in a loop while the leader is stopped and restarted three
// times. Every write it saw succeed is stored exactly once, no call fails,
// reads see the latest write, and each failover costs less than
// failoverBound without a successful call.
func TestClientFailoverLeaderStopRestart(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	first := c.WaitLeader()
	// One seed: the client has to learn the two other nodes to survive the
	// first failover (the seed is the leader that is stopped first).
	cl := cfClient(t, c, []string{first.Cfg.GRPCAddr}, nil)
	Eventually(t, 15*time.Second, "the client to learn the region", func() error {
		if eps := cl.Endpoints(); len(eps) != 3 {
			return fmt.Errorf("endpoints %q", eps)
		}
		if cl.Leader() != first.Cfg.GRPCAddr {
			return fmt.Errorf("leader %q, want %s", cl.Leader(), first.Cfg.GRPCAddr)
		}
		return nil
	})
	secretID := cfSecret(t, cl, "failover")

	l := &opLog{written: map[string]string{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		load(cl, secretID, l, stop)
	}()
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		<-done
	})
	t.Cleanup(stopLoad)

	type failover struct {
		from, to string
		// stopAt is when Stop was called, stopped when it returned (calls
		// in flight may still complete in between).
		stopAt, stopped time.Time
	}
	var failovers []failover
	Eventually(t, 30*time.Second, "the load to run", func() error {
		if n := l.okSince(time.Time{}); n < 20 {
			return fmt.Errorf("%d calls succeeded", n)
		}
		return nil
	})
	for i := 0; i < 3; i++ {
		old := c.WaitLeader()
		stopAt := time.Now()
		c.Stop(old)
		stopped := time.Now()
		next := c.WaitLeader()
		failovers = append(failovers, failover{from: old.ID, to: next.ID, stopAt: stopAt, stopped: stopped})
		Eventually(t, 30*time.Second, fmt.Sprintf("progress after stopping leader %s", old.ID), func() error {
			if n := l.okSince(stopAt); n < 50 {
				return fmt.Errorf("%d calls succeeded since the stop", n)
			}
			return nil
		})
		c.Restart(old)
		target := next.N.FSM.AppliedIndex()
		Eventually(t, 30*time.Second, fmt.Sprintf("%s to catch up after its restart", old.ID), func() error {
			if got := old.N.FSM.AppliedIndex(); got < target {
				return fmt.Errorf("applied %d, leader was at %d", got, target)
			}
			return nil
		})
		restarted := time.Now()
		Eventually(t, 30*time.Second, "progress after the restart", func() error {
			if n := l.okSince(restarted); n < 50 {
				return fmt.Errorf("%d calls succeeded since the restart", n)
			}
			return nil
		})
	}
	stopLoad()
	end := time.Now()

	// The load has stopped: l is read without its lock from here on
	// (longestGap takes it itself).
	for i, f := range failovers {
		to := end
		if i+1 < len(failovers) {
			to = failovers[i+1].stopAt
		}
		firstAfter := time.Duration(-1)
		if k := sort.Search(len(l.okAt), func(k int) bool { return l.okAt[k].After(f.stopped) }); k < len(l.okAt) {
			firstAfter = l.okAt[k].Sub(f.stopped).Round(time.Millisecond)
		}
		gap := l.longestGap(f.stopAt, to)
		t.Logf("failover %d (%s stopped, %s elected): first success %v after the stop completed; longest time without a successful call %v (bound %v)",
			i+1, f.from, f.to, firstAfter, gap.Round(time.Millisecond), failoverBound)
		if gap >= failoverBound {
			t.Errorf("failover %d: %v without a successful call, want < %v", i+1, gap, failoverBound)
		}
	}
	t.Logf("%d writes (%d succeeded), %d calls succeeded, slowest successful call %v",
		l.writes, len(l.written), len(l.okAt), l.maxCall.Round(time.Millisecond))
	for _, e := range l.errs {
		t.Errorf("call failed during failover: %s", e)
	}
	for _, s := range l.stale {
		t.Errorf("stale read: %s", s)
	}

	// Exactly once: every successful write is there once, with the id the
	// client was given; a failed one (there should be none) at most once;
	// nothing else.
	versions := cfVersions(t, cl, secretID)
	failed := map[string]bool{}
	for _, v := range l.failed {
		failed[v] = true
	}
	for val, id := range l.written {
		if ids := versions[val]; len(ids) != 1 || ids[0] != id {
			t.Errorf("write %s acknowledged as version %s is stored as %q", val, id, ids)
		}
	}
	for val, ids := range versions {
		switch {
		case val == "initial":
			if len(ids) != 1 {
				t.Errorf("initial version stored %d times", len(ids))
			}
		case failed[val]:
			if len(ids) > 1 {
				t.Errorf("failed write %s applied %d times", val, len(ids))
			}
		case l.written[val] == "":
			t.Errorf("version %q (%q) was never written by the client", val, ids)
		}
	}
	total := 0
	for _, ids := range versions {
		total += len(ids)
	}
	t.Logf("%d versions stored for %d acknowledged writes (+1 initial)", total, len(l.written))
}

// loseFirst is a client interceptor that lets the first attempt of method
// reach the server, keeps its real response, runs after, and reports the
// attempt UNAVAILABLE: the response was lost.
type loseFirst struct {
	method string
	armed  atomic.Bool
	after  func()

	mu       sync.Mutex
	attempts int
	keys     []string
	firstErr error
	firstID  string
}

func (l *loseFirst) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if method != l.method {
		return err
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	l.mu.Lock()
	l.attempts++
	l.keys = append(l.keys, strings.Join(md.Get(client.HeaderIdempotencyKey), ","))
	l.mu.Unlock()
	if !l.armed.CompareAndSwap(true, false) {
		return err
	}
	l.mu.Lock()
	l.firstErr = err
	if v, ok := reply.(*pb.SecretVersion); ok {
		l.firstID = v.GetMetadata().GetId()
	}
	l.mu.Unlock()
	if l.after != nil {
		l.after()
	}
	return status.Error(codes.Unavailable, "test: connection lost before the response arrived")
}

// TestClientFailoverLostResponse: a write whose response is lost is retried
// with the same idempotency key and stored once; the retry answers with the
// version the first attempt created. Also when the leader that applied it is
// stopped before the retry.
func TestClientFailoverLostResponse(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	c.WaitLeader()
	lf := &loseFirst{method: "/mysterybox.v1.SecretVersionService/Create"}
	var eps []string
	for _, n := range c.Nodes {
		eps = append(eps, n.Cfg.GRPCAddr)
	}
	cl := cfClient(t, c, eps, func(cfg *client.Config) {
		cfg.Interceptors = []grpc.UnaryClientInterceptor{lf.intercept}
	})
	secretID := cfSecret(t, cl, "lost-response")

	for _, tc := range []struct {
		name       string
		stopLeader bool
	}{
		{"leader stays", false},
		{"leader stopped before the retry", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stopped *Node
			lf.mu.Lock()
			lf.attempts, lf.keys, lf.firstErr, lf.firstID = 0, nil, nil, ""
			lf.after = nil
			if tc.stopLeader {
				lf.after = func() {
					stopped = c.WaitLeader()
					c.Stop(stopped)
				}
			}
			lf.mu.Unlock()
			lf.armed.Store(true)

			val := "lost-" + strings.ReplaceAll(tc.name, " ", "-")
			v, err := cl.Versions().Create(context.Background(), &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
				Metadata: &pb.Metadata{ParentId: secretID},
				Spec:     &pb.SecretVersionSpec{Description: val, Payload: cfPayload("value", val)},
			}})
			if err != nil {
				t.Fatalf("create with a lost response: %v", err)
			}
			lf.mu.Lock()
			attempts, keys, firstErr, firstID := lf.attempts, lf.keys, lf.firstErr, lf.firstID
			lf.mu.Unlock()
			if firstErr != nil || firstID == "" {
				t.Fatalf("the first attempt did not reach the server: %v", firstErr)
			}
			if attempts < 2 || keys[0] == "" {
				t.Fatalf("%d attempts with keys %q: want a retry with a key", attempts, keys)
			}
			for i, k := range keys {
				if k != keys[0] {
					t.Errorf("attempt %d key %q, first %q", i+1, k, keys[0])
				}
			}
			if got := v.GetMetadata().GetId(); got != firstID {
				t.Errorf("retry answered version %s, the lost response was %s: applied twice?", got, firstID)
			}
			if ids := cfVersions(t, cl, secretID)[val]; len(ids) != 1 || ids[0] != firstID {
				t.Errorf("versions for the write: %q, want exactly [%s]", ids, firstID)
			}
			if stopped != nil {
				c.Restart(stopped)
				c.WaitMembers(3)
			}
			t.Logf("%d attempts, one version %s", attempts, firstID)
		})
	}
}

// TestClientOfAnyAccountLearnsTheRegion: a client whose token has no role
// on the region (a CI job's service account) and one endpoint learns the
// other nodes and the leader (SPEC: from ClusterService), and keeps reading
// when its only configured node stops.
func TestClientOfAnyAccountLearnsTheRegion(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	ci := newIdentity(t, c, leader, "ci", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	seed := c.Followers()[0]
	cl, err := client.New(context.Background(), client.Config{Endpoints: []string{seed.Cfg.GRPCAddr}, Token: ci.token, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	Eventually(t, 15*time.Second, "the client to learn the region", func() error {
		if eps := cl.Endpoints(); len(eps) != 3 {
			return fmt.Errorf("endpoints %q (discovery error %v)", eps, cl.DiscoveryErr())
		}
		return nil
	})
	c.Stop(seed)
	got, err := cl.Payloads().GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
	if err != nil || got.GetEntry().GetStringValue() != "v1" {
		t.Fatalf("read with its only configured node stopped: %v %v", got, err)
	}
}
