package server

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/backup"
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
	if _, err := reg.ids.CreateProject(adminCtx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "before"}}}); err != nil {
		t.Fatal(err)
	}
	var before bytes.Buffer // the store now, to restore it later
	ck, err := reg.st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ck.WriteTo(&before); err != nil {
		t.Fatal(err)
	}
	ck.Remove()
	if _, err := reg.ids.CreateProject(adminCtx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "after"}}}); err != nil {
		t.Fatal(err)
	}

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
