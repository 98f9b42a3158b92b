package clustertest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/cluster"
)

// TestRegionMovesFromBoltToWAL: a region whose nodes keep their Raft log in
// raft-boltdb is moved to raft-wal one rolling restart at a time, while
// writes go on; every version written before, during and after is readable
// on every node, the replicas end identical, and no raft.db remains.
func TestRegionMovesFromBoltToWAL(t *testing.T) {
	c := New(t, Options{Nodes: 3, RaftLogStore: cluster.LogStoreBoltDB})
	_, secret := setup(t, c, c.WaitLeader())
	id := secret.GetMetadata().GetId()
	var written []string
	write := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			value := fmt.Sprintf("value-%d", len(written))
			var err error
			Eventually(t, 15*time.Second, "a write to be accepted", func() error {
				_, err = pb.NewSecretVersionServiceClient(c.Conn(c.WaitLeader())).Create(ctxT(t), &pb.CreateSecretVersionRequest{
					Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("k", value)}},
				})
				return err
			})
			written = append(written, value)
		}
	}
	write(20)
	for _, n := range c.Nodes {
		if _, err := os.Stat(filepath.Join(n.Dir, "raft", "raft.db")); err != nil {
			t.Fatalf("%s should start on raft-boltdb: %v", n.ID, err)
		}
		c.Stop(n)
		write(5) // the other two carry on
		n.Cfg.RaftLogStore = cluster.LogStoreWAL
		c.Restart(n)
		write(5)
	}
	c.WaitConverged()
	for _, n := range c.Nodes {
		if _, err := os.Stat(filepath.Join(n.Dir, "raft", "raft.db")); !os.IsNotExist(err) {
			t.Fatalf("%s still has raft.db after moving to the WAL: %v", n.ID, err)
		}
		versions, err := pb.NewSecretVersionServiceClient(c.Conn(n)).List(ctxT(t), &pb.ListSecretVersionsRequest{ParentId: id, PageSize: 1000})
		if err != nil {
			t.Fatalf("list on %s: %v", n.ID, err)
		}
		// The secret's first version came with it, then every write.
		if got := len(versions.GetVersions()); got != len(written)+1 {
			t.Fatalf("%s lists %d versions, want %d", n.ID, got, len(written)+1)
		}
	}
	// Reads see the last write through every node.
	for _, n := range c.Nodes {
		got, err := pb.NewPayloadServiceClient(c.Conn(n)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: id, Key: "k"})
		if err != nil {
			t.Fatalf("read on %s: %v", n.ID, err)
		}
		if v := got.GetEntry().GetStringValue(); v != written[len(written)-1] {
			t.Fatalf("%s reads %q, want %q", n.ID, v, written[len(written)-1])
		}
	}
}
