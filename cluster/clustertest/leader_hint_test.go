package clustertest

import (
	"context"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/api/client"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// TestLeaderHintReachesAnyClient: a client whose token may not read the
// cluster's status, seeded with a follower only, learns the leader from
// response metadata and sends its next calls there.
func TestLeaderHintReachesAnyClient(t *testing.T) {
	c := New(t, Options{Nodes: 3})
	leader := c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	ci := newIdentity(t, c, leader, "hinted", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	f := c.Followers()[0]
	cl, err := client.New(context.Background(), client.Config{Endpoints: []string{f.Cfg.GRPCAddr}, Token: ci.token, Timeout: 10 * time.Second, DisableDiscovery: true})
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
}
