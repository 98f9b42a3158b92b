package clustertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func auditRecords(t *testing.T, n *Node) []*pb.AuditRecord {
	t.Helper()
	var out []*pb.AuditRecord
	if err := n.N.Store.Read(func(v *store.View) error {
		return v.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) {
			out = append(out, r)
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAuditRecordsPayloadReadsOnEveryNodeAndDetectsTampering(t *testing.T) {
	logs := &syncBuffer{}
	c := New(t, Options{Nodes: 3, LogSink: logs})
	leader := c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	ci := newIdentity(t, c, leader, "ci-reader", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	f := c.Followers()[0]
	if _, err := pb.NewPayloadServiceClient(c.Dial(f, ci.token)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"}); err != nil {
		t.Fatal(err)
	}
	// The read was audited on the leader and replicated: every node's copy
	// has the record, with the account and the secret, and never a value.
	c.WaitConverged()
	for _, n := range c.Nodes {
		found := false
		for _, r := range auditRecords(t, n) {
			if strings.HasSuffix(r.GetMethod(), "PayloadService/GetByKey") && r.GetAccountId() == ci.accountID &&
				contains(r.GetResourceIds(), secret.GetMetadata().GetId()) && r.GetCode() == "OK" {
				found = true
			}
			if strings.Contains(r.String(), "v1") && strings.Contains(r.String(), `"v1"`) {
				t.Fatalf("an audit record carries a payload value: %v", r)
			}
		}
		if !found {
			for _, r := range auditRecords(t, n) {
				t.Logf("record %v", r)
			}
			t.Fatalf("%s's audit log lacks the payload read", n.ID)
		}
	}
	// Mutations are there too, with their outcome.
	list, err := pb.NewAuditServiceClient(c.Conn(f)).List(ctxT(t), &pb.ListAuditRequest{ResourceId: projectID})
	if err != nil || len(list.GetRecords()) == 0 {
		t.Fatalf("audit list for the project: %v %v", list, err)
	}
	audit := pb.NewAuditServiceClient(c.Conn(leader))
	v, err := audit.Verify(ctxT(t), &pb.VerifyAuditRequest{})
	if err != nil || !v.GetOk() || v.GetChecked() < 5 {
		t.Fatalf("verify intact chain: %v %v", v, err)
	}
	// Edit one record on the leader's disk: verify names it.
	recs := auditRecords(t, leader)
	victim := recs[len(recs)/2]
	victim.AccountId = "useraccount-someone-else"
	if err := leader.N.Store.TamperAuditForTest(victim); err != nil {
		t.Fatal(err)
	}
	v, err = audit.Verify(ctxT(t), &pb.VerifyAuditRequest{})
	if err != nil || v.GetOk() || v.GetFirstBreakSeq() != victim.GetSeq() {
		t.Fatalf("verify after tampering with record %d: %v %v", victim.GetSeq(), v, err)
	}
	t.Logf("verify: %s", v.GetMessage())
	// No token secret in the logs either.
	if strings.Contains(string(logs.Bytes()), ci.token[strings.LastIndex(ci.token, ".")+1:]) {
		t.Fatal("a token appears in the logs")
	}
}

func TestAuditRetentionPrunesAndRecordsIt(t *testing.T) {
	c := New(t, Options{Nodes: 1, AuditRetention: 500 * time.Millisecond})
	n := c.WaitLeader()
	setup(t, c, n)
	// Mutations are audited right after they apply, asynchronously.
	Eventually(t, 10*time.Second, "the setup's audit records", func() error {
		if len(auditRecords(t, n)) < 2 {
			return fmt.Errorf("no records yet")
		}
		return nil
	})
	first := auditRecords(t, n)[0].GetSeq()
	Eventually(t, 15*time.Second, "old records to be pruned, and the pruning recorded", func() error {
		recs := auditRecords(t, n)
		if len(recs) == 0 || recs[0].GetSeq() == first {
			return fmt.Errorf("nothing pruned yet")
		}
		for _, r := range recs {
			if r.GetMethod() == "audit.prune" {
				return nil
			}
		}
		return fmt.Errorf("no prune record")
	})
	v, err := pb.NewAuditServiceClient(c.Conn(n)).Verify(ctxT(t), &pb.VerifyAuditRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("verify after pruning: %v %v", v, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// recordsOf returns the audit records of the call with request id rid.
func recordsOf(t *testing.T, n *Node, rid string) []*pb.AuditRecord {
	t.Helper()
	var out []*pb.AuditRecord
	for _, r := range auditRecords(t, n) {
		if r.GetRequestId() == rid {
			out = append(out, r)
		}
	}
	return out
}

// TestMutationIsAuditedInItsOwnCommand: in a region whose nodes all apply
// command version 3, a mutation's audit record is committed with the
// mutation — on every node the moment the call returns, through a follower
// too — exactly once, with its outcome, also when the FSM refuses it.
func TestMutationIsAuditedInItsOwnCommand(t *testing.T) {
	c := New(t, Options{Nodes: 3, Gossip: true})
	leader := c.WaitLeader()
	_, secret := setup(t, c, leader)
	id := secret.GetMetadata().GetId()
	f := c.Followers()[0]
	// Gossip must have told the leader every node's version first.
	Eventually(t, 10*time.Second, "the leader to put records in commands", func() error {
		rid := fmt.Sprintf("probe-%d", time.Now().UnixNano())
		ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", rid)
		if _, err := pb.NewSecretVersionServiceClient(c.Conn(leader)).Create(ctx, &pb.CreateSecretVersionRequest{
			Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("k", "probe")}},
		}); err != nil {
			return err
		}
		if len(recordsOf(t, leader, rid)) != 1 {
			return fmt.Errorf("no record committed with the write yet")
		}
		return nil
	})

	ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", "create-through-follower")
	v, err := pb.NewSecretVersionServiceClient(c.Conn(f)).Create(ctx, &pb.CreateSecretVersionRequest{
		Version: &pb.SecretVersion{Metadata: &pb.Metadata{ParentId: id}, Spec: &pb.SecretVersionSpec{Payload: payload("k", "v")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// No waiting: the record is in the leader's state as the call returns.
	recs := recordsOf(t, leader, "create-through-follower")
	if len(recs) != 1 || recs[0].GetCode() != "OK" || !contains(recs[0].GetResourceIds(), v.GetMetadata().GetId()) || !contains(recs[0].GetResourceIds(), id) || recs[0].GetAccountId() == "" {
		t.Fatalf("records of the write: %v, want one OK record naming the secret and the new version", recs)
	}
	// A mutation the FSM refuses (stale resource_version) is recorded with
	// its code.
	ctx = metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", "stale-delete")
	_, err = pb.NewSecretServiceClient(c.Conn(leader)).Delete(ctx, &pb.DeleteSecretRequest{Id: id, ResourceVersion: 1})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("delete with a stale resource_version: %v, want ABORTED", err)
	}
	recs = recordsOf(t, leader, "stale-delete")
	if len(recs) != 1 || recs[0].GetCode() != "ABORTED" {
		t.Fatalf("records of the refused delete: %v, want one ABORTED", recs)
	}
	// Every replica holds the same chain, and it verifies.
	c.WaitConverged()
	for _, n := range c.Nodes {
		if got := recordsOf(t, n, "create-through-follower"); len(got) != 1 {
			t.Fatalf("%s has %d records of the write", n.ID, len(got))
		}
	}
	res, err := pb.NewAuditServiceClient(c.Conn(f)).Verify(ctxT(t), &pb.VerifyAuditRequest{})
	if err != nil || !res.GetOk() {
		t.Fatalf("verify: %v %v", res, err)
	}
}
