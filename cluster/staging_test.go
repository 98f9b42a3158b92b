package cluster

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The leader learns how far a peer's log matches its own only from the
// replies to its replication calls; a wrong reading would promote a node
// that has not caught up (or never promote one that has).
func TestReplicationTransportRecordsWhatPeersAcknowledge(t *testing.T) {
	peer, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	replies := make(chan any, 1) // the peer's next answer
	go func() {
		for rpc := range peer.Consumer() {
			if rpc.Reader != nil {
				io.Copy(io.Discard, rpc.Reader)
			}
			rpc.Respond(<-replies, nil)
		}
	}()
	local, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	progress := &replicationProgress{}
	tr := replicationTransport{local, progress}
	const id = raft.ServerID("peer")

	entries := func(n int) []*raft.Log { return make([]*raft.Log, n) }
	append_ := func(req raft.AppendEntriesRequest, reply raft.AppendEntriesResponse) {
		t.Helper()
		replies <- &reply
		var resp raft.AppendEntriesResponse
		if err := tr.AppendEntries(id, peer.LocalAddr(), &req, &resp); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, term, want uint64) {
		t.Helper()
		if got := progress.matched(id, term); got != want {
			t.Fatalf("%s: matched %d in term %d, want %d", what, got, term, want)
		}
	}

	append_(raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 10, Entries: entries(5)}, raft.AppendEntriesResponse{Term: 3, Success: true})
	expect("a batch of 5 after index 10", 3, 15)
	expect("another term", 2, 0)
	append_(raft.AppendEntriesRequest{Term: 3}, raft.AppendEntriesResponse{Term: 3, Success: true})
	expect("a heartbeat says nothing of the log", 3, 15)
	append_(raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 15}, raft.AppendEntriesResponse{Term: 3, Success: true})
	expect("an empty probe at the leader's last index (an idle region)", 3, 15)
	append_(raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 15, Entries: entries(1)}, raft.AppendEntriesResponse{Term: 4, Success: false})
	expect("a reply from a later term", 3, 15)
	append_(raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 15, Entries: entries(1)}, raft.AppendEntriesResponse{Term: 3, Success: false})
	expect("a refusal: the logs differ after the last match", 3, 0)

	replies <- &raft.InstallSnapshotResponse{Term: 3, Success: true}
	var resp raft.InstallSnapshotResponse
	if err := tr.InstallSnapshot(id, peer.LocalAddr(), &raft.InstallSnapshotRequest{Term: 3, LastLogIndex: 100, Size: 3}, &resp, bytes.NewReader([]byte("abc"))); err != nil {
		t.Fatal(err)
	}
	expect("an installed snapshot", 3, 100)
	replies <- &raft.InstallSnapshotResponse{Term: 3, Success: false}
	if err := tr.InstallSnapshot(id, peer.LocalAddr(), &raft.InstallSnapshotRequest{Term: 3, LastLogIndex: 200, Size: 3}, &resp, bytes.NewReader([]byte("abc"))); err != nil {
		t.Fatal(err)
	}
	expect("a snapshot the peer refused", 3, 100)

	// A peer that stops answering is not known to match anything.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := raft.ServerAddress(gone.Addr().String())
	gone.Close()
	var r raft.AppendEntriesResponse
	if err := tr.AppendEntries(id, deadAddr, &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 100}, &r); err == nil {
		t.Fatal("an AppendEntries to a closed port succeeded")
	}
	expect("a call that failed", 3, 0)
}

// A node counts as caught up only with what it acknowledged in this term,
// up to the target, and since it was last added: a node removed and added
// again (wiped, or at another address) starts over.
func TestCaughtUpCountsOnlyAcknowledgementsSinceTheNodeWasAdded(t *testing.T) {
	var p replicationProgress
	const id = raft.ServerID("x")
	before := time.Now()
	p.record(id, 3, 19)
	if !p.caughtUp(id, 3, 17, before) || p.caughtUp(id, 3, 20, before) || p.caughtUp(id, 4, 17, before) {
		t.Fatal("match 19 in term 3: caught up to 17 in term 3 only")
	}
	if p.caughtUp(id, 3, 17, time.Now().Add(time.Second)) {
		t.Fatal("caught up without an answer since the time asked about")
	}
	p.added(id, 20) // removed, then added again at index 20
	if p.caughtUp(id, 3, 17, before) {
		t.Fatal("caught up on what it acknowledged before it was added again")
	}
	p.record(id, 3, 21)
	if !p.caughtUp(id, 3, 17, before) {
		t.Fatal("not caught up after acknowledging past its addition")
	}
}

// matched (for tests) returns how far id's log matches this node's, as learnt in term
// (0 when nothing was learnt in that term).
func (p *replicationProgress) matched(id raft.ServerID, term uint64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.match[id]; m.term == term {
		return m.index
	}
	return 0
}
