package clustertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
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
	setup(t, c, c.WaitLeader()) // version-1 commands flow normally
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
