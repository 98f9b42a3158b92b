package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// listFSM records the data of every entry it applies, in order.
type listFSM struct {
	mu      sync.Mutex
	applied []string
	index   uint64
}

func (f *listFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	f.index = l.Index
	return nil
}

func (f *listFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return listSnapshot(append([]string(nil), f.applied...)), nil
}

func (f *listFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var applied []string
	if err := json.NewDecoder(rc).Decode(&applied); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = applied
	return nil
}

func (f *listFSM) state() ([]string, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.applied...), f.index
}

type listSnapshot []string

func (s listSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (listSnapshot) Release() {}

func entryData(i uint64) string { return fmt.Sprintf("entry %d", i) }

func entries(from, to uint64) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte(entryData(i))})
	}
	return logs
}

func entryList(from, to uint64) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, entryData(i))
	}
	return out
}

// drivenFollower is a real hashicorp/raft node on the production log store
// stack (raft-wal, the log cache, gapLog), fed Raft RPCs by the test acting
// as its leader over an in-memory transport.
type drivenFollower struct {
	t      *testing.T
	term   uint64 // the driving leader's term (1 unless a test changes it)
	hold   *logHold
	fsm    *listFSM
	raft   *raft.Raft
	leader *raft.InmemTransport
	addr   raft.ServerAddress
	config raft.Configuration
}

func newDrivenFollower(t *testing.T) *drivenFollower {
	t.Helper()
	store, err := openStore(t.TempDir(), LogStoreWAL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cache, err := raft.NewLogCache(logCacheEntries, store)
	if err != nil {
		t.Fatal(err)
	}
	addr, trans := raft.NewInmemTransport("follower")
	_, leader := raft.NewInmemTransport("leader")
	leader.Connect(addr, trans)
	trans.Connect("leader", leader)

	conf := raft.DefaultConfig()
	conf.LocalID = "follower"
	conf.HeartbeatTimeout = time.Hour // the test is the leader: no election
	conf.ElectionTimeout = time.Hour
	conf.LeaderLeaseTimeout = time.Hour
	conf.TrailingLogs = 10
	conf.SnapshotInterval = time.Hour
	conf.Logger = hclog.NewNullLogger()
	fsm := &listFSM{}
	hold := newLogHold(hclog.NewNullLogger())
	r, err := raft.NewRaft(conf, fsm, gapLog{LogStore: cache, hold: hold}, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown().Error() })
	return &drivenFollower{t: t, term: 1, hold: hold, fsm: fsm, raft: r, leader: leader, addr: addr,
		config: raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: "leader", Address: "leader"},
			{Suffrage: raft.Voter, ID: "follower", Address: addr},
		}}}
}

// appendEntries sends logs after prev (an entry of term 1).
func (d *drivenFollower) appendEntries(prev uint64, logs []*raft.Log, commit uint64) {
	d.t.Helper()
	req := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("leader"), Addr: []byte("leader")},
		Term: d.term, PrevLogEntry: prev, PrevLogTerm: 1, Entries: logs, LeaderCommitIndex: commit}
	if prev == 0 {
		req.PrevLogTerm = 0
	}
	var resp raft.AppendEntriesResponse
	if err := d.leader.AppendEntries("follower", d.addr, req, &resp); err != nil {
		d.t.Fatalf("AppendEntries after %d: %v", prev, err)
	}
	if !resp.Success {
		d.t.Fatalf("AppendEntries after %d refused (follower's last log %d)", prev, resp.LastLog)
	}
}

// installSnapshot sends the state of entries 1..index as a snapshot.
func (d *drivenFollower) installSnapshot(index uint64) {
	d.t.Helper()
	var data bytes.Buffer
	if err := json.NewEncoder(&data).Encode(entryList(1, index)); err != nil {
		d.t.Fatal(err)
	}
	req := &raft.InstallSnapshotRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("leader"), Addr: []byte("leader")},
		SnapshotVersion: raft.SnapshotVersionMax, Term: d.term, Leader: []byte("leader"), LastLogIndex: index, LastLogTerm: 1,
		Size: int64(data.Len()), Configuration: raft.EncodeConfiguration(d.config), ConfigurationIndex: 1}
	var resp raft.InstallSnapshotResponse
	if err := d.leader.InstallSnapshot("follower", d.addr, req, &resp, &data); err != nil {
		d.t.Fatalf("InstallSnapshot at %d: %v", index, err)
	}
	if !resp.Success {
		d.t.Fatalf("InstallSnapshot at %d refused", index)
	}
}

// waitApplied waits for the FSM to reach index and checks that it holds
// entries 1..index, each once and in order.
func (d *drivenFollower) waitApplied(index uint64) { d.waitHolds(index, entryList(1, index)) }

// waitHolds waits for the FSM to reach index and checks it holds want.
func (d *drivenFollower) waitHolds(index uint64, want []string) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, at := d.fsm.state()
		if at >= index {
			if len(got) != len(want) {
				d.t.Fatalf("FSM holds %d entries at index %d, want %d", len(got), at, len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					d.t.Fatalf("FSM entry %d is %q, want %q", i+1, got[i], want[i])
				}
			}
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("FSM at index %d after 10 s, want %d", at, index)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A follower whose log runs ahead of the snapshot it is sent keeps the
// entries past the snapshot and applies them. With raft-wal presented as a
// monotonic store, hashicorp/raft v1.7.2 empties the log here and panics
// on "log not found" (hashicorp/raft#697), killing the test binary. The
// leader's next append starts right after the snapshot, naming the
// snapshot's index as its previous entry, which the follower must still
// have (presented as a store that allows gaps, without gapLog keeping it,
// the follower refuses that append, and would be sent the snapshot again).
func TestFollowerAheadOfAnInstalledSnapshotKeepsItsLog(t *testing.T) {
	d := newDrivenFollower(t)
	d.appendEntries(0, entries(1, 100), 50)
	d.waitApplied(50)
	d.installSnapshot(80)
	d.appendEntries(80, entries(81, 110), 110)
	d.waitApplied(110)
	if last := d.raft.LastIndex(); last != 110 {
		t.Fatalf("last index %d, want 110", last)
	}
}

// A follower far behind the snapshot it is sent continues right after it:
// the append that follows would leave a gap in raft-wal, so gapLog clears
// the entries the snapshot covers first.
func TestFollowerBehindAnInstalledSnapshotContinuesAfterIt(t *testing.T) {
	d := newDrivenFollower(t)
	d.appendEntries(0, entries(1, 20), 20)
	d.waitApplied(20)
	d.installSnapshot(80)
	d.appendEntries(80, entries(81, 90), 90)
	d.waitApplied(90)
}

// A follower with entries from an old leader past the snapshot it is sent
// by a new one drops them when the new leader's entries conflict, even
// while its log is held for the snapshot it just restored: a held
// compaction must never keep a conflicting suffix.
func TestFollowerDropsConflictingEntriesAfterAnInstalledSnapshot(t *testing.T) {
	d := newDrivenFollower(t)
	d.appendEntries(0, entries(1, 100), 50) // 51..100 never committed
	d.waitApplied(50)
	d.term = 2
	d.installSnapshot(80)
	release, _ := d.hold.start(80) // as cluster's snapshot store does on Open
	defer release()
	var newer []*raft.Log
	want := entryList(1, 80)
	for i := uint64(81); i <= 90; i++ {
		data := entryData(i) + " of term 2"
		newer = append(newer, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte(data)})
		want = append(want, data)
	}
	d.appendEntries(80, newer, 90)
	d.waitHolds(90, want)
	if last := d.raft.LastIndex(); last != 90 {
		t.Fatalf("last index %d, want 90 (the old leader's 91..100 dropped)", last)
	}
}

func TestGapLogClearsTheLogBeforeAnAppendPastIt(t *testing.T) {
	store, err := openStore(t.TempDir(), LogStoreWAL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	g := gapLog{LogStore: store}
	if g.IsMonotonic() {
		t.Fatal("gapLog reports a monotonic store")
	}
	if err := g.StoreLogs(entries(1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := g.StoreLog(entries(11, 11)[0]); err != nil {
		t.Fatal(err)
	}
	if err := g.StoreLogs(entries(30, 35)); err != nil {
		t.Fatalf("append past a gap: %v", err)
	}
	first, _ := g.FirstIndex()
	last, _ := g.LastIndex()
	if first != 30 || last != 35 {
		t.Fatalf("log spans %d..%d, want 30..35", first, last)
	}
	var l raft.Log
	if err := g.GetLog(11, &l); err == nil {
		t.Fatal("an entry before the gap is still there")
	}
	if err := g.GetLog(30, &l); err != nil || string(l.Data) != entryData(30) {
		t.Fatalf("entry 30: %q, %v", l.Data, err)
	}
	// An append that continues the log, or a retry of the last entry's
	// successor, is passed through unchanged.
	if err := g.StoreLogs(entries(36, 40)); err != nil {
		t.Fatal(err)
	}
	if first, _ := g.FirstIndex(); first != 30 {
		t.Fatalf("first index %d after a contiguous append, want 30", first)
	}
}
