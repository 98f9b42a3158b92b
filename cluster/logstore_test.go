package cluster

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// fillLogStore writes Raft's stable keys and entries first..last.
func fillLogStore(t *testing.T, s logStore, first, last uint64) {
	t.Helper()
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("LastVoteTerm"), 6); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node2")); err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1 + i/100, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("command %d", i))})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
}

// checkLogStore asserts s holds what fillLogStore wrote.
func checkLogStore(t *testing.T, s logStore, first, last uint64) {
	t.Helper()
	for k, want := range map[string]uint64{"CurrentTerm": 7, "LastVoteTerm": 6} {
		if got, err := s.GetUint64([]byte(k)); err != nil || got != want {
			t.Fatalf("%s = %d, %v; want %d", k, got, err, want)
		}
	}
	if got, err := s.Get([]byte("LastVoteCand")); err != nil || string(got) != "node2" {
		t.Fatalf("LastVoteCand = %q, %v", got, err)
	}
	if f, err := s.FirstIndex(); err != nil || f != first {
		t.Fatalf("first index %d, %v; want %d", f, err, first)
	}
	if l, err := s.LastIndex(); err != nil || l != last {
		t.Fatalf("last index %d, %v; want %d", l, err, last)
	}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if l.Index != i || l.Term != 1+i/100 || !bytes.Equal(l.Data, []byte(fmt.Sprintf("command %d", i))) {
			t.Fatalf("entry %d = %+v", i, l)
		}
	}
}

func open(t *testing.T, dir, kind string) (logStore, string) {
	t.Helper()
	s, got, err := openLogStore(dir, kind, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("open %q in %s: %v", kind, dir, err)
	}
	return s, got
}

func TestNewDataDirUsesTheWAL(t *testing.T) {
	dir := t.TempDir()
	s, kind := open(t, dir, "")
	if kind != LogStoreWAL {
		t.Fatalf("new data directory got %q, want %q", kind, LogStoreWAL)
	}
	fillLogStore(t, s, 1, 10)
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, boltFile)); !os.IsNotExist(err) {
		t.Fatalf("a WAL data directory has %s: %v", boltFile, err)
	}
	s, kind = open(t, dir, "")
	defer s.Close()
	if kind != LogStoreWAL {
		t.Fatalf("reopened as %q", kind)
	}
	checkLogStore(t, s, 1, 10)
}

func TestExistingBoltDataDirKeepsBolt(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, LogStoreBoltDB)
	fillLogStore(t, s, 1, 10)
	s.Close()
	s, kind := open(t, dir, "")
	defer s.Close()
	if kind != LogStoreBoltDB {
		t.Fatalf("a bolt data directory opened as %q", kind)
	}
	checkLogStore(t, s, 1, 10)
}

// TestLogStoreMigratesBothWays: naming the other store copies the log (a
// compacted one, starting past 1, over several copy batches) and Raft's
// stable keys, and removes the old store.
func TestLogStoreMigratesBothWays(t *testing.T) {
	const first, last = 301, 301 + 3*copyLogBatch + 17
	dir := t.TempDir()
	s, _ := open(t, dir, LogStoreBoltDB)
	fillLogStore(t, s, first, last)
	s.Close()
	for _, step := range []struct{ to, gone string }{{LogStoreWAL, boltFile}, {LogStoreBoltDB, walDir}} {
		s, kind := open(t, dir, step.to)
		if kind != step.to {
			t.Fatalf("opened %q, want %q", kind, step.to)
		}
		checkLogStore(t, s, first, last)
		// The migrated store keeps working: Raft appends after it.
		if err := s.StoreLogs([]*raft.Log{{Index: last + 1, Term: 9, Type: raft.LogCommand}}); err != nil {
			t.Fatalf("append after migrating to %s: %v", step.to, err)
		}
		if err := s.DeleteRange(last+1, last+1); err != nil {
			t.Fatalf("truncate after migrating to %s: %v", step.to, err)
		}
		s.Close()
		if _, err := os.Stat(filepath.Join(dir, step.gone)); !os.IsNotExist(err) {
			t.Fatalf("after migrating to %s the old store %s remains: %v", step.to, step.gone, err)
		}
		if _, err := os.Stat(filepath.Join(dir, step.gone+migratingSuffix)); err == nil {
			t.Fatalf("after migrating to %s a temporary copy remains", step.to)
		}
	}
}

// TestInterruptedMigration: a copy that never got renamed into place is
// discarded and redone; a finished one whose source was not yet removed
// wins over the source.
func TestInterruptedMigration(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, LogStoreBoltDB)
	fillLogStore(t, s, 1, 20)
	s.Close()

	// A crash mid-copy: a partial WAL under the temporary name.
	partial, err := openStore(filepath.Join(dir, walDir+migratingSuffix), LogStoreWAL)
	if err != nil {
		t.Fatal(err)
	}
	if err := partial.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("stale")}}); err != nil {
		t.Fatal(err)
	}
	partial.Close()
	// Without asking for the WAL, the bolt store stays in use.
	s, kind := open(t, dir, "")
	if kind != LogStoreBoltDB {
		t.Fatalf("with an unfinished copy beside it, opened %q", kind)
	}
	checkLogStore(t, s, 1, 20)
	s.Close()
	// Asking for it redoes the copy from scratch.
	s, _ = open(t, dir, LogStoreWAL)
	checkLogStore(t, s, 1, 20)
	s.Close()

	// A crash after the rename, before the source was removed: put a bolt
	// store with other content back beside the WAL; the WAL wins.
	b, err := openStore(filepath.Join(dir, boltFile), LogStoreBoltDB)
	if err != nil {
		t.Fatal(err)
	}
	fillLogStore(t, b, 1, 5)
	b.Close()
	s, kind = open(t, dir, LogStoreWAL)
	defer s.Close()
	if kind != LogStoreWAL {
		t.Fatalf("opened %q", kind)
	}
	checkLogStore(t, s, 1, 20)
	if _, err := os.Stat(filepath.Join(dir, boltFile)); !os.IsNotExist(err) {
		t.Fatalf("the superseded bolt store remains: %v", err)
	}
}

func TestUnknownLogStoreIsRefused(t *testing.T) {
	_, _, err := openLogStore(t.TempDir(), "rocksdb", hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), `"rocksdb"`) {
		t.Fatalf("unknown store: %v, want an error naming it", err)
	}
}

// BenchmarkLogStoreAppend: one Raft append (with its fsync) of batch
// entries of 1.5 KB, the size of a 1 KiB secret version's command, in each
// log store.
func BenchmarkLogStoreAppend(b *testing.B) {
	data := make([]byte, 1500)
	for _, kind := range []string{LogStoreWAL, LogStoreBoltDB} {
		for _, batch := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", kind, batch), func(b *testing.B) {
				s, err := openStore(storePath(b.TempDir(), kind), kind)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				next := uint64(1)
				b.SetBytes(int64(batch * len(data)))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					logs := make([]*raft.Log, batch)
					for j := range logs {
						logs[j] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: data}
						next++
					}
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestCompactedEntriesAreNotFound: after Raft deletes the head of the log
// (compaction after a snapshot), those entries read as not found in every
// store, which is what makes the leader send a snapshot instead.
func TestCompactedEntriesAreNotFound(t *testing.T) {
	for _, kind := range []string{LogStoreWAL, LogStoreBoltDB} {
		s, _ := open(t, t.TempDir(), kind)
		fillLogStore(t, s, 1, 100)
		if err := s.DeleteRange(1, 60); err != nil {
			t.Fatal(err)
		}
		for _, i := range []uint64{1, 30, 60} {
			var l raft.Log
			if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
				t.Errorf("%s: compacted entry %d: %v, want raft.ErrLogNotFound", kind, i, err)
			}
		}
		var l raft.Log
		if err := s.GetLog(61, &l); err != nil || l.Index != 61 {
			t.Errorf("%s: entry 61 after compaction: %+v, %v", kind, l, err)
		}
		if err := s.GetLog(101, &l); err != raft.ErrLogNotFound {
			t.Errorf("%s: entry past the end: %v, want raft.ErrLogNotFound", kind, err)
		}
		s.Close()
	}
}
