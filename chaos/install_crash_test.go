package chaos

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/chaos/harness"
)

// TestCrashDuringSnapshotInstallKeepsTheNode: a node that was down while
// the region wrote past its log is sent a snapshot when it returns, and is
// SIGKILLed while its store restores it (hashicorp/raft has already saved
// the snapshot; the store has not switched to it). Restarted, it must serve
// every version acknowledged while it was down, from its own store: it
// restores the snapshot again instead of resuming after it on the old store
// (docs/reliability.md, bug 5).
func TestCrashDuringSnapshotInstallKeepsTheNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, secrets := startWithSecrets(ctx, t, 5, "--raft-snapshot-threshold=256", "--raft-trailing-logs=64", "--raft-snapshot-interval=500ms")
	defer c.Close()
	admin := c.Admin()

	const down = 3
	if err := c.Kill(down); err != nil {
		t.Fatal(err)
	}
	// Enough data that restoring it takes a while (≈ 40 MB), written while
	// the node is down: the others snapshot and compact their logs past it.
	acked := map[string]ackedWrite{}
	var mu sync.Mutex
	filler := bytes.Repeat([]byte("x"), 16<<10)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 160; i++ {
				val, secret := fmt.Sprintf("w%d-%d", w, i), secrets[(w+i)%len(secrets)]
				v, err := admin.Versions().Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
					Metadata: &pb.Metadata{ParentId: secret},
					Spec: &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{
						{Key: "v", Value: &pb.PayloadEntry_StringValue{StringValue: val}},
						{Key: "filler", Value: &pb.PayloadEntry_BinaryValue{BinaryValue: filler}},
					}}},
				}})
				if err != nil {
					t.Errorf("write while %s is down: %v", c.Slot(down).ID, err)
					return
				}
				mu.Lock()
				acked[v.GetMetadata().GetId()] = ackedWrite{secret, val}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Restart it and kill it as soon as its store starts a restore (a
	// second database directory beside the one CURRENT names).
	fsmDir := filepath.Join(c.Slot(down).DataDir, "fsm")
	current := func() string {
		cur, _ := os.ReadFile(filepath.Join(fsmDir, "CURRENT"))
		return strings.TrimSpace(string(cur))
	}
	storeBefore := current()
	restoring := func() bool {
		dbs, _ := filepath.Glob(filepath.Join(fsmDir, "db-*"))
		for _, db := range dbs {
			if filepath.Base(db) != storeBefore {
				return true
			}
		}
		return false
	}
	if err := c.Restart(down); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for !restoring() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start restoring a snapshot within a minute", c.Slot(down).ID)
		}
		time.Sleep(time.Millisecond)
	}
	if err := c.Kill(down); err != nil {
		t.Fatal(err)
	}
	if current() != storeBefore {
		t.Fatal("the store switched to the snapshot before the kill: the test did not crash the node mid-install")
	}
	// A leader that saw the send fail would only send the snapshot again;
	// a new one finds the node's log ending at the snapshot and appends
	// after it, which is where a store left behind would diverge.
	before := leaderID(ctx, admin)
	if _, err := admin.Cluster().TransferLeadership(ctx, &pb.TransferLeadershipRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 30*time.Second, "a new leader", func() (bool, error) {
		id := leaderID(ctx, admin)
		return id != "" && id != before, nil
	}); err != nil {
		t.Fatal(err)
	}

	if err := c.Restart(down); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	logText, _ := os.ReadFile(c.Slot(down).Log)
	if !strings.Contains(string(logText), "behind the latest Raft snapshot") {
		t.Error("the restarted node did not find its store behind its latest snapshot")
	}
	// Every acknowledged version, read from that node's own store.
	local, err := client.New(ctx, client.Config{Endpoints: []string{c.Slot(down).GRPCAdv}, Token: c.Token(), Consistency: "stale", DisableDiscovery: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	checkAcked(ctx, t, local, acked, "on the node that crashed mid-install")
}

// leaderID is the region's leader as a node reports it ("" when none).
func leaderID(ctx context.Context, admin *client.Client) string {
	st, err := admin.Cluster().Status(ctx, &pb.ClusterStatusRequest{})
	if err != nil {
		return ""
	}
	return st.GetLeaderId()
}
