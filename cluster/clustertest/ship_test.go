package clustertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/api/nodepb"
	"github.com/mysterybox/mysterybox/api/server"
	"github.com/mysterybox/mysterybox/region"
)

// staleRead reads secret's password through n with x-consistency: stale
// and request id rid.
func staleRead(t *testing.T, c *Cluster, n *Node, token, secretID, rid string) (*pb.GetPayloadByKeyResponse, error) {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-consistency", "stale", "x-request-id", rid)
	return pb.NewPayloadServiceClient(c.Dial(n, token)).GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: secretID, Key: "password"})
}

// waitFollowerServes reads through f with x-consistency: stale until a
// read's audit record names f: until gossip has shown every node's
// version, the follower forwards payload reads to the leader.
func waitFollowerServes(t *testing.T, c *Cluster, leader, f *Node, token, secretID string) {
	t.Helper()
	i := 0
	Eventually(t, 15*time.Second, "a stale read served by the follower", func() error {
		i++
		rid := fmt.Sprintf("warm-up-%s-%d", f.ID, i)
		if _, err := staleRead(t, c, f, token, secretID, rid); err != nil {
			t.Fatalf("stale payload read through a follower: %v", err)
		}
		if recs := recordsOf(t, leader, rid); len(recs) != 1 || recs[0].GetNodeId() != f.ID {
			return fmt.Errorf("read %s recorded as %v", rid, recs)
		}
		return nil
	})
}

// regionWithStaleReadingFollower starts a 3-node region formed through
// gossip with a secret and an account that may read it, and returns once
// follower f serves stale payload reads itself.
func regionWithStaleReadingFollower(t *testing.T) (c *Cluster, leader, f *Node, ci identity, secret *pb.Secret) {
	t.Helper()
	c = New(t, Options{Nodes: 3, Gossip: true})
	leader = c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	ci = newIdentity(t, c, leader, "ci-reader", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	c.WaitConverged()
	f = c.Followers()[0]
	waitFollowerServes(t, c, leader, f, ci.token, secret.GetMetadata().GetId())
	return c, leader, f, ci, secret
}

// A follower serves a stale payload read from its own state and answers
// only once the leader has committed the read's audit record.
func TestFollowerServesStalePayloadReadsAndShipsTheirRecords(t *testing.T) {
	c, leader, f, ci, secret := regionWithStaleReadingFollower(t)

	got, err := staleRead(t, c, f, ci.token, secret.GetMetadata().GetId(), "stale-on-follower")
	if err != nil || got.GetEntry().GetStringValue() != "v1" {
		t.Fatalf("stale payload read through a follower: %v, %v; want v1", got, err)
	}
	// No waiting: the record is committed before the answer.
	recs := recordsOf(t, leader, "stale-on-follower")
	if len(recs) != 1 {
		t.Fatalf("records of the read on the leader right after it: %v, want exactly one", recs)
	}
	if r := recs[0]; r.GetNodeId() != f.ID || r.GetCode() != "OK" || r.GetAccountId() != ci.accountID || !contains(r.GetResourceIds(), secret.GetMetadata().GetId()) {
		t.Fatalf("record of the stale read: %v", r)
	}

	// A read the follower refuses is shipped too (without holding the
	// answer back), and the chain stays intact on every node.
	if _, err := staleRead(t, c, f, ci.token, "mbsec-0000000000000000000000", "stale-not-found"); status.Code(err) != codes.NotFound && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stale read of a missing secret: %v", err)
	}
	Eventually(t, 10*time.Second, "the refused read's record", func() error {
		if recs := recordsOf(t, leader, "stale-not-found"); len(recs) != 1 || recs[0].GetNodeId() != f.ID || recs[0].GetCode() == "OK" {
			return fmt.Errorf("records %v, want one refusal by %s", recs, f.ID)
		}
		return nil
	})

	// Only the leader takes shipped records: a follower answers a signed
	// batch UNAVAILABLE (the shipper then fails its reads, fail-closed).
	batch := &nodepb.ShipAuditRequest{
		NodeId:  f.ID,
		Records: []*pb.AuditRecord{{Time: timestamppb.Now(), Method: "/mysterybox.v1.PayloadService/GetByKey", NodeId: f.ID, RequestId: "shipped-to-a-follower", Code: "OK"}},
		SentAt:  timestamppb.Now(),
		KeyId:   c.Keyring.ActiveKeyID(),
	}
	if err := server.SignShipAudit(c.Keyring, batch); err != nil {
		t.Fatal(err)
	}
	other := c.Followers()[1]
	if _, err := nodepb.NewNodeServiceClient(c.Conn(other)).ShipAudit(ctxT(t), batch); status.Code(err) != codes.Unavailable {
		t.Fatalf("a batch shipped to a follower: %v, want UNAVAILABLE", err)
	}

	c.WaitConverged()
	for _, n := range c.Nodes {
		if recs := recordsOf(t, n, "shipped-to-a-follower"); len(recs) != 0 {
			t.Fatalf("%s chained a batch a follower refused: %v", n.ID, recs)
		}
		v, err := pb.NewAuditServiceClient(c.Conn(n)).Verify(ctxT(t), &pb.VerifyAuditRequest{})
		if err != nil || !v.GetOk() {
			t.Fatalf("verify on %s: %v %v", n.ID, v, err)
		}
	}
}

// Audit stays fail-closed: a follower that cannot have its record
// committed (no quorum, no leader) returns no payload.
func TestStalePayloadReadFailsClosedWithoutALeader(t *testing.T) {
	c, _, f, ci, secret := regionWithStaleReadingFollower(t)
	for _, n := range c.Nodes {
		if n != f {
			c.Stop(n)
		}
	}
	got, err := staleRead(t, c, f, ci.token, secret.GetMetadata().GetId(), "alone")
	if status.Code(err) != codes.Unavailable || got != nil {
		t.Fatalf("stale payload read on a node without a quorum: %v, %v; want UNAVAILABLE and no payload", got, err)
	}
	if !strings.Contains(err.Error(), "audit") {
		t.Fatalf("the refusal should say the audit record could not be written: %v", err)
	}
}

// ShipAudit needs no account token but the region's keyring: a batch not
// signed by a node of the region, replayed later, or carrying records in
// another node's name is refused; a signed one is chained.
func TestShipAuditOnlyTakesSignedBatches(t *testing.T) {
	c := New(t, Options{Nodes: 1})
	leader := c.WaitLeader()
	conn, err := grpc.NewClient(leader.N.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := nodepb.NewNodeServiceClient(conn)
	batch := func(rid string) *nodepb.ShipAuditRequest {
		return &nodepb.ShipAuditRequest{
			NodeId:  "n-follower",
			Records: []*pb.AuditRecord{{Time: timestamppb.Now(), Method: "/mysterybox.v1.PayloadService/GetByKey", AccountId: "serviceaccount-x", NodeId: "n-follower", RequestId: rid, Code: "OK"}},
			SentAt:  timestamppb.Now(),
			KeyId:   c.Keyring.ActiveKeyID(),
		}
	}
	signed := func(r *nodepb.ShipAuditRequest) *nodepb.ShipAuditRequest {
		if err := server.SignShipAudit(c.Keyring, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	cases := []struct {
		name string
		req  *nodepb.ShipAuditRequest
		code codes.Code
	}{
		{"unsigned", batch("unsigned"), codes.PermissionDenied},
		{"signed, then altered", func() *nodepb.ShipAuditRequest {
			r := signed(batch("altered"))
			r.Records[0].AccountId = "useraccount-someone-else"
			return r
		}(), codes.PermissionDenied},
		{"unknown key", func() *nodepb.ShipAuditRequest { r := batch("unknown-key"); r.KeyId = "no-such-key"; return r }(), codes.FailedPrecondition},
		{"signed by another region's keyring (same key id)", func() *nodepb.ShipAuditRequest {
			raw, err := region.GenerateKeyringFile(c.Keyring.ActiveKeyID())
			if err != nil {
				t.Fatal(err)
			}
			other, err := region.ParseKeyring(raw)
			if err != nil {
				t.Fatal(err)
			}
			r := batch("other-region")
			if err := server.SignShipAudit(other, r); err != nil {
				t.Fatal(err)
			}
			return r
		}(), codes.PermissionDenied},
		{"replayed after the window", func() *nodepb.ShipAuditRequest {
			r := batch("old")
			r.SentAt = timestamppb.New(time.Now().Add(-2 * time.Minute))
			return signed(r)
		}(), codes.PermissionDenied},
		{"another node's record", func() *nodepb.ShipAuditRequest {
			r := batch("impersonated")
			r.Records[0].NodeId = leader.ID
			return signed(r)
		}(), codes.InvalidArgument},
		{"already chained", func() *nodepb.ShipAuditRequest {
			r := batch("chained")
			r.Records[0].Seq = 7
			return signed(r)
		}(), codes.InvalidArgument},
		{"empty", func() *nodepb.ShipAuditRequest { r := batch(""); r.Records = nil; return signed(r) }(), codes.InvalidArgument},
	}
	for _, tc := range cases {
		if _, err := node.ShipAudit(ctxT(t), tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	for _, rid := range []string{"unsigned", "altered", "other-region", "old", "impersonated", "chained"} {
		if recs := recordsOf(t, leader, rid); len(recs) != 0 {
			t.Errorf("a refused batch (%s) was chained: %v", rid, recs)
		}
	}
	if _, err := node.ShipAudit(ctxT(t), signed(batch("good"))); err != nil {
		t.Fatalf("a signed batch: %v", err)
	}
	recs := recordsOf(t, leader, "good")
	if len(recs) != 1 || recs[0].GetSeq() == 0 || recs[0].GetHash() == "" || recs[0].GetNodeId() != "n-follower" {
		t.Fatalf("the signed batch's record: %v", recs)
	}
}

// A linearizable payload read checks leadership after reading, while its
// audit record commits, and answers only if both succeed. With audit
// fail-open the record's failure alone would not stop it: a leader cut
// off from its followers must still refuse, since another leader may
// have taken writes it has not seen.
func TestLinearizablePayloadReadOnACutOffLeaderFails(t *testing.T) {
	c := New(t, Options{Nodes: 3, AuditFailOpen: true})
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	payloads := pb.NewPayloadServiceClient(c.Conn(leader))
	if _, err := payloads.GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"}); err != nil {
		t.Fatalf("read with the region whole: %v", err)
	}
	for _, f := range c.Followers() {
		c.Stop(f)
	}
	got, err := payloads.GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
	if err == nil || got != nil {
		t.Fatalf("linearizable payload read on a leader without its followers: %v, %v; want an error and no payload", got, err)
	}
	if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
		t.Fatalf("read on a cut-off leader: %v, want UNAVAILABLE", err)
	}
}
