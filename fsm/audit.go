package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
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

// auditHead is the chain's head during one Raft batch: its commands chain
// records one after another (with audit records in mutation commands, most
// commands do), and reading the head back from the indexed batch each time
// would cost a merged Pebble lookup per command. It is read once, when
// first needed, and written once, with the batch.
type auditHead struct {
	head  *fsmpb.AuditHead
	dirty bool
}

func (h *auditHead) get(b *store.Batch) (*fsmpb.AuditHead, error) {
	if h.head == nil {
		head, err := b.AuditHead()
		if err != nil {
			return nil, err
		}
		h.head = head
	}
	return h.head, nil
}

func (h *auditHead) flush(b *store.Batch) error {
	if !h.dirty {
		return nil
	}
	h.dirty = false
	return b.SetAuditHead(h.head)
}

// chainAudit links r, which the applier owns (decoded from this entry or
// made here), to the head of the chain and stores it.
func (a *applier) chainAudit(r *pb.AuditRecord) error {
	head, err := a.head.get(a.b)
	if err != nil {
		return err
	}
	r.Seq = head.GetSeq() + 1
	r.PrevHash = head.GetHash()
	r.Hash = hashUnhashed(r)
	if err := a.b.PutAudit(r); err != nil {
		return err
	}
	head.Seq, head.Hash = r.GetSeq(), r.GetHash()
	a.head.dirty = true
	return nil
}

// auditCall completes the audit record a command carried (nil: none) with
// the command's outcome and chains it. A HashKeyMismatch applied nothing:
// the leader proposes the command again, record included.
func (a *applier) auditCall(r *pb.AuditRecord, res *Result) {
	if r == nil {
		return
	}
	var mismatch *HashKeyMismatch
	if errors.As(res.Err, &mismatch) {
		return
	}
	r.Code = AuditCode(res.Err)
	if res.Response != nil {
		r.ResourceIds = AuditResourceIDs(r.GetResourceIds(), res.Response)
	}
	if err := a.chainAudit(r); err != nil {
		panic(fmt.Sprintf("fsm: chain the audit record of a command: %v", err))
	}
}

// AuditCode is the status code, in the SPEC's upper snake case, that the
// API returns for a command's result (the same mapping as api/server's
// error table, for the errors a command can end with).
func AuditCode(err error) string {
	if err == nil {
		return "OK"
	}
	return strings.ToUpper(errorKind(err))
}

// AuditResourceIDs adds to ids the ids a message names: string fields
// called id or *_id, in nested messages too (never in a payload), and
// returns the set sorted.
func AuditResourceIDs(ids []string, msgs ...any) []string {
	seen := make(map[string]bool, len(ids)+4)
	out := ids[:0:0]
	add := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	for _, id := range ids {
		add(id)
	}
	var walk func(m protoreflect.Message, depth int)
	walk = func(m protoreflect.Message, depth int) {
		if depth > 4 {
			return
		}
		p := idFieldsOf(m.Descriptor())
		for _, fd := range p.ids {
			if m.Has(fd) {
				add(m.Get(fd).String())
			}
		}
		for _, fd := range p.messages {
			if m.Has(fd) {
				walk(m.Get(fd).Message(), depth+1)
			}
		}
	}
	for _, x := range msgs {
		if m, ok := x.(proto.Message); ok && m != nil && m.ProtoReflect().IsValid() {
			walk(m.ProtoReflect(), 0)
		}
	}
	sort.Strings(out)
	return out
}

// idFields are the fields of a message type AuditResourceIDs looks at:
// singular string fields called id or *_id, and singular message fields
// other than payload. Worked out once per type: ranging over every field
// of every response by reflection was 3 % of a payload read's CPU.
type idFields struct {
	ids, messages []protoreflect.FieldDescriptor
}

var idFieldsByType sync.Map // protoreflect.FullName -> *idFields

func idFieldsOf(md protoreflect.MessageDescriptor) *idFields {
	if p, ok := idFieldsByType.Load(md.FullName()); ok {
		return p.(*idFields)
	}
	p := &idFields{}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.IsList() || fd.IsMap() {
			continue
		}
		name := string(fd.Name())
		switch {
		case fd.Kind() == protoreflect.StringKind && (name == "id" || strings.HasSuffix(name, "_id")):
			p.ids = append(p.ids, fd)
		case fd.Kind() == protoreflect.MessageKind && name != "payload":
			p.messages = append(p.messages, fd)
		}
	}
	idFieldsByType.Store(md.FullName(), p)
	return p
}

func (a *applier) auditAppend(op *fsmpb.AuditAppend) error {
	for _, r := range op.GetRecords() { // decoded from this entry: ours to fill in
		if err := a.chainAudit(r); err != nil {
			return err
		}
	}
	return nil
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
	rec := &pb.AuditRecord{
		Time:        a.ts(),
		Method:      "audit.prune",
		Code:        "OK",
		NodeId:      op.GetNodeId(),
		ResourceIds: []string{fmt.Sprintf("removed records %d-%d, older than %s", old[0], old[len(old)-1], time.Unix(0, op.GetBeforeUnixNano()).UTC().Format(time.RFC3339))},
	}
	return a.chainAudit(rec)
}
