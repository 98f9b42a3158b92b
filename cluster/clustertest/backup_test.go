package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/backup"
	"github.com/mysterybox/mysterybox/store"
)

func takeBackup(t *testing.T, c *Cluster, n *Node) []byte {
	t.Helper()
	stream, err := pb.NewClusterServiceClient(c.Conn(n)).Snapshot(ctxT(t), &pb.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return buf.Bytes()
		}
		if err != nil {
			t.Fatalf("backup: %v", err)
		}
		buf.Write(chunk.GetData())
	}
}

func restoreBackup(ctx context.Context, c *Cluster, n *Node, token string, data []byte, force bool) (*pb.RestoreResponse, error) {
	stream, err := pb.NewClusterServiceClient(c.Dial(n, token)).Restore(ctx)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(data); i += 100 << 10 {
		end := min(i+100<<10, len(data))
		if err := stream.Send(&pb.RestoreChunk{Data: data[i:end], ForceRegion: force && i == 0}); err != nil {
			break
		}
	}
	return stream.CloseAndRecv()
}

// contentOf restores a backup's body into a scratch store and hashes it.
func contentOf(t *testing.T, data []byte) (backup.Header, string) {
	t.Helper()
	r := bytes.NewReader(data)
	h, err := backup.ReadHeader(r)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "scratch"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Restore(backup.BodyReader(r, h)); err != nil {
		t.Fatal(err)
	}
	idx, _, _ := st.AppliedIndex()
	if idx != h.RaftIndex {
		t.Fatalf("body at index %d, header says %d", idx, h.RaftIndex)
	}
	hash, err := st.ContentHash()
	if err != nil {
		t.Fatal(err)
	}
	return h, hash
}

func TestBackupUnderWritesRestoresIntoAFreshRegion(t *testing.T) {
	src := New(t, Options{Nodes: 3})
	_, secret := setup(t, src, src.WaitLeader())
	id := secret.GetMetadata().GetId()

	// Writes go on while the backup is taken through a follower.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var acked atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			if _, err := failoverCreateVersion(ctx, src, id, fmt.Sprintf("w%d", i), fmt.Sprintf("bk-%d", i)); err == nil {
				acked.Add(1)
			}
		}
	}()
	Eventually(t, 10*time.Second, "some writes", func() error {
		if acked.Load() < 10 {
			return fmt.Errorf("%d writes", acked.Load())
		}
		return nil
	})
	before := acked.Load()
	data := takeBackup(t, src, src.Followers()[0])
	cancel()
	wg.Wait()
	h, want := contentOf(t, data)
	if h.Region != src.Region || len(h.KeyIDs) != 1 || h.KeyIDs[0] != "test1" || h.ClusterID == "" {
		t.Fatalf("header %+v", h)
	}

	// Every write acknowledged before the backup started is in it.
	dst := New(t, Options{Nodes: 3})
	dst.Keyring = src.Keyring // the region's keyring travels with its backups
	for _, n := range dst.Nodes {
		n.Cfg.Keyring = src.Keyring
		if err := n.N.API.SetKeyring(src.Keyring); err != nil {
			t.Fatal(err)
		}
	}
	leader := dst.WaitLeader()
	dstBefore, _ := leader.N.Store.ContentHash()

	// Damaged files are refused and change nothing.
	for name, bad := range map[string][]byte{
		"truncated":   data[:len(data)-100],
		"flipped":     flip(data, len(data)/2),
		"not-backup":  []byte("hello"),
		"bad-trailer": append(append([]byte(nil), data...), 'x'),
	} {
		_, err := restoreBackup(ctxT(t), dst, dst.Followers()[0], dst.AdminToken, bad, false)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s backup: %v, want INVALID_ARGUMENT", name, err)
		}
	}
	if h, _ := leader.N.Store.ContentHash(); h != dstBefore {
		t.Fatal("a refused restore changed the store")
	}

	resp, err := restoreBackup(ctxT(t), dst, dst.Followers()[0], dst.AdminToken, data, false)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetBackupIndex() != h.RaftIndex {
		t.Fatalf("restore response %v", resp)
	}
	// Every node of the new region converges to exactly the backup.
	Eventually(t, 30*time.Second, "every node to hold the backup", func() error {
		for _, n := range dst.Nodes {
			got, err := n.N.Store.ContentHash()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%s content %.12s, backup %.12s", n.ID, got, want)
			}
		}
		return nil
	})
	// The restored region has the source's accounts: its admin token works,
	// and the data is there.
	list, err := pb.NewSecretVersionServiceClient(dst.Dial(leader, src.AdminToken)).List(ctxT(t), &pb.ListSecretVersionsRequest{ParentId: id, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(list.GetVersions())) < before+1 {
		t.Fatalf("restored %d versions, want at least %d acknowledged before the backup", len(list.GetVersions()), before+1)
	}
	// New writes apply on top of the restored state, on every node.
	if _, err := pb.NewSecretVersionServiceClient(dst.Dial(leader, src.AdminToken)).Create(ctxT(t), &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("value", "after-restore")}}}); err != nil {
		t.Fatal(err)
	}
	dst.WaitConverged()
	// The restore left the leader's log with a hole at the restored index
	// (raft-wal cannot hold one: gapLog cleared the log before the next
	// append). Every node restarts from its disk and still converges.
	for _, n := range append([]*Node(nil), dst.Nodes...) {
		dst.Stop(n)
		dst.Restart(n)
		dst.WaitConverged()
	}

	// A backup of another region is refused unless forced.
	other := New(t, Options{Nodes: 1, Region: "elsewhere1"})
	for _, n := range other.Nodes {
		n.N.API.SetKeyring(src.Keyring)
	}
	if _, err := restoreBackup(ctxT(t), other, other.Nodes[0], other.AdminToken, data, false); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("restore of another region's backup: %v, want FAILED_PRECONDITION", err)
	}

	// A region whose keyring has a key of the same id but other material
	// cannot open the backup: refused before Raft sees it (it was accepted,
	// every payload read then failed, and every node refused its next start).
	sameID := New(t, Options{Nodes: 1})
	if _, err := restoreBackup(ctxT(t), sameID, sameID.Nodes[0], sameID.AdminToken, data, false); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "different key") {
		t.Fatalf("restore under a keyring with the same key id, another key: %v, want FAILED_PRECONDITION naming the different key", err)
	}
	sameID.Stop(sameID.Nodes[0])
	sameID.Restart(sameID.Nodes[0]) // its own data untouched: it starts
	sameID.WaitConverged()
}

func flip(b []byte, i int) []byte {
	out := append([]byte(nil), b...)
	out[i] ^= 0xff
	return out
}

// TestRestartRightAfterABackupRestore: Raft numbers a restored backup's
// snapshot past its log, while the store keeps the backup's own index, so
// until the next entry is applied the store looks behind its latest
// snapshot and a node restarted then restores the backup again at start.
// That must give exactly the backup, and stop once a write has applied.
func TestRestartRightAfterABackupRestore(t *testing.T) {
	src := New(t, Options{Nodes: 1, NoAudit: true})
	_, secret := setup(t, src, src.WaitLeader())
	for i := 0; i < 5; i++ {
		if _, err := failoverCreateVersion(ctxT(t), src, secret.GetMetadata().GetId(), fmt.Sprintf("v%d", i), fmt.Sprintf("k%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	data := takeBackup(t, src, src.Nodes[0])
	_, want := contentOf(t, data)

	var logs syncBuffer
	dst := New(t, Options{Nodes: 1, NoAudit: true, LogSink: &logs})
	n := dst.Nodes[0]
	n.Cfg.Keyring = src.Keyring
	if err := n.N.API.SetKeyring(src.Keyring); err != nil {
		t.Fatal(err)
	}
	if _, err := restoreBackup(ctxT(t), dst, n, dst.AdminToken, data, false); err != nil {
		t.Fatal(err)
	}
	const restoredAgain = "the store is behind the latest Raft snapshot"
	dst.Stop(n)
	dst.Restart(n)
	if !strings.Contains(string(logs.Bytes()), restoredAgain) {
		t.Fatalf("the restart right after the restore did not restore the backup again (no %q in the log)", restoredAgain)
	}
	if got, err := n.N.Store.ContentHash(); err != nil || got != want {
		t.Fatalf("content after the restart %.12s (%v), backup %.12s", got, err, want)
	}

	// A write moves the store past the snapshot: the next restart trusts it.
	dst.WaitLeader()
	if _, err := pb.NewSecretVersionServiceClient(dst.Dial(n, src.AdminToken)).Create(ctxT(t), &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: secret.GetMetadata().GetId()}, Spec: &pb.SecretVersionSpec{Payload: payload("value", "after-restore")}}}); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(string(logs.Bytes()), restoredAgain)
	dst.Stop(n)
	dst.Restart(n)
	dst.WaitLeader()
	if got := strings.Count(string(logs.Bytes()), restoredAgain); got != before {
		t.Fatalf("a restart after a write restored the snapshot again (%d warnings, %d before)", got, before)
	}
	got, err := pb.NewPayloadServiceClient(dst.Dial(n, src.AdminToken)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "value"})
	if err != nil || got.GetEntry().GetStringValue() != "after-restore" {
		t.Fatalf("after the second restart: %v, %v; want after-restore", got.GetEntry(), err)
	}
}
