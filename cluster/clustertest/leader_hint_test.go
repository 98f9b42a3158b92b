package clustertest

import (
	"context"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestLeaderHintReachesAnyClient: a client whose token may not read the
// cluster's status (its discovery is refused), seeded with a follower only,
// learns the leader from response metadata and sends its next calls there.
// (With discovery disabled by configuration it keeps to its endpoints:
// api/client's TestLeaderHintWithoutDiscoveryKeepsToEndpoints.)
func TestLeaderHintReachesAnyClient(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	ci := newIdentity(t, c, leader, "hinted", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	f := c.Followers()[0]
	cl, err := client.New(context.Background(), client.Config{Endpoints: []string{f.Cfg.GRPCAddr}, Token: ci.token, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Payloads().GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"}); err != nil {
		t.Fatal(err)
	}
	if got := cl.Leader(); got != leader.Cfg.GRPCAddr {
		t.Fatalf("client learned leader %q, want %s", got, leader.Cfg.GRPCAddr)
	}
	// A call that fails (a response without a message) carries it too.
	failing, err := client.New(context.Background(), client.Config{Endpoints: []string{f.Cfg.GRPCAddr}, Token: ci.token, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer failing.Close()
	if _, err := failing.Payloads().GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "no-such-key"}); status.Code(err) != codes.NotFound {
		t.Fatalf("read of a missing key: %v, want NOT_FOUND", err)
	}
	if got := failing.Leader(); got != leader.Cfg.GRPCAddr {
		t.Fatalf("after a failed call the client learned leader %q, want %s", got, leader.Cfg.GRPCAddr)
	}
}
