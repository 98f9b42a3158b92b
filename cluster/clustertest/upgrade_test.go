package clustertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// TestMixedVersionRegion runs a region where one node advertises the
// previous command version: commands every version knows work, a newer
// command type is refused until that node is upgraded.
func TestMixedVersionRegion(t *testing.T) {
	c := New(t, Options{Nodes: 3, Gossip: true, OldNodes: 1})
	old := c.Nodes[0]
	if old.Cfg.AdvertiseCommandVersion != 1 {
		t.Fatalf("node1 should be the old one: %+v", old.Cfg.AdvertiseCommandVersion)
	}
	_, secret := setup(t, c, c.WaitLeader()) // version-1 commands flow normally
	// With an old node in the region, a mutation's audit record does not
	// ride in its command (the old node would drop it): it is written
	// after the mutation, once.
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", "write-beside-an-old-node")
	if _, err := pb.NewSecretVersionServiceClient(c.Conn(c.WaitLeader())).Create(ctx, &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: secret.GetMetadata().GetId()}, Spec: &pb.SecretVersionSpec{Payload: payload("k", "v")}},
	}); err != nil {
		t.Fatalf("a write with an old node in the region: %v", err)
	}
	Eventually(t, 10*time.Second, "the write's audit record", func() error {
		if got := recordsOf(t, c.WaitLeader(), "write-beside-an-old-node"); len(got) != 1 || got[0].GetCode() != "OK" {
			return fmt.Errorf("records %v, want one OK", got)
		}
		return nil
	})
	// Nor does a follower serve a stale payload read itself (the old node
	// could be the leader it ships the record to): the leader serves it.
	leader := c.WaitLeader()
	for _, f := range c.Followers() {
		rid := "stale-read-beside-an-old-node-" + f.ID
		sctx := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale", "x-request-id", rid)
		if _, err := pb.NewPayloadServiceClient(c.Conn(f)).GetByKey(sctx, &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "k"}); err != nil {
			t.Fatalf("stale payload read through %s: %v", f.ID, err)
		}
		if recs := recordsOf(t, leader, rid); len(recs) != 1 || recs[0].GetNodeId() != leader.ID {
			t.Fatalf("stale read through %s beside an old node: records %v, want one by the leader %s", f.ID, recs, leader.ID)
		}
	}
	admin := pb.NewAdminServiceClient(c.Conn(c.Nodes[1]))
	Eventually(t, 10*time.Second, "the old node's version to be known", func() error {
		_, err := admin.Rewrap(ctxT(t), &pb.RewrapRequest{})
		if status.Code(err) == codes.FailedPrecondition && strings.Contains(err.Error(), old.ID) {
			return nil
		}
		return fmt.Errorf("rewrap with an old node in the region: %v, want FAILED_PRECONDITION naming %s", err, old.ID)
	})
	// "Upgrade" the old node: restart it advertising the current version.
	c.Stop(old)
	old.Cfg.AdvertiseCommandVersion = 0
	c.Restart(old)
	Eventually(t, 15*time.Second, "the upgraded region to accept the new command", func() error {
		_, err := admin.Rewrap(ctxT(t), &pb.RewrapRequest{})
		return err
	})
}
