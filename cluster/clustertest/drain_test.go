package clustertest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// TestDrainingTheLeaderUnderLoad shuts the leader down gracefully (what
// SIGTERM does) while clients write: leadership moves first, so no call
// fails with anything but UNAVAILABLE (which clients retry), and a new
// leader exists before the old node finishes stopping.
func TestDrainingTheLeaderUnderLoad(t *testing.T) {
	c := New(t, Options{Nodes: 3, Gossip: true})
	_, secret := setup(t, c, c.WaitLeader())
	id := secret.GetMetadata().GetId()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[codes.Code]int{}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				for _, n := range c.Nodes {
					cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
					_, err := pb.NewSecretVersionServiceClient(c.Conn(n)).Create(cctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
						Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("v", fmt.Sprintf("%d-%d", w, i))}}})
					ccancel()
					if ctx.Err() != nil {
						return
					}
					mu.Lock()
					counts[status.Code(err)]++
					mu.Unlock()
				}
			}
		}(w)
	}
	Eventually(t, 10*time.Second, "load to build up", func() error {
		mu.Lock()
		defer mu.Unlock()
		if counts[codes.OK] < 30 {
			return fmt.Errorf("%d writes so far", counts[codes.OK])
		}
		return nil
	})
	old := c.WaitLeader()
	if err := old.N.Shutdown(10 * time.Second); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// Right as the old leader is gone, another node already leads.
	newLeader := ""
	for _, n := range c.Nodes {
		if n != old {
			if id, _ := n.N.Raft.Leader(); id != "" && id != old.ID {
				newLeader = id
			}
		}
	}
	old.N = nil
	if newLeader == "" {
		t.Fatal("no other node knew a new leader when the old one finished draining")
	}
	mu.Lock()
	okBefore := counts[codes.OK]
	mu.Unlock()
	Eventually(t, 10*time.Second, "writes to go on", func() error {
		mu.Lock()
		defer mu.Unlock()
		if counts[codes.OK] < okBefore+20 {
			return fmt.Errorf("%d writes since the drain", counts[codes.OK]-okBefore)
		}
		return nil
	})
	cancel()
	wg.Wait()
	for code, n := range counts {
		if code != codes.OK && code != codes.Unavailable {
			t.Errorf("%d calls failed with %v during the drain; only UNAVAILABLE (retried) is allowed", n, code)
		}
	}
	t.Logf("calls by outcome: %v (new leader %s)", counts, newLeader)
}
