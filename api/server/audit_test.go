package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// applyAt applies cmd as if proposed at time at.
func (reg *soloRegion) applyAt(at time.Time, cmd *fsmpb.Command) {
	reg.t.Helper()
	cmd.TimeUnixNano = at.UnixNano()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		reg.t.Fatal(err)
	}
	if _, err := reg.r.Apply(context.Background(), data); err != nil {
		reg.t.Fatal(err)
	}
}

func auditChain(t *testing.T, st *store.Store) []*pb.AuditRecord {
	t.Helper()
	var out []*pb.AuditRecord
	if err := st.Read(func(v *store.View) error {
		return v.ScanAudit(0, func(r *pb.AuditRecord) (bool, error) { out = append(out, r); return true, nil })
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPruneLooksPastAnOldPruneRecord: a prune that removed everything
// before it leaves its own record first in the chain. Once that record is
// past the retention too, the records after it that are must still be
// pruned; the leader's check looked at the first record only and never
// proposed a prune again, so the log grew for good.
func TestPruneLooksPastAnOldPruneRecord(t *testing.T) {
	reg := newSoloRegion(t, fsm.CommandVersion)
	reg.s.audit = newAuditor(reg.s)
	reg.s.cfg.AuditRetention = time.Hour
	now := time.Now()
	record := func(at time.Time) *fsmpb.Command {
		return &fsmpb.Command{Op: &fsmpb.Command_AuditAppend{AuditAppend: &fsmpb.AuditAppend{Records: []*pb.AuditRecord{
			{Time: timestamppb.New(at), Method: "/mysterybox.v1.PayloadService/Get", NodeId: "node-1", Code: "OK"},
		}}}}
	}
	reg.applyAt(now.Add(-3*time.Hour), record(now.Add(-3*time.Hour)))
	// Two hours ago the leader pruned that record: its prune record is
	// now first, and older than the retention.
	reg.applyAt(now.Add(-2*time.Hour), &fsmpb.Command{Op: &fsmpb.Command_AuditPrune{AuditPrune: &fsmpb.AuditPrune{
		BeforeUnixNano: now.Add(-2*time.Hour - time.Minute).UnixNano(), Limit: 1000, NodeId: "node-1",
	}}})
	reg.applyAt(now.Add(-90*time.Minute), record(now.Add(-90*time.Minute)))
	reg.applyAt(now.Add(-time.Minute), record(now.Add(-time.Minute)))
	if chain := auditChain(t, reg.st); len(chain) != 3 || chain[0].GetMethod() != "audit.prune" {
		t.Fatalf("setup: chain %v, want the prune record first, then two", chain)
	}

	reg.s.pruneAudit(context.Background())
	chain := auditChain(t, reg.st)
	for _, r := range chain {
		if r.GetTime().AsTime().Before(now.Add(-time.Hour)) {
			t.Fatalf("record %d (%s, %s) is past the retention and was not pruned", r.GetSeq(), r.GetMethod(), r.GetTime().AsTime())
		}
	}
	if len(chain) != 2 || chain[1].GetMethod() != "audit.prune" {
		t.Fatalf("chain after the prune: %v, want the recent record and a new prune record", chain)
	}
	// A chain that is only an old prune record and recent ones is left be.
	before := len(auditChain(t, reg.st))
	reg.s.pruneAudit(context.Background())
	if n := len(auditChain(t, reg.st)); n != before {
		t.Fatalf("a prune with nothing to remove: %d records, was %d", n, before)
	}
}

// countingObserver counts what the server reports to metrics.
type countingObserver struct{ refused atomic.Int64 }

func (*countingObserver) Forwarded(string) {}
func (o *countingObserver) AuditRefused()  { o.refused.Add(1) }

// While Raft cannot commit, every call still adds an audit record: the
// queue is bounded, past it a payload read's record is refused at once
// (the read fails) and other records are dropped and counted; once Raft
// commits again the queue drains and records are taken again.
func TestAuditBacklogIsBounded(t *testing.T) {
	reg := newSoloRegion(t, 0)
	release, entered := make(chan struct{}), make(chan struct{})
	var once sync.Once
	reg.r.beforeApply = func(cmd *fsmpb.Command) {
		if cmd.GetAuditAppend() != nil {
			once.Do(func() { close(entered) })
			<-release // Raft does not commit: no quorum
		}
	}
	obs := &countingObserver{}
	reg.s.SetObserver(obs)
	a := newAuditor(reg.s)
	defer a.close()
	ctx := context.Background()
	rec := func() *pb.AuditRecord {
		return &pb.AuditRecord{Method: "/mysterybox.v1.SecretService/Delete", Code: "OK"}
	}

	if err := a.add(ctx, rec(), false); err != nil {
		t.Fatal(err)
	}
	<-entered // the first record's proposal hangs in Raft
	for i := 0; i < maxPendingAudit; i++ {
		if err := a.add(ctx, rec(), false); err != nil {
			t.Fatalf("record %d of a full queue: %v", i, err)
		}
	}
	if err := a.add(ctx, rec(), false); !errors.Is(err, errAuditBacklog) {
		t.Fatalf("a record past the bound: %v, want the backlog error", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- a.add(ctx, rec(), true) }()
	select {
	case err := <-waited:
		if !errors.Is(err, errAuditBacklog) {
			t.Fatalf("a payload read's record past the bound: %v, want the backlog error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a payload read's record past the bound waited instead of failing")
	}
	if n := obs.refused.Load(); n != 2 {
		t.Fatalf("%d refusals counted, want 2", n)
	}

	close(release)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		a.mu.Lock()
		n := len(a.pending)
		a.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records still waiting after Raft commits again", n)
		}
	}
	if err := a.add(ctx, rec(), true); err != nil {
		t.Fatalf("a payload read's record once Raft commits again: %v", err)
	}
	var records int
	if err := reg.st.Read(func(v *store.View) error {
		return v.ScanAudit(0, func(*pb.AuditRecord) (bool, error) { records++; return true, nil })
	}); err != nil {
		t.Fatal(err)
	}
	if want := maxPendingAudit + 2; records < want {
		t.Fatalf("%d records in the log, want at least the %d accepted", records, want)
	}
}
