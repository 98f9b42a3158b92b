package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// callInfo is filled in while a call runs: who made it (once authorized),
// whether this node only forwarded it (then the leader audits it), and
// whether its record went into the Raft command it proposed.
type callInfo struct {
	method    string
	requestID string // the same in every record of the call
	// leadership, when set by query, delivers the result of the leadership
	// check of a linearizable payload read, made after the read and
	// overlapping its audit record's commit; the call answers only once
	// both succeeded. Set and read on the call's goroutine.
	leadership chan error
	mu         sync.Mutex
	accountID  string
	forwarded  bool
	recorded   bool
}

type callInfoKey struct{}

func infoFrom(ctx context.Context) *callInfo {
	ci, _ := ctx.Value(callInfoKey{}).(*callInfo)
	return ci
}

func noteAccount(ctx context.Context, id string) {
	if ci := infoFrom(ctx); ci != nil {
		ci.mu.Lock()
		ci.accountID = id
		ci.mu.Unlock()
	}
}

func noteForwarded(ctx context.Context) {
	if ci := infoFrom(ctx); ci != nil {
		ci.mu.Lock()
		ci.forwarded = true
		ci.mu.Unlock()
	}
}

// audited reports whether a method is audited: every mutation and every
// payload read; plain metadata reads, health and cluster status are not.
func audited(method string) bool {
	if exempt(method) || strings.HasPrefix(method, "/mysterybox.v1.AuditService/") {
		return false
	}
	if strings.HasPrefix(method, "/mysterybox.v1.PayloadService/") {
		return true
	}
	name := method[strings.LastIndex(method, "/")+1:]
	for _, p := range []string{"Get", "List", "Status", "Members", "Regions", "Snapshot"} {
		if strings.HasPrefix(name, p) {
			return false
		}
	}
	return true
}

func isPayloadRead(method string) bool {
	return strings.HasPrefix(method, "/mysterybox.v1.PayloadService/")
}

// auditor batches audit records into Raft commands: on the leader it
// proposes them; on a follower (records of calls it served from its own
// state) it ships them to the leader, which proposes them (ship.go).
type auditor struct {
	s       *Server
	mu      sync.Mutex
	pending []pendingRecord
	dropped int       // records refused since the last log of it
	warned  time.Time // when that was logged
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

type pendingRecord struct {
	rec  *pb.AuditRecord
	done chan error // nil: nobody waits
}

const auditBatch = 256

// maxPendingAudit bounds the records waiting for Raft (a few hundred bytes
// each): while Raft cannot commit (no quorum), every call still adds one,
// and a node under a flood of calls would otherwise grow until it is
// killed, losing them all. Past it a payload read is refused, as any read
// whose record cannot be written, and the record of any other call is
// dropped, counted and logged.
const maxPendingAudit = 1 << 16

// errAuditBacklog: the record was refused, the queue being full.
var errAuditBacklog = fmt.Errorf("%d audit records are waiting for Raft, the most a node queues", maxPendingAudit)

func newAuditor(s *Server) *auditor {
	a := &auditor{s: s, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go a.loop()
	return a
}

func (a *auditor) close() {
	close(a.stop)
	<-a.done
}

// add queues a record; with wait it returns once the record is committed.
func (a *auditor) add(ctx context.Context, rec *pb.AuditRecord, wait bool) error {
	p := pendingRecord{rec: rec}
	if wait {
		p.done = make(chan error, 1)
	}
	a.mu.Lock()
	if waiting := len(a.pending); waiting >= maxPendingAudit {
		a.dropped++
		refused, warn := a.dropped, time.Since(a.warned) > 10*time.Second
		if warn {
			a.dropped, a.warned = 0, time.Now()
		}
		a.mu.Unlock()
		if warn {
			a.s.logger.Error("audit records refused: Raft is not keeping up; payload reads fail until it does (or go unrecorded, fail-open), other calls go unrecorded", "refused", refused, "waiting", waiting)
		}
		if a.s.obs != nil {
			a.s.obs.AuditRefused()
		}
		return errAuditBacklog
	}
	a.pending = append(a.pending, p)
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
	if !wait {
		return nil
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop proposes what is pending, one command per batch; records queued
// while a proposal is in flight form the next batch.
func (a *auditor) loop() {
	defer close(a.done)
	for {
		select {
		case <-a.stop:
			a.fail(errors.New("node stopping"))
			return
		case <-a.kick:
		}
		for {
			a.mu.Lock()
			n := min(len(a.pending), auditBatch)
			batch := append([]pendingRecord(nil), a.pending[:n]...)
			a.pending = a.pending[n:]
			a.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			op := &fsmpb.AuditAppend{}
			for _, p := range batch {
				op.Records = append(op.Records, p.rec)
			}
			var err error
			if a.s.raft.AcceptsWrites() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = a.s.propose(ctx, nil, &fsmpb.Command{Op: &fsmpb.Command_AuditAppend{AuditAppend: op}}, grant{})
				cancel()
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), shipTimeout)
				err = a.s.shipAudit(ctx, op.Records)
				cancel()
			}
			if err != nil {
				a.s.logger.Error("audit records could not be written", "records", len(batch), "error", err)
			}
			for _, p := range batch {
				if p.done != nil {
					p.done <- err
				}
			}
		}
	}
}

func (a *auditor) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.pending {
		if p.done != nil {
			p.done <- err
		}
	}
	a.pending = nil
}

// AuditInterceptor records audited calls served by this node (not those
// it only forwarded: the leader records them); a follower ships its
// records to the leader. A payload read whose record cannot be written
// fails when audit is fail-closed; a linearizable one also fails when the
// leadership check made after it (callInfo.leadership) fails.
func (s *Server) AuditInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.audit == nil || !audited(info.FullMethod) {
		return handler(ctx, req)
	}
	ci := &callInfo{method: info.FullMethod, requestID: requestID(ctx)}
	ctx = context.WithValue(ctx, callInfoKey{}, ci)
	resp, err := handler(ctx, req)
	resp, err = s.recordCall(ctx, ci, req, resp, err)
	if ci.leadership != nil {
		if lerr := <-ci.leadership; lerr != nil {
			return nil, toStatus(lerr)
		}
	}
	return resp, err
}

// recordCall writes the audit record of a call this node served, waiting
// for it when the call read a payload.
func (s *Server) recordCall(ctx context.Context, ci *callInfo, req, resp any, err error) (any, error) {
	ci.mu.Lock()
	forwarded, account, recorded := ci.forwarded, ci.accountID, ci.recorded
	ci.mu.Unlock()
	wait := isPayloadRead(ci.method) && err == nil
	if forwarded || recorded {
		return resp, err
	}
	if !wait && !s.raft.AcceptsWrites() && !s.versions.supports(fsm.ShippedAuditVersion) {
		// A call a follower refused before forwarding, in a region where
		// the leader may not take shipped records: not recorded, as before.
		// A payload this node served is never returned unrecorded: it is
		// shipped whatever the versions, and fails if the leader refuses.
		return resp, err
	}
	rec := &pb.AuditRecord{
		Time:        timestamppb.Now(),
		AccountId:   account,
		Method:      ci.method,
		ResourceIds: fsm.AuditResourceIDs(nil, req, resp),
		Code:        codeName(status.Code(err)),
		NodeId:      s.cfg.NodeID,
		RequestId:   ci.requestID,
	}
	if aerr := s.audit.add(ctx, rec, wait); aerr != nil && wait {
		if s.cfg.AuditFailOpen {
			if !errors.Is(aerr, errAuditBacklog) { // that one is logged every 10 s, not per read
				s.logger.Error("payload read served without an audit record (audit is fail-open)", "method", ci.method, "error", aerr)
			}
			return resp, err
		}
		return nil, status.Errorf(codes.Unavailable, "the audit record of this payload read could not be written (%v); retry", aerr)
	}
	return resp, err
}

// AuditStreamInterceptor records audited streaming calls (Restore) like
// AuditInterceptor does unary ones; they are never payload reads.
func (s *Server) AuditStreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.audit == nil || !audited(info.FullMethod) {
		return handler(srv, ss)
	}
	ci := &callInfo{method: info.FullMethod, requestID: requestID(ss.Context())}
	ctx := context.WithValue(ss.Context(), callInfoKey{}, ci)
	err := handler(srv, &authedStream{ServerStream: ss, ctx: ctx})
	ci.mu.Lock()
	forwarded, account, recorded := ci.forwarded, ci.accountID, ci.recorded
	ci.mu.Unlock()
	if forwarded || recorded || !s.raft.AcceptsWrites() {
		return err
	}
	_ = s.audit.add(ctx, &pb.AuditRecord{
		Time: timestamppb.Now(), AccountId: account, Method: info.FullMethod, Code: codeName(status.Code(err)),
		NodeId: s.cfg.NodeID, RequestId: ci.requestID, ResourceIds: []string{s.cfg.Region},
	}, false)
	return err
}

// callRecord returns the audit record to carry in the command an audited
// call is about to propose (nil when the call is not audited, was already
// recorded, or some node cannot apply such a command yet). The FSM
// completes it with the outcome; markRecorded then stops the interceptor
// from writing a second one.
func (s *Server) callRecord(ctx context.Context, req proto.Message) *pb.AuditRecord {
	ci := infoFrom(ctx)
	if s.audit == nil || req == nil || ci == nil || !s.versions.supports(fsm.AuditInCommandVersion) {
		return nil
	}
	ci.mu.Lock()
	defer ci.mu.Unlock()
	if ci.recorded || ci.forwarded {
		return nil
	}
	return &pb.AuditRecord{
		Time:        timestamppb.Now(),
		AccountId:   ci.accountID,
		Method:      ci.method,
		ResourceIds: fsm.AuditResourceIDs(nil, req),
		NodeId:      s.cfg.NodeID,
		RequestId:   ci.requestID,
	}
}

func markRecorded(ctx context.Context) {
	if ci := infoFrom(ctx); ci != nil {
		ci.mu.Lock()
		ci.recorded = true
		ci.mu.Unlock()
	}
}

// codeName is a status code in the SPEC's upper snake case.
func codeName(c codes.Code) string {
	var b strings.Builder
	prevLower := false
	for _, r := range c.String() {
		upper := r >= 'A' && r <= 'Z'
		if upper && prevLower {
			b.WriteByte('_')
		}
		prevLower = !upper
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func requestID(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, mdRequestID); len(v) > 0 && len(v[0]) <= 128 {
		return v[0]
	}
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// pruneAudit proposes removing records older than the retention.
func (s *Server) pruneAudit(ctx context.Context) {
	if s.audit == nil || s.cfg.AuditRetention <= 0 {
		return
	}
	cutoff := time.Now().Add(-s.cfg.AuditRetention).UnixNano()
	due := false
	_ = s.store.Read(func(v *store.View) error {
		return v.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) {
			if r.GetTime().AsTime().UnixNano() >= cutoff {
				return false, nil // nothing older
			}
			// An old prune record alone is not worth a prune (which would
			// only chain another), but it must not hide the old records
			// after it: a prune leaves its record first in the chain
			// whenever it removed everything before it.
			due = r.GetMethod() != "audit.prune"
			return !due, nil
		})
	})
	if due {
		s.proposeMaintenance(ctx, &fsmpb.Command{Op: &fsmpb.Command_AuditPrune{AuditPrune: &fsmpb.AuditPrune{BeforeUnixNano: cutoff, Limit: 1000, NodeId: s.cfg.NodeID}}})
	}
}

type auditService struct {
	pb.UnimplementedAuditServiceServer
	s *Server
}

func (x *auditService) List(ctx context.Context, req *pb.ListAuditRequest) (*pb.ListAuditResponse, error) {
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "audit")
	if err != nil {
		return nil, err
	}
	var after uint64
	if pg.after != "" {
		if len(pg.after) != 8 {
			return nil, invalid("page_token", "is not a token from a previous page")
		}
		after = beUint64(pg.after)
	}
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.ListAuditResponse, error) {
		out := &pb.ListAuditResponse{}
		err := v.ScanAudit(after, func(r *pb.AuditRecord) (bool, error) {
			if req.GetSince() != nil && r.GetTime().AsTime().Before(req.GetSince().AsTime()) {
				return true, nil
			}
			if req.GetAccountId() != "" && r.GetAccountId() != req.GetAccountId() {
				return true, nil
			}
			if req.GetResourceId() != "" && !contains(r.GetResourceIds(), req.GetResourceId()) {
				return true, nil
			}
			if len(out.Records) == pg.size {
				out.NextPageToken = pg.next(be8(out.Records[len(out.Records)-1].GetSeq()))
				return false, nil
			}
			out.Records = append(out.Records, r)
			return true, nil
		})
		return out, err
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Verify walks the chain: every record's hash, every link, no gap.
func (x *auditService) Verify(ctx context.Context, req *pb.VerifyAuditRequest) (*pb.VerifyAuditResponse, error) {
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.VerifyAuditResponse, error) {
		out := &pb.VerifyAuditResponse{Ok: true}
		var prev *pb.AuditRecord
		err := v.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) {
			out.Checked++
			msg := ""
			switch {
			case fsm.AuditHash(r) != r.GetHash():
				msg = fmt.Sprintf("record %d was altered: its content does not match its hash", r.GetSeq())
			case prev != nil && r.GetSeq() != prev.GetSeq()+1:
				msg = fmt.Sprintf("records %d-%d are missing", prev.GetSeq()+1, r.GetSeq()-1)
			case prev != nil && r.GetPrevHash() != prev.GetHash():
				msg = fmt.Sprintf("record %d does not link to record %d", r.GetSeq(), prev.GetSeq())
			}
			if msg != "" {
				out.Ok, out.FirstBreakSeq, out.Message = false, r.GetSeq(), msg
				return false, nil
			}
			prev = r
			return true, nil
		})
		if err != nil {
			return nil, err
		}
		if out.Ok {
			head, err := v.AuditHead()
			if err != nil {
				return nil, err
			}
			if prev != nil && (prev.GetSeq() != head.GetSeq() || prev.GetHash() != head.GetHash()) {
				out.Ok, out.FirstBreakSeq = false, prev.GetSeq()+1
				out.Message = fmt.Sprintf("the chain ends at record %d but the head says %d: records were removed from its end", prev.GetSeq(), head.GetSeq())
			} else {
				out.Message = fmt.Sprintf("%d records verified", out.Checked)
			}
		}
		return out, nil
	})
}
