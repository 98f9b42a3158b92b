package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// AuditHash is the hash of a record: SHA-256 of its deterministic encoding
// with the hash field empty (prev_hash included, which chains it).
func AuditHash(r *pb.AuditRecord) string {
	c := proto.Clone(r).(*pb.AuditRecord)
	return hashUnhashed(c)
}

// hashUnhashed is AuditHash of a record the caller owns: it clears Hash
// in place instead of cloning (the FSM hashes every record it applies).
func hashUnhashed(r *pb.AuditRecord) string {
	r.Hash = ""
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("fsm: marshal audit record: %v", err))
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// chainAudit links r, which the applier owns (decoded from this entry or
// made here), to the head of the chain and stores it.
func (a *applier) chainAudit(head *fsmpb.AuditHead, r *pb.AuditRecord) error {
	r.Seq = head.GetSeq() + 1
	r.PrevHash = head.GetHash()
	r.Hash = hashUnhashed(r)
	if err := a.b.PutAudit(r); err != nil {
		return err
	}
	head.Seq, head.Hash = r.GetSeq(), r.GetHash()
	return nil
}

func (a *applier) auditAppend(op *fsmpb.AuditAppend) error {
	head, err := a.b.AuditHead()
	if err != nil {
		return err
	}
	for _, r := range op.GetRecords() { // decoded from this entry: ours to fill in
		if err := a.chainAudit(head, r); err != nil {
			return err
		}
	}
	return a.b.SetAuditHead(head)
}

// auditPrune removes records older than the cutoff and chains a record of
// the pruning, so that a gap in the log is explained by the log itself.
func (a *applier) auditPrune(op *fsmpb.AuditPrune) error {
	var old []uint64
	err := a.b.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) {
		if r.GetTime().AsTime().UnixNano() >= op.GetBeforeUnixNano() || len(old) >= int(op.GetLimit()) {
			return false, nil
		}
		old = append(old, r.GetSeq())
		return true, nil
	})
	if err != nil || len(old) == 0 {
		return err
	}
	for _, seq := range old {
		if err := a.b.DeleteAudit(seq); err != nil {
			return err
		}
	}
	head, err := a.b.AuditHead()
	if err != nil {
		return err
	}
	rec := &pb.AuditRecord{
		Time:        a.ts(),
		Method:      "audit.prune",
		Code:        "OK",
		NodeId:      op.GetNodeId(),
		ResourceIds: []string{fmt.Sprintf("removed records %d-%d, older than %s", old[0], old[len(old)-1], time.Unix(0, op.GetBeforeUnixNano()).UTC().Format(time.RFC3339))},
	}
	if err := a.chainAudit(head, rec); err != nil {
		return err
	}
	return a.b.SetAuditHead(head)
}
