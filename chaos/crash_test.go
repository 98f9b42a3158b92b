package chaos

import (
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

// TestCrashOfEveryNodeKeepsAcknowledgedWrites: 32 clients write versions;
// every node is SIGKILLed at once while writes are in flight; after all
// restart, every acknowledged version is there with its value. Small Raft
// snapshot settings make the nodes snapshot and compact their logs during
// the writes, so the crash also hits the store's durability at snapshot
// time (the store commits without fsync: the Raft log is the durable
// record until a snapshot truncates it).
func TestCrashOfEveryNodeKeepsAcknowledgedWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, secrets := startWithSecrets(ctx, t, 3, "--raft-snapshot-threshold=512", "--raft-trailing-logs=128", "--raft-snapshot-interval=500ms")
	defer c.Close()
	admin := c.Admin()

	wc, err := client.New(ctx, client.Config{Endpoints: c.Endpoints(), Token: c.Token(), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]ackedWrite{} // by version id
	var mu sync.Mutex
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; wctx.Err() == nil; i++ {
				val, secret := fmt.Sprintf("w%d-%d", w, i), secrets[(w+i)%len(secrets)]
				v, err := wc.Versions().Create(wctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
					Metadata: &pb.Metadata{ParentId: secret},
					Spec:     &pb.SecretVersionSpec{Payload: &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "v", Value: &pb.PayloadEntry_StringValue{StringValue: val}}}}},
				}})
				if err == nil {
					mu.Lock()
					acked[v.GetMetadata().GetId()] = ackedWrite{secret, val}
					mu.Unlock()
				}
			}
		}()
	}
	// Write past three snapshot thresholds and until a snapshot is on disk
	// (the log has been compacted), then kill everyone.
	snapshotsOnDisk := func() int {
		n := 0
		for _, sl := range c.Slots() {
			ents, _ := os.ReadDir(filepath.Join(sl.DataDir, "raft", "snapshots"))
			for _, e := range ents {
				if !strings.HasSuffix(e.Name(), ".tmp") { // one being written
					n++
				}
			}
		}
		return n
	}
	err = harness.Poll(ctx, time.Minute, "acknowledged writes past three snapshot thresholds and a snapshot", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > 3*512 && snapshotsOnDisk() > 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var kills sync.WaitGroup
	for i := 1; i <= c.Size(); i++ {
		kills.Add(1)
		go func() { defer kills.Done(); _ = c.Kill(i) }()
	}
	kills.Wait()
	stopWriters()
	wg.Wait()
	wc.Close()
	mu.Lock()
	want := len(acked)
	mu.Unlock()
	t.Logf("%d writes acknowledged before every node was killed", want)
	if snapshotsOnDisk() == 0 {
		t.Fatal("no node took a Raft snapshot before the crash: the test did not exercise log compaction")
	}

	for i := 1; i <= c.Size(); i++ {
		if err := c.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitHealthy(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAcked(ctx, t, admin, acked, "after the crash")
}

// startWithSecrets starts a 3-node region of real processes on loopback
// (seed drives the proxies; args go to every node) and creates a project
// with 8 secrets, whose ids it returns.
func startWithSecrets(ctx context.Context, t *testing.T, seed uint64, args ...string) (*harness.Cluster, []string) {
	t.Helper()
	c, err := harness.Start(ctx, harness.Config{
		Dir: runDir(t), Bin: buildServer(t), Nodes: 3, Formation: harness.Manual, Network: harness.NewLoopback(), Seed: seed, Logf: t.Logf,
		ExtraArgs: args,
	})
	if err != nil {
		t.Fatal(err)
	}
	admin := c.Admin()
	p, err := admin.Identity().CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: "crash"}}})
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	var secrets []string
	for i := 0; i < 8; i++ {
		s, err := admin.Secrets().Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: p.GetMetadata().GetId(), Name: fmt.Sprintf("s%d", i)}}})
		if err != nil {
			c.Close()
			t.Fatal(err)
		}
		secrets = append(secrets, s.GetMetadata().GetId())
	}
	return c, secrets
}

// ackedWrite is an acknowledged version's secret and value.
type ackedWrite struct{ secret, value string }

// checkAcked reads every acknowledged version (by id) through cl and fails
// the test for each one missing or holding another value.
func checkAcked(ctx context.Context, t *testing.T, cl *client.Client, acked map[string]ackedWrite, when string) {
	t.Helper()
	missing := 0
	for id, w := range acked {
		got, err := cl.Payloads().GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: w.secret, VersionId: id, Key: "v"})
		switch {
		case err != nil:
			missing++
			if missing <= 10 {
				t.Errorf("acknowledged version %s (%q) is missing %s: %v", id, w.value, when, err)
			}
		case got.GetEntry().GetStringValue() != w.value:
			t.Errorf("version %s holds %q %s, acknowledged with %q", id, got.GetEntry().GetStringValue(), when, w.value)
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged writes missing %s", missing, len(acked), when)
	}
}
