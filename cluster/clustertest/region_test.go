package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/store"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func payload(kv ...string) *pb.Payload {
	p := &pb.Payload{}
	for i := 0; i+1 < len(kv); i += 2 {
		p.Entries = append(p.Entries, &pb.PayloadEntry{Key: kv[i], Value: &pb.PayloadEntry_StringValue{StringValue: kv[i+1]}})
	}
	return p
}

// setup creates a project and a secret with one version through n.
func setup(t *testing.T, c *Cluster, n *Node) (projectID string, secret *pb.Secret) {
	t.Helper()
	ctx := ctxT(t)
	p, err := pb.NewIdentityServiceClient(c.Conn(n)).CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "proj-" + n.ID}}})
	if err != nil {
		t.Fatalf("create project via %s: %v", n.ID, err)
	}
	s, err := pb.NewSecretServiceClient(c.Conn(n)).Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{
		Metadata: &pb.Metadata{ParentId: p.GetMetadata().GetId(), Name: "db"},
		Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload("password", "v1")}},
	}})
	if err != nil {
		t.Fatalf("create secret via %s: %v", n.ID, err)
	}
	return p.GetMetadata().GetId(), s
}

func TestWriteThroughFollowerReadThroughAnother(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	f := c.Followers()
	_, secret := setup(t, c, f[0])
	id := secret.GetMetadata().GetId()

	v2, err := pb.NewSecretVersionServiceClient(c.Conn(f[0])).Create(ctxT(t), &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("password", "v2")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A linearizable read on the other follower, right after, sees it.
	got, err := pb.NewPayloadServiceClient(c.Conn(f[1])).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: id, Key: "password"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetEntry().GetStringValue() != "v2" || got.GetVersionId() != v2.GetMetadata().GetId() {
		t.Fatalf("read through %s: got %q (version %s), want v2 (version %s)", f[1].ID, got.GetEntry().GetStringValue(), got.GetVersionId(), v2.GetMetadata().GetId())
	}
	// Every node's own store converges to the same content.
	c.WaitConverged()
	// A stale read on a follower answers from its own state.
	stale := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale")
	s, err := pb.NewSecretServiceClient(c.Conn(f[1])).Get(stale, &pb.GetSecretRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if s.GetStatus().GetPrimaryVersionId() != v2.GetMetadata().GetId() {
		t.Fatalf("stale read after convergence: primary %s, want %s", s.GetStatus().GetPrimaryVersionId(), v2.GetMetadata().GetId())
	}
}

// servedLocally is the secret's "value" entry as node n serves it from its
// own store (a stale read).
func servedLocally(t *testing.T, c *Cluster, n *Node, secretID string) *pb.GetPayloadByKeyResponse {
	t.Helper()
	stale := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale")
	got, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(stale, &pb.GetPayloadByKeyRequest{SecretId: secretID, Key: "value"})
	if err != nil {
		t.Fatalf("stale read on %s: %v", n.ID, err)
	}
	return got
}

// failoverCreateVersion sends one logical write with an idempotency key,
// trying every node until one answers, as a client with failover would.
func failoverCreateVersion(ctx context.Context, c *Cluster, secretID, value, key string) (*pb.SecretVersion, error) {
	var lastErr error
	nodes := append([]*Node(nil), c.Nodes...)
	for ctx.Err() == nil {
		for _, n := range nodes {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			cctx = metadata.AppendToOutgoingContext(cctx, "x-idempotency-key", key)
			v, err := pb.NewSecretVersionServiceClient(c.Conn(n)).Create(cctx, &pb.CreateSecretVersionRequest{
				Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: secretID}, Spec: &pb.SecretVersionSpec{Payload: payload("value", value)}},
			})
			cancel()
			if err == nil {
				return v, nil
			}
			lastErr = err
			if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled {
				return nil, err
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("gave up: %v", lastErr)
}

func TestLeaderKilledMidStreamKeepsAcknowledgedWrites(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	_, secret := setup(t, c, c.WaitLeader())
	id := secret.GetMetadata().GetId()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	acked := map[string]string{} // version id -> value
	var wg sync.WaitGroup
	const writers, perWriter = 3, 40
	killed := make(chan struct{})
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				value := fmt.Sprintf("w%d-%d", w, i)
				v, err := failoverCreateVersion(ctx, c, id, value, "key-"+value)
				if err != nil {
					t.Errorf("write %s: %v", value, err)
					return
				}
				mu.Lock()
				acked[v.GetMetadata().GetId()] = value
				n := len(acked)
				mu.Unlock()
				if n == writers*perWriter/3 {
					close(killed)
				}
			}
		}(w)
	}
	<-killed
	old := c.WaitLeader()
	c.Stop(old)
	t.Logf("stopped leader %s after %d acknowledged writes", old.ID, writers*perWriter/3)
	wg.Wait()
	if t.Failed() {
		return
	}
	newLeader := c.WaitLeader()
	if newLeader == old {
		t.Fatal("stopped node is still leader")
	}

	// Every acknowledged write is present, exactly once (the idempotency
	// keys turned retries across the failover into one version each).
	seen := map[string]int{}
	var token string
	for {
		resp, err := pb.NewSecretVersionServiceClient(c.Conn(newLeader)).List(ctxT(t), &pb.ListSecretVersionsRequest{ParentId: id, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range resp.GetVersions() {
			seen[v.GetMetadata().GetId()]++
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(seen) != writers*perWriter+1 {
		t.Errorf("secret has %d versions, want %d (1 initial + %d acknowledged)", len(seen), writers*perWriter+1, writers*perWriter)
	}
	for vid, value := range acked {
		if seen[vid] != 1 {
			t.Errorf("acknowledged version %s (%s) present %d times", vid, value, seen[vid])
			continue
		}
		got, err := pb.NewPayloadServiceClient(c.Conn(newLeader)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: id, VersionId: vid, Key: "value"})
		if err != nil || got.GetEntry().GetStringValue() != value {
			t.Errorf("version %s: got %q, %v; want %q", vid, got.GetEntry().GetStringValue(), err, value)
		}
	}
	c.Restart(old)
	c.WaitConverged()
}

func TestRestartedNodeCatchesUp(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	_, secret := setup(t, c, c.WaitLeader())
	id := secret.GetMetadata().GetId()
	f := c.Followers()[0]
	c.Stop(f)
	var last *pb.SecretVersion
	for i := 0; i < 20; i++ {
		v, err := failoverCreateVersion(ctxT(t), c, id, fmt.Sprintf("v%d", i), fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		last = v
	}
	c.Restart(f)
	c.WaitConverged()
	got := servedLocally(t, c, f, id)
	if got.GetVersionId() != last.GetMetadata().GetId() || got.GetEntry().GetStringValue() != "v19" {
		t.Fatalf("restarted node serves version %s %q, want %s v19", got.GetVersionId(), got.GetEntry().GetStringValue(), last.GetMetadata().GetId())
	}
}

func TestWholeRegionRestartKeepsData(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	_, secret := setup(t, c, c.WaitLeader())
	for _, n := range c.Nodes {
		c.Stop(n)
	}
	for _, n := range c.Nodes {
		c.Restart(n)
	}
	leader := c.WaitLeader()
	got, err := pb.NewPayloadServiceClient(c.Conn(leader)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetEntry().GetStringValue() != "v1" {
		t.Fatalf("after full restart got %q, want v1", got.GetEntry().GetStringValue())
	}
	c.WaitConverged()
}

func TestNewNodeInstallsSnapshotAndConverges(t *testing.T) {
	c := New(t, Options{Nodes: 3, SnapshotThreshold: 20, TrailingLogs: 5})
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	id := secret.GetMetadata().GetId()
	for i := 0; i < 60; i++ {
		if _, err := failoverCreateVersion(ctxT(t), c, id, fmt.Sprintf("v%d", i), fmt.Sprintf("k%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := leader.N.Raft.Snapshot(); err != nil {
		t.Fatalf("forced snapshot: %v", err)
	}
	snapIndex := leader.N.Raft.Stats()["last_snapshot_index"]
	// The leader kept its snapshot as a checkpoint of its store (hard links),
	// whose data is only the marker; the new node gets it as a stream.
	kept, _ := filepath.Glob(filepath.Join(leader.Dir, "raft", "snapshots", "*", "checkpoint", "MANIFEST-*"))
	marker, _ := filepath.Glob(filepath.Join(leader.Dir, "raft", "snapshots", "*", "state.bin"))
	if len(kept) == 0 || len(marker) == 0 {
		t.Fatalf("leader's snapshots: checkpoints %v, data files %v; want a kept checkpoint", kept, marker)
	}
	for _, m := range marker {
		if fi, err := os.Stat(m); err != nil || fi.Size() > 16 {
			t.Fatalf("leader's snapshot data %s is not the checkpoint marker: %v, %v", m, fi, err)
		}
	}
	n := c.AddNode()
	c.WaitMembers(4)
	c.WaitConverged()
	// The leader's log was truncated below what the new node needs, so it
	// must have installed the leader's snapshot.
	if got := n.N.Raft.Stats()["last_snapshot_index"]; parseInt(got) < parseInt(snapIndex) {
		t.Fatalf("new node's last snapshot index %s, want >= the leader's %s (installed snapshot)", got, snapIndex)
	}
	if got := servedLocally(t, c, n, id); got.GetEntry().GetStringValue() != "v59" {
		t.Fatalf("new node serves %q, want v59", got.GetEntry().GetStringValue())
	}
	// And it restarts from its installed snapshot plus log.
	c.Stop(n)
	c.Restart(n)
	c.WaitConverged()
}

// TestNodeWhoseStoreIsBehindItsSnapshotRestoresIt: hashicorp/raft saves a
// received snapshot before the FSM has restored it, so a crash in between
// leaves a store older than the node's latest snapshot, and a restart
// (which normally trusts the store's own applied index) would continue
// from the snapshot's index on the older store. The node restores the
// snapshot at start instead. The store a crash leaves is made here by
// putting back a copy of the follower's store taken before later writes.
func TestNodeWhoseStoreIsBehindItsSnapshotRestoresIt(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	f, id := followerBehindItsSnapshot(t, c)
	c.Restart(f)
	c.WaitConverged()
	if got := servedLocally(t, c, f, id); got.GetEntry().GetStringValue() != "v29" {
		t.Fatalf("restarted node serves %q, want v29", got.GetEntry().GetStringValue())
	}
}

// TestNodeBehindASnapshotItCannotReadRefusesToStart: when the store is
// behind and no snapshot can be restored, the node must not start (Raft
// would resume after the snapshot's index on the older store); it fails
// with an error naming the snapshots, and its store is left as it was.
func TestNodeBehindASnapshotItCannotReadRefusesToStart(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	f, _ := followerBehindItsSnapshot(t, c)
	snaps, _ := filepath.Glob(filepath.Join(f.Dir, "raft", "snapshots", "*"))
	if len(snaps) == 0 {
		t.Fatal("the follower has no snapshot")
	}
	for _, snap := range snaps {
		os.RemoveAll(filepath.Join(snap, "checkpoint"))
		if err := os.WriteFile(filepath.Join(snap, "state.bin"), []byte("damaged"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	storeBefore := storeHash(t, filepath.Join(f.Dir, "fsm"))
	f.Cfg.Bootstrap, f.Cfg.JoinAddrs = false, nil
	err := c.TryStart(f)
	if err == nil {
		t.Fatal("the node started on a store behind a snapshot it cannot read")
	}
	if !strings.Contains(err.Error(), "snapshot") {
		t.Fatalf("start failed with %q, want an error about the snapshots", err)
	}
	t.Logf("start refused: %v", err)
	if storeHash(t, filepath.Join(f.Dir, "fsm")) != storeBefore {
		t.Fatal("the failed start changed the store")
	}
}

// followerBehindItsSnapshot writes v0..v29 to a secret, snapshots a
// follower after all of them, stops it and puts back its store as it was
// after v9: what a crash while installing that snapshot would leave. It
// returns the stopped follower and the secret's id.
func followerBehindItsSnapshot(t *testing.T, c *Cluster) (*Node, string) {
	t.Helper()
	_, secret := setup(t, c, c.WaitLeader())
	id := secret.GetMetadata().GetId()
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := failoverCreateVersion(ctxT(t), c, id, fmt.Sprintf("v%d", i), fmt.Sprintf("k%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 10)
	c.WaitConverged()
	var f *Node
	for _, n := range c.Running() {
		if n != c.WaitLeader() {
			f = n
			break
		}
	}
	storeDir := filepath.Join(f.Dir, "fsm")
	older := t.TempDir()
	c.Stop(f)
	copyTree(t, storeDir, older)
	c.Restart(f)
	write(10, 30)
	c.WaitConverged()
	if err := f.N.Raft.Snapshot(); err != nil {
		t.Fatalf("follower snapshot: %v", err)
	}
	c.Stop(f)
	if err := os.RemoveAll(storeDir); err != nil {
		t.Fatal(err)
	}
	copyTree(t, older, storeDir)
	return f, id
}

// storeHash is the hash of the store in dir, applied index included
// (opened and closed again; the node must be stopped).
func storeHash(t *testing.T, dir string) string {
	t.Helper()
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatalf("open store %s: %v", dir, err)
	}
	defer st.Close()
	h, err := st.Hash()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// copyTree copies the files below src into dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

func parseInt(s string) int64 {
	var n int64
	fmt.Sscan(s, &n)
	return n
}

func TestLinearizableReadRightAfterElection(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	_, secret := setup(t, c, c.WaitLeader())
	old := c.WaitLeader()
	// Hand leadership over without any write after it: the new leader must
	// still answer reads (its post-election barrier is not an FSM entry).
	if _, err := pb.NewClusterServiceClient(c.Conn(old)).TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, "a new leader", func() error {
		if l := c.WaitLeader(); l == old {
			return errors.New("old leader still leads")
		}
		return nil
	})
	for _, n := range c.Running() {
		got, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
		if err != nil {
			t.Fatalf("read via %s right after election: %v", n.ID, err)
		}
		if got.GetEntry().GetStringValue() != "v1" {
			t.Fatalf("read via %s: %q", n.ID, got.GetEntry().GetStringValue())
		}
	}
}

func TestIdempotentRetryAcrossLeaderChange(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	projectID, _ := setup(t, c, c.WaitLeader())
	req := &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: projectID, Name: "once"}}}
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-idempotency-key", "retry-me")
	first, err := pb.NewSecretServiceClient(c.Conn(c.Followers()[0])).Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	old := c.WaitLeader()
	if _, err := pb.NewClusterServiceClient(c.Conn(old)).TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, "a new leader", func() error {
		if c.WaitLeader() == old {
			return errors.New("old leader still leads")
		}
		return nil
	})
	again, err := pb.NewSecretServiceClient(c.Conn(c.WaitLeader())).Create(ctx, req)
	if err != nil {
		t.Fatalf("retry with the same key: %v", err)
	}
	if again.GetMetadata().GetId() != first.GetMetadata().GetId() {
		t.Fatalf("retry created %s, first call created %s", again.GetMetadata().GetId(), first.GetMetadata().GetId())
	}
	// The same key with another request is refused.
	other := &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: projectID, Name: "other"}}}
	if _, err := pb.NewSecretServiceClient(c.Conn(c.WaitLeader())).Create(ctx, other); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("same key, different request: %v, want INVALID_ARGUMENT", err)
	}
	// Without a key, a second create of the same name is ALREADY_EXISTS.
	if _, err := pb.NewSecretServiceClient(c.Conn(c.WaitLeader())).Create(ctxT(t), req); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second create without key: %v, want ALREADY_EXISTS", err)
	}
}

func TestLeaderPurgesDeletedSecret(t *testing.T) {
	c := New(t, Options{Nodes: 3, PurgeAfter: 500 * time.Millisecond})
	f := c.Followers()[0]
	projectID, secret := setup(t, c, f)
	id := secret.GetMetadata().GetId()
	del, err := pb.NewSecretServiceClient(c.Conn(f)).Delete(ctxT(t), &pb.DeleteSecretRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if del.GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION || del.GetStatus().GetPurgeAt() == nil {
		t.Fatalf("deleted secret status: %v", del.GetStatus())
	}
	Eventually(t, 10*time.Second, "the purge", func() error {
		_, err := pb.NewSecretServiceClient(c.Conn(f)).Get(ctxT(t), &pb.GetSecretRequest{Id: id, ShowScheduledForDeletion: true})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return fmt.Errorf("secret still there: %v", err)
	})
	// With the secret purged, the empty project can be deleted.
	if _, err := pb.NewIdentityServiceClient(c.Conn(f)).DeleteProject(ctxT(t), &pb.DeleteProjectRequest{Id: projectID}); err != nil {
		t.Fatal(err)
	}
	c.WaitConverged()
}

// A read made while a node led in one term is confirmed only by leadership
// in that term. The node here loses leadership and wins it back (as after a
// partition, with a write acknowledged by the leader in between): a round
// confirming its new term must not vouch for a view taken in the old one.
func TestReadIsConfirmedOnlyInTheTermItWasMadeIn(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	a := c.WaitLeader()
	before, ok := a.N.Raft.ReadyTerm()
	if !ok {
		t.Fatal("the leader has no ready term")
	}
	if err := a.N.Raft.ReadBarrierInTerm(ctxT(t), before); err != nil {
		t.Fatalf("confirming the current term: %v", err)
	}

	transferTo := func(from, to *Node) {
		t.Helper()
		if _, err := pb.NewClusterServiceClient(c.Conn(from)).TransferLeadership(ctxT(t), &pb.TransferLeadershipRequest{NodeId: to.ID}); err != nil {
			t.Fatal(err)
		}
		Eventually(t, 15*time.Second, to.ID+" leads", func() error {
			if !to.N.Raft.IsLeader() {
				return errors.New("not yet")
			}
			return nil
		})
	}
	b := c.Followers()[0]
	transferTo(a, b)
	transferTo(b, a)

	after, ok := a.N.Raft.ReadyTerm()
	if !ok || after <= before {
		t.Fatalf("ready term %d, %v after leading again; want > %d", after, ok, before)
	}
	// An unpinned round would vouch for it (the payload read path once
	// checked this way).
	if err := a.N.Raft.ReadBarrier(ctxT(t)); err != nil {
		t.Fatalf("ReadBarrier after leading again: %v", err)
	}
	if err := a.N.Raft.ReadBarrierInTerm(ctxT(t), before); !errors.Is(err, cluster.ErrNotLeader) {
		t.Fatalf("a read made in term %d confirmed in term %d: %v, want ErrNotLeader", before, after, err)
	}
	if err := a.N.Raft.ReadBarrierInTerm(ctxT(t), after); err != nil {
		t.Fatalf("confirming the current term %d: %v", after, err)
	}
}
