package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/backup"
	"github.com/mysterybox/mysterybox/cluster"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// stalledBackupClient is a backup stream whose reader stops after the
// first chunk until released, as a client on a slow or stuck link.
type stalledBackupClient struct {
	grpc.ServerStream // not used by the handler beyond Context and Send
	ctx               context.Context
	data              bytes.Buffer
	stalled, release  chan struct{}
}

func (c *stalledBackupClient) Context() context.Context { return c.ctx }

func (c *stalledBackupClient) Send(chunk *pb.SnapshotChunk) error {
	if c.data.Len() == 0 {
		close(c.stalled)
		<-c.release
	}
	c.data.Write(chunk.GetData())
	return nil
}

// TestStalledBackupClientHoldsNothingOfTheStore: a backup whose client
// stops reading must not keep the store from being restored (a snapshot
// install on a node that lost leadership, an online restore, a shutdown).
// Holding the store's read lock for the stream, as the backup did, made a
// restore wait for the client — and every read of the node queue behind
// that waiting restore. The backup still streams the state it was taken at.
func TestStalledBackupClientHoldsNothingOfTheStore(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	reg.project(adminCtx, "before")
	var before bytes.Buffer // the store now, to restore it later
	ck, err := reg.st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ck.WriteTo(&before); err != nil {
		t.Fatal(err)
	}
	ck.Remove()
	reg.project(adminCtx, "after")

	client := &stalledBackupClient{ctx: adminCtx, stalled: make(chan struct{}), release: make(chan struct{})}
	backupDone := make(chan error, 1)
	go func() { backupDone <- (&clusterService{s: reg.s}).Snapshot(&pb.SnapshotRequest{}, client) }()
	select {
	case <-client.stalled:
	case err := <-backupDone:
		t.Fatalf("backup ended before streaming: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the backup never started streaming")
	}

	restored := make(chan error, 1)
	go func() { restored <- reg.st.Restore(bytes.NewReader(before.Bytes())) }()
	select {
	case err := <-restored:
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
	case <-time.After(10 * time.Second):
		close(client.release)
		t.Fatal("a restore waited for a stalled backup client")
	}
	if !hasProject(t, reg.st, "before") || hasProject(t, reg.st, "after") {
		t.Fatal("the restore did not bring the store back to its earlier state")
	}

	close(client.release)
	if err := <-backupDone; err != nil {
		t.Fatalf("backup: %v", err)
	}
	// The backup holds the state it was taken at: both projects.
	h, err := backup.ReadHeader(&client.data)
	if err != nil {
		t.Fatal(err)
	}
	taken, err := store.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if err := taken.Restore(backup.BodyReader(&client.data, h)); err != nil {
		t.Fatalf("the backup does not restore: %v", err)
	}
	if !hasProject(t, taken, "before") || !hasProject(t, taken, "after") {
		t.Fatal("the backup does not hold the state it was taken at (both projects)")
	}
}

// hasProject reports whether st has a project named name.
func hasProject(t *testing.T, st *store.Store, name string) bool {
	t.Helper()
	found := false
	if err := st.Read(func(v *store.View) error {
		_, err := v.ProjectIDByName(name)
		found = err == nil
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

// backupClient collects a backup stream.
type backupClient struct {
	grpc.ServerStream
	ctx  context.Context
	data bytes.Buffer
}

func (c *backupClient) Context() context.Context { return c.ctx }
func (c *backupClient) Send(chunk *pb.SnapshotChunk) error {
	c.data.Write(chunk.GetData())
	return nil
}

// backupOf streams a backup file of the region through clusters, as the
// caller of ctx.
func backupOf(t *testing.T, clusters *clusterService, ctx context.Context) []byte {
	t.Helper()
	saved := &backupClient{ctx: ctx}
	if err := clusters.Snapshot(&pb.SnapshotRequest{}, saved); err != nil {
		t.Fatal(err)
	}
	return saved.data.Bytes()
}

// restoreClient sends a backup file to Restore in chunks.
type restoreClient struct {
	grpc.ServerStream
	ctx  context.Context
	file []byte
	resp *pb.RestoreResponse
}

func (c *restoreClient) Context() context.Context { return c.ctx }
func (c *restoreClient) Recv() (*pb.RestoreChunk, error) {
	if len(c.file) == 0 {
		return nil, io.EOF
	}
	n := min(len(c.file), 1000)
	chunk := &pb.RestoreChunk{Data: c.file[:n]}
	c.file = c.file[n:]
	return chunk, nil
}
func (c *restoreClient) SendAndClose(r *pb.RestoreResponse) error { c.resp = r; return nil }

// withHeader is the backup file made of h and body.
func withHeader(t *testing.T, h backup.Header, body []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(body)
	h.BodySHA, h.BodyBytes = hex.EncodeToString(sum[:]), int64(len(body))
	var file bytes.Buffer
	if err := backup.WriteHeader(&file, h); err != nil {
		t.Fatal(err)
	}
	file.Write(body)
	return file.Bytes()
}

// TestRestoreTrustsOnlyTheBackupsCheckedBody: the header of a backup file
// is not covered by a checksum, and Raft records a restore past the index
// it is given — an index near 2^64 would wrap the region's log. The index
// must be the body's (which its checksum covers), and within reason;
// either refusal leaves Raft untouched. A good file is restored at its
// body's index.
func TestRestoreTrustsOnlyTheBackupsCheckedBody(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	reg.project(adminCtx, "kept")
	clusters := &clusterService{s: reg.s}
	saved := backupOf(t, clusters, adminCtx)
	rd := bytes.NewReader(saved)
	h, err := backup.ReadHeader(rd)
	if err != nil {
		t.Fatal(err)
	}
	body := saved[len(saved)-rd.Len():]
	restore := func(file []byte) error {
		return clusters.Restore(&restoreClient{ctx: adminCtx, file: file})
	}

	lying := h
	lying.RaftIndex = math.MaxUint64
	if err := restore(withHeader(t, lying, body)); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "raft_index") {
		t.Fatalf("a header whose index is not its body's: %v, want INVALID_ARGUMENT naming raft_index", err)
	}

	// A body that itself claims an index near the top of the range.
	far, err := store.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	b := far.NewBatch()
	if err := b.SetAppliedIndex(math.MaxUint64, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	ck, err := far.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Remove()
	var farBody bytes.Buffer
	if _, err := ck.WriteTo(&farBody); err != nil {
		t.Fatal(err)
	}
	farHeader := h
	farHeader.RaftIndex, farHeader.KeyIDs = math.MaxUint64, nil
	if err := restore(withHeader(t, farHeader, farBody.Bytes())); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("a body at index 2^64-1: %v, want INVALID_ARGUMENT", err)
	}
	if len(reg.r.restores) != 0 {
		t.Fatalf("Raft was given %v after refusals", reg.r.restores)
	}

	if err := restore(withHeader(t, h, body)); err != nil {
		t.Fatalf("restoring the untouched backup: %v", err)
	}
	if len(reg.r.restores) != 1 || reg.r.restores[0] != h.RaftIndex {
		t.Fatalf("Raft restores %v, want one at the backup's index %d", reg.r.restores, h.RaftIndex)
	}
	if !hasProject(t, reg.st, "kept") {
		t.Fatal("the restored store lacks the backup's project")
	}
}

// TestRestoreKeepsTheRegionsIdentity: a backup's node registry and cluster
// id are those of the region it was taken in, at its time; the region
// restored into keeps its own (store.RegionIdentity). A node removed after
// the backup was taken stays removed — discovery adds back any node it
// does not see removed — and discovery still tells this cluster from the
// backup's.
func TestRestoreKeepsTheRegionsIdentity(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	apply := func(cmd *fsmpb.Command) {
		t.Helper()
		if _, err := reg.s.propose(context.Background(), nil, cmd, grant{}); err != nil {
			t.Fatal(err)
		}
	}
	apply(&fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: &fsmpb.NodeRecord{NodeId: "node-2", RaftAddress: "10.0.0.2:7001"}}}})
	clusters := &clusterService{s: reg.s}
	saved := backupOf(t, clusters, adminCtx)
	// Then the operator removes node-2 and a new node joins.
	apply(&fsmpb.Command{Op: &fsmpb.Command_DeregisterNode{DeregisterNode: &fsmpb.DeregisterNode{NodeId: "node-2", Tombstone: true}}})
	apply(&fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: &fsmpb.NodeRecord{NodeId: "node-3", RaftAddress: "10.0.0.3:7001"}}}})
	// And the backup goes to another cluster: one with another id.
	backupCluster, _ := reg.s.ClusterID()
	b := reg.st.NewBatch()
	if err := b.SetBootstrapped("cluster-restored-into"); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}

	if err := clusters.Restore(&restoreClient{ctx: adminCtx, file: saved}); err != nil {
		t.Fatal(err)
	}
	if id, err := reg.s.ClusterID(); err != nil || id != "cluster-restored-into" {
		t.Fatalf("cluster id after restoring a backup of %s: %q (%v), want the region's own", backupCluster, id, err)
	}
	if len(reg.r.restores) != 1 {
		t.Fatalf("restores: %v", reg.r.restores)
	}
	if !reg.s.Removed("node-2") {
		t.Fatal("node-2, removed after the backup, is no longer marked removed")
	}
	if ids := registryIDs(t, reg.st); ids != "node-2,node-3" {
		t.Fatalf("registry after the restore: %s, want the region's own (node-2 removed, node-3)", ids)
	}
}

// TestRegistryChangesWaitForARestore: a restore writes the registry it
// read before handing the backup to Raft, so a change of the registry
// committed in between would be lost — a removal tombstone, and the node
// comes back. While a restore runs, RemoveNode and Join are refused
// (UNAVAILABLE) and discovery's registrations and reaping skip a round;
// afterwards they go through.
func TestRegistryChangesWaitForARestore(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	ctx := context.Background()
	reg.s.EnsureRegistered(ctx, "node-2", "10.0.0.2:7001", "10.0.0.2:7000", "")
	clusters := &clusterService{s: reg.s}
	saved := backupOf(t, clusters, adminCtx)
	proposed := 0
	reg.r.duringRestore = func() {
		reg.r.beforeApply = func(*fsmpb.Command) { proposed++ }
		defer func() { reg.r.beforeApply = nil }()
		if _, err := clusters.RemoveNode(adminCtx, &pb.RemoveNodeRequest{NodeId: "node-2"}); status.Code(err) != codes.Unavailable {
			t.Errorf("RemoveNode during a restore: %v, want UNAVAILABLE", err)
		}
		if _, err := clusters.Join(adminCtx, &pb.JoinRequest{NodeId: "node-5", RaftAddress: "10.0.0.5:7001", GrpcAddress: "10.0.0.5:7000"}); status.Code(err) != codes.Unavailable {
			t.Errorf("Join during a restore: %v, want UNAVAILABLE", err)
		}
		reg.s.EnsureRegistered(ctx, "node-4", "10.0.0.4:7001", "10.0.0.4:7000", "")
		reg.s.Deregister(ctx, "node-2")
	}
	if err := clusters.Restore(&restoreClient{ctx: adminCtx, file: saved}); err != nil {
		t.Fatal(err)
	}
	if proposed != 0 {
		t.Fatalf("%d registry changes proposed while the restore ran", proposed)
	}
	reg.r.duringRestore = nil
	reg.s.EnsureRegistered(ctx, "node-4", "10.0.0.4:7001", "10.0.0.4:7000", "")
	if ids := registryIDs(t, reg.st); ids != "node-2,node-4" {
		t.Fatalf("registry after the restore and a later registration: %s, want node-2 and node-4", ids)
	}
}

// registryIDs lists the node ids in st's registry, comma-separated.
func registryIDs(t *testing.T, st *store.Store) string {
	t.Helper()
	var ids []string
	if err := st.Read(func(v *store.View) error {
		nodes, err := v.Nodes()
		for _, n := range nodes {
			ids = append(ids, n.GetNodeId())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.Join(ids, ",")
}

// TestRestoreRefusedByRaftEndsCleanly: Raft refuses a restore before
// reading its stream (the node stopped leading). The call answers
// UNAVAILABLE at once — the copy feeding Raft the stream must not be left
// blocked on it — the store is untouched, and the registry lock is free.
func TestRestoreRefusedByRaftEndsCleanly(t *testing.T) {
	reg := newSoloRegion(t, 0)
	adminCtx := as(t, reg.admin(), "")
	reg.project(adminCtx, "kept")
	clusters := &clusterService{s: reg.s}
	saved := backupOf(t, clusters, adminCtx)
	reg.project(adminCtx, "after")
	reg.r.refuseRestore = fmt.Errorf("%w: raft: node is not the leader", cluster.ErrUnknownOutcome)
	done := make(chan error, 1)
	go func() { done <- clusters.Restore(&restoreClient{ctx: adminCtx, file: saved}) }()
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("restore refused by Raft: %v, want UNAVAILABLE", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a restore Raft refused did not return")
	}
	if !hasProject(t, reg.st, "after") {
		t.Fatal("a refused restore changed the store")
	}
	if !reg.s.registry.TryLock() {
		t.Fatal("a refused restore left the registry locked")
	}
	reg.s.registry.Unlock()
}
