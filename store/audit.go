package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// AuditHead returns the sequence and hash of the last audit record.
func (v *View) AuditHead() (*fsmpb.AuditHead, error) {
	h := &fsmpb.AuditHead{}
	err := v.getProto(keyAuditHead, h)
	if errors.Is(err, ErrNotFound) {
		return h, nil
	}
	return h, err
}

// SetAuditHead records the chain's head.
func (b *Batch) SetAuditHead(h *fsmpb.AuditHead) error { return b.putProto(keyAuditHead, h) }

// PutAudit stores an audit record under its sequence number.
func (b *Batch) PutAudit(r *pb.AuditRecord) error {
	return b.putProto(prefixAudit+be8(r.GetSeq()), r)
}

// DeleteAudit removes an audit record.
func (b *Batch) DeleteAudit(seq uint64) error { return b.del(prefixAudit + be8(seq)) }

// ScanAudit calls fn for audit records in sequence order after afterSeq.
func (v *View) ScanAudit(afterSeq uint64, fn func(*pb.AuditRecord) (bool, error)) error {
	after := ""
	if afterSeq > 0 {
		after = be8(afterSeq)
	}
	return v.scan(prefixAudit, after, false, func(key, val []byte) (bool, error) {
		r := &pb.AuditRecord{}
		if err := proto.Unmarshal(val, r); err != nil {
			return false, fmt.Errorf("store: corrupt audit record %d: %w", binary.BigEndian.Uint64(key[len(prefixAudit):]), err)
		}
		return fn(r)
	})
}

// TamperAuditForTest overwrites a stored audit record as an attacker with
// the disk would. Tests only.
func (s *Store) TamperAuditForTest(r *pb.AuditRecord) error {
	b := s.NewBatch()
	defer b.Close()
	if err := b.PutAudit(r); err != nil {
		return err
	}
	return b.Commit()
}
