package fsm_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

func (h *harness) audit() []*pb.AuditRecord {
	h.t.Helper()
	var out []*pb.AuditRecord
	h.read(func(v *store.View) error {
		return v.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) {
			out = append(out, r)
			return true, nil
		})
	})
	return out
}

func withAudit(cmd *fsmpb.Command, method string, ids ...string) *fsmpb.Command {
	cmd.Audit = &pb.AuditRecord{Method: method, AccountId: "useraccount-1", NodeId: "node1", RequestId: "req-" + method, ResourceIds: ids}
	return cmd
}

// TestCommandCarriesItsAuditRecord: a command's audit record is chained in
// the same batch with the outcome — OK and the ids of what it created, or
// the error's code — and an idempotent replay is recorded as a call too.
func TestCommandCarriesItsAuditRecord(t *testing.T) {
	h := newHarness(t)
	h.ok(withAudit(cmdCreateProject("project-1", "p"), "CreateProject"))
	h.ok(withAudit(cmdCreateSecret("mbsec-1", "project-1", "db", newVersion("mbsecver-1", "mbsec-1", true)), "CreateSecret", "project-1"))
	// A command that fails in the FSM: its record says how.
	h.fail(withAudit(cmdDeleteSecret("mbsec-1", 99, 0), "DeleteSecret", "mbsec-1"), fsm.ErrConflict)
	h.fail(withAudit(cmdCreateVersion("mbsecver-2", "mbsec-missing", true), "CreateVersion", "mbsec-missing"), store.ErrNotFound)
	// A retry with the same idempotency key: the call happened, so it is
	// recorded, with the replayed outcome.
	h.ok(withKey(withAudit(cmdCreateVersion("mbsecver-3", "mbsec-1", true), "CreateVersion", "mbsec-1"), "key-1", "r"))
	h.ok(withKey(withAudit(cmdCreateVersion("mbsecver-4", "mbsec-1", true), "CreateVersion", "mbsec-1"), "key-1", "r"))
	// Commands without a record add none.
	h.ok(cmdCreateVersion("mbsecver-5", "mbsec-1", true))

	recs := h.audit()
	want := []struct {
		method, code string
		ids          []string
	}{
		{"CreateProject", "OK", []string{"project-1"}},
		{"CreateSecret", "OK", []string{"mbsec-1", "mbsecver-1", "project-1"}},
		{"DeleteSecret", "ABORTED", []string{"mbsec-1"}},
		{"CreateVersion", "NOT_FOUND", []string{"mbsec-missing"}},
		{"CreateVersion", "OK", []string{"mbsec-1", "mbsecver-3"}},
		{"CreateVersion", "OK", []string{"mbsec-1", "mbsecver-3"}},
	}
	if len(recs) != len(want) {
		for _, r := range recs {
			t.Logf("record %v", r)
		}
		t.Fatalf("%d audit records, want %d", len(recs), len(want))
	}
	for i, w := range want {
		r := recs[i]
		for _, id := range w.ids {
			if !slices.Contains(r.GetResourceIds(), id) {
				t.Errorf("record %d (%s) ids %v lack %s", i, w.method, r.GetResourceIds(), id)
			}
		}
		if r.GetMethod() != w.method || r.GetCode() != w.code || r.GetSeq() != uint64(i+1) || r.GetAccountId() != "useraccount-1" {
			t.Errorf("record %d = %v, want %s %s seq %d", i, r, w.method, w.code, i+1)
		}
		if r.GetHash() != fsm.AuditHash(r) || (i > 0 && r.GetPrevHash() != recs[i-1].GetHash()) {
			t.Errorf("record %d is not chained: %v", i, r)
		}
		if !slices.IsSorted(r.GetResourceIds()) {
			t.Errorf("record %d ids not sorted: %v", i, r.GetResourceIds())
		}
	}
	// The record is part of the replicated state: a second replica that
	// applies the same entries ends identical.
	h2 := newHarness(t)
	h2.ok(withAudit(cmdCreateProject("project-1", "p"), "CreateProject"))
	if got := h2.audit()[0].GetHash(); got != recs[0].GetHash() {
		t.Fatalf("the same command chained different records: %s vs %s", got, recs[0].GetHash())
	}
}

// TestHashKeyMismatchRecordsNothing: a command answered with
// HashKeyMismatch applied nothing, so its record is not chained either
// (the leader proposes it again, record included).
func TestHashKeyMismatchRecordsNothing(t *testing.T) {
	h := newHarness(t)
	h.ok(cmdCreateProject("project-1", "p"))
	h.ok(cmdCreateSecret("mbsec-1", "project-1", "db", newVersion("mbsecver-1", "mbsec-1", true)))
	first := withKey(cmdCreateVersion("mbsecver-2", "mbsec-1", true), "key-1", "r")
	first.RequestHashKeyId = "kek-old"
	h.ok(first)
	retry := withAudit(withKey(cmdCreateVersion("mbsecver-3", "mbsec-1", true), "key-1", "r"), "CreateVersion", "mbsec-1")
	retry.RequestHashKeyId = "kek-new"
	res := h.apply(retry)
	var mismatch *fsm.HashKeyMismatch
	if !errors.As(res.Err, &mismatch) {
		t.Fatalf("retry under a rotated key: %v, want HashKeyMismatch", res.Err)
	}
	if recs := h.audit(); len(recs) != 0 {
		t.Fatalf("a command that applied nothing chained %d records: %v", len(recs), recs)
	}
}

// TestAuditFieldIsNotACommandType: a record in a command never makes the
// command require a newer version (the leader would refuse the write);
// the leader gates the field itself, and this build applies it.
func TestAuditFieldIsNotACommandType(t *testing.T) {
	cmd := cmdCreateProject("project-1", "p")
	if got := fsm.RequiredVersion(withAudit(cmd, "CreateProject")); got != 1 {
		t.Fatalf("a plain command with a record needs version %d, want 1", got)
	}
	if fsm.AuditInCommandVersion > fsm.CommandVersion {
		t.Fatalf("records in commands need version %d; this build applies %d", fsm.AuditInCommandVersion, fsm.CommandVersion)
	}
}

// TestAuditChainAcrossOneBatch: records chained by several commands of one
// Raft batch (in-command records, an AuditAppend between them) link one
// after another, and the stored head is the last of them.
func TestAuditChainAcrossOneBatch(t *testing.T) {
	h := newHarness(t)
	h.ok(withAudit(cmdCreateProject("project-1", "p"), "CreateProject"))
	logs := []*raft.Log{
		h.log(withAudit(cmdCreateSecret("mbsec-1", "project-1", "db", newVersion("mbsecver-1", "mbsec-1", true)), "CreateSecret")),
		h.log(&fsmpb.Command{Op: &fsmpb.Command_AuditAppend{AuditAppend: &fsmpb.AuditAppend{Records: []*pb.AuditRecord{{Method: "GetByKey", Code: "OK"}, {Method: "Get", Code: "OK"}}}}}),
		h.log(withAudit(cmdCreateVersion("mbsecver-2", "mbsec-1", true), "CreateVersion")),
		h.log(cmdCreateVersion("mbsecver-3", "mbsec-1", true)),
	}
	for i, r := range h.f.ApplyBatch(logs) {
		if res := asResult(t, r); res.Err != nil {
			t.Fatalf("entry %d: %v", i, res.Err)
		}
	}
	recs := h.audit()
	methods := []string{"CreateProject", "CreateSecret", "GetByKey", "Get", "CreateVersion"}
	if len(recs) != len(methods) {
		t.Fatalf("%d records, want %d: %v", len(recs), len(methods), recs)
	}
	for i, r := range recs {
		if r.GetMethod() != methods[i] || r.GetSeq() != uint64(i+1) || r.GetHash() != fsm.AuditHash(r) || (i > 0 && r.GetPrevHash() != recs[i-1].GetHash()) {
			t.Fatalf("record %d = %v: not the chain link it should be", i, r)
		}
	}
	h.read(func(v *store.View) error {
		head, err := v.AuditHead()
		if err != nil {
			return err
		}
		if last := recs[len(recs)-1]; head.GetSeq() != last.GetSeq() || head.GetHash() != last.GetHash() {
			t.Fatalf("head %v, want the last record %d", head, last.GetSeq())
		}
		return nil
	})
	// The next batch continues from that head.
	h.ok(withAudit(cmdCreateVersion("mbsecver-4", "mbsec-1", true), "CreateVersion"))
	if recs := h.audit(); recs[len(recs)-1].GetSeq() != 6 || recs[len(recs)-1].GetPrevHash() != recs[len(recs)-2].GetHash() {
		t.Fatalf("the next batch did not continue the chain: %v", recs[len(recs)-1])
	}
}
