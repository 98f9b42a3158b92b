package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	"go.etcd.io/bbolt"
)

// The Raft log stores a node can keep its log and stable state in.
const (
	// LogStoreWAL is hashicorp/raft-wal: append-only segment files, one
	// fsync per append. The default for new data directories.
	LogStoreWAL = "wal"
	// LogStoreBoltDB is hashicorp/raft-boltdb/v2: a copy-on-write B+tree,
	// two fsyncs per append (data pages, then the meta page).
	LogStoreBoltDB = "boltdb"
)

// File names inside the Raft data directory.
const (
	boltFile        = "raft.db"
	walDir          = "wal"
	migratingSuffix = ".migrating"
)

// raftStableKeys are the keys hashicorp/raft keeps in its StableStore:
// the two terms are uint64s, the candidate an opaque id.
var (
	stableUint64Keys = []string{"CurrentTerm", "LastVoteTerm"}
	stableBytesKeys  = []string{"LastVoteCand"}
)

// logStore is what Raft needs from a log store: the log, the stable store
// and closing.
type logStore interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// ValidLogStore reports whether kind names a log store ("" picks whatever
// the data directory already has, else the WAL).
func ValidLogStore(kind string) bool {
	return kind == "" || kind == LogStoreWAL || kind == LogStoreBoltDB
}

// openLogStore opens the Raft log store of dir. kind "" keeps the store the
// directory already has (the WAL for a new one); a kind naming the other
// store than the one on disk copies the log and stable state into it first
// (migrateLogStore), so an operator can switch either way with a restart.
func openLogStore(dir, kind string, logger hclog.Logger) (logStore, string, error) {
	if !ValidLogStore(kind) {
		return nil, "", fmt.Errorf("unknown raft log store %q (want %q or %q)", kind, LogStoreWAL, LogStoreBoltDB)
	}
	hasWAL, err := exists(filepath.Join(dir, walDir))
	if err != nil {
		return nil, "", err
	}
	hasBolt, err := exists(filepath.Join(dir, boltFile))
	if err != nil {
		return nil, "", err
	}
	switch {
	case kind != "":
	case hasWAL:
		kind = LogStoreWAL
	case hasBolt:
		kind = LogStoreBoltDB
	default:
		kind = LogStoreWAL
	}
	target, source := kind, LogStoreBoltDB
	hasTarget, hasSource := hasWAL, hasBolt
	if kind == LogStoreBoltDB {
		source, hasTarget, hasSource = LogStoreWAL, hasBolt, hasWAL
	}
	switch {
	case hasTarget && hasSource:
		// A migration renamed its result into place and stopped before
		// removing the source: the target is complete.
		logger.Warn("removing the raft log store left over by a finished migration", "store", source)
		if err := os.RemoveAll(storePath(dir, source)); err != nil {
			return nil, "", fmt.Errorf("remove old raft log store: %w", err)
		}
	case hasSource:
		if err := migrateLogStore(dir, source, target, logger); err != nil {
			return nil, "", err
		}
	}
	s, err := openStore(storePath(dir, target), target)
	return s, target, err
}

func storePath(dir, kind string) string {
	if kind == LogStoreWAL {
		return filepath.Join(dir, walDir)
	}
	return filepath.Join(dir, boltFile)
}

// openStore opens (or creates) a log store of kind at path.
func openStore(path, kind string) (logStore, error) {
	if kind == LogStoreBoltDB {
		// The freelist is rebuilt at open instead of written with every
		// commit: fewer bytes synced per append, durability unchanged.
		s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", path, err)
		}
		return s, nil
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	s, err := wal.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", path, err)
	}
	return walStore{s}, nil
}

// walStore hides entries below the first index. raft-wal v0.4.2 truncates
// the head of its open segment only logically and still returns those
// entries by index; hashicorp/raft takes "not found" as its cue to send a
// follower the snapshot, so without this a node far behind would be fed the
// compacted log instead (the entries are committed ones, so it is not
// unsafe, but it defeats compaction and the catch-up-by-snapshot path).
type walStore struct{ *wal.WAL }

func (w walStore) GetLog(index uint64, log *raft.Log) error {
	first, err := w.FirstIndex()
	if err != nil {
		return err
	}
	if index < first || first == 0 {
		return raft.ErrLogNotFound
	}
	return w.WAL.GetLog(index, log)
}

// migrateLogStore copies the log and stable state of store `from` into a new
// store `to`, built beside it under a temporary name, then renames it into
// place and removes the old one. A crash before the rename leaves the old
// store in use (the half-built copy is discarded next time); after it, the
// new one (openLogStore removes the old).
func migrateLogStore(dir, from, to string, logger hclog.Logger) error {
	tmp := storePath(dir, to) + migratingSuffix
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	src, err := openStore(storePath(dir, from), from)
	if err != nil {
		return err
	}
	dst, err := openStore(tmp, to)
	if err != nil {
		src.Close()
		return err
	}
	entries, err := copyLogStore(dst, src)
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the new raft log: %w", cerr)
	}
	src.Close()
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("migrate raft log from %s to %s: %w", from, to, err)
	}
	if err := os.Rename(tmp, storePath(dir, to)); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("migrate raft log: %w", err)
	}
	if err := os.RemoveAll(storePath(dir, from)); err != nil {
		return fmt.Errorf("migrate raft log: remove the old store: %w", err)
	}
	logger.Info("migrated the raft log store", "from", from, "to", to, "entries", entries)
	return nil
}

// copyLogBatch is how many entries one append of a migration carries.
const copyLogBatch = 256

// copyLogStore copies Raft's stable keys and every log entry of src into
// the empty dst, and returns how many entries it copied.
func copyLogStore(dst, src logStore) (int, error) {
	for _, k := range stableUint64Keys {
		v, err := src.GetUint64([]byte(k))
		if err != nil && !isNotFound(err) {
			return 0, fmt.Errorf("read %s: %w", k, err)
		}
		if err == nil && v != 0 {
			if err := dst.SetUint64([]byte(k), v); err != nil {
				return 0, fmt.Errorf("write %s: %w", k, err)
			}
		}
	}
	for _, k := range stableBytesKeys {
		v, err := src.Get([]byte(k))
		if err != nil && !isNotFound(err) {
			return 0, fmt.Errorf("read %s: %w", k, err)
		}
		if err == nil && len(v) > 0 {
			if err := dst.Set([]byte(k), v); err != nil {
				return 0, fmt.Errorf("write %s: %w", k, err)
			}
		}
	}
	first, err := src.FirstIndex()
	if err != nil {
		return 0, fmt.Errorf("read the first index: %w", err)
	}
	last, err := src.LastIndex()
	if err != nil {
		return 0, fmt.Errorf("read the last index: %w", err)
	}
	if last == 0 {
		return 0, nil
	}
	copied := 0
	for start := first; start <= last; start += copyLogBatch {
		end := min(start+copyLogBatch-1, last)
		batch := make([]*raft.Log, 0, end-start+1)
		for i := start; i <= end; i++ {
			l := new(raft.Log)
			if err := src.GetLog(i, l); err != nil {
				return copied, fmt.Errorf("read entry %d: %w", i, err)
			}
			batch = append(batch, l)
		}
		if err := dst.StoreLogs(batch); err != nil {
			return copied, fmt.Errorf("write entries %d-%d: %w", start, end, err)
		}
		copied += len(batch)
	}
	return copied, nil
}

// isNotFound: the stores report a missing stable key as an error whose text
// is "not found" (raft-boltdb) or as a zero value (raft-wal); hashicorp/raft
// itself compares the text.
func isNotFound(err error) bool {
	return errors.Is(err, raftboltdb.ErrKeyNotFound) || strings.Contains(err.Error(), "not found")
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("raft log store: %w", err)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// gapLog presents the log store to hashicorp/raft as one that accepts gaps
// (not raft.MonotonicLogStore) and makes that true for raft-wal, which does
// not: an append that would leave a gap first clears the log.
//
// Why: hashicorp/raft v1.7.2, after a follower installs a snapshot, empties
// a monotonic log store entirely (removeOldLogs), entries past the
// snapshot's index included, yet keeps its in-memory last index. A
// follower whose log ran ahead of the leader's snapshot then asks for the
// entry after the snapshot, does not find it, and panics — on every
// restart too (hashicorp/raft#697; a chaos campaign hit it). On the path
// for stores that accept gaps, raft instead deletes only the log's prefix
// up to the snapshot (compactLogs; DeleteRange below keeps the snapshot's
// own entry), which keeps the entries past it, and the next append after a
// snapshot that overtook the whole log starts past the snapshot's index:
// the gap this wrapper closes by clearing the log, whose entries the
// snapshot covers (what removeOldLogs did). A user restore (backup) leaves
// the same kind of gap on the leader.
//
// It also keeps the entries a node receiving a snapshot will ask for next
// (logHold): a compaction of the log's head stops short of them.
type gapLog struct {
	raft.LogStore
	hold *logHold // nil: nothing held
}

// DeleteRange deletes a suffix as asked: Raft compacts the head keeping
// --raft-trailing-logs entries (never zero here), so a deletion that
// reaches the last entry drops a follower's entries that conflict with
// its leader's (possibly the whole log).
//
// A compaction of the head keeps the entry at its upper bound. After a
// snapshot install, Raft compacts the follower's log up to the snapshot's
// index, and the leader's next append names that index as its previous
// entry, which the follower checks by reading it back: gone, it refuses
// every append and is sent the snapshot again and again while its log
// runs ahead of the leader's snapshot. Kept, the check passes (or fails
// on a conflicting term, as it should). It also stops short of the
// entries a node receiving a snapshot will ask for (logHold): the leader
// reads the snapshot's own entry for that append too.
func (g gapLog) DeleteRange(min, max uint64) error {
	last, err := g.LogStore.LastIndex()
	if err != nil {
		return err
	}
	if max >= last {
		return g.LogStore.DeleteRange(min, max)
	}
	if floor, ok := g.hold.floor(); ok && floor < max {
		g.hold.logger.Info("keeping raft log entries a node receiving a snapshot will need", "from", floor, "compaction_asked_up_to", max)
		max = floor
	}
	if max <= min {
		return nil
	}
	return g.LogStore.DeleteRange(min, max-1)
}

// IsMonotonic implements raft.MonotonicLogStore: gaps are allowed.
func (g gapLog) IsMonotonic() bool { return false }

func (g gapLog) StoreLog(l *raft.Log) error { return g.StoreLogs([]*raft.Log{l}) }

func (g gapLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) > 0 {
		last, err := g.LogStore.LastIndex()
		if err != nil {
			return err
		}
		if last > 0 && logs[0].Index > last+1 {
			first, err := g.LogStore.FirstIndex()
			if err != nil {
				return err
			}
			if err := g.LogStore.DeleteRange(first, last); err != nil {
				return fmt.Errorf("clear the raft log before appending index %d after %d: %w", logs[0].Index, last, err)
			}
		}
	}
	return g.LogStore.StoreLogs(logs)
}
