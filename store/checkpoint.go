package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/hashicorp/go-hclog"
)

// A checkpoint is a copy of the live database in a directory of its own:
// hard links to its sstables (which Pebble never modifies) and copies of
// its small files (WAL, MANIFEST, OPTIONS). Taking one costs milliseconds
// however large the store is, where streaming the store reads and writes
// all of it. Raft snapshots are checkpoints; they are turned into a
// snapshot stream only when a node needs one sent (OpenCheckpoint).

// checkpointsDir holds checkpoints taken but not yet handed over; a
// crash can leave some behind, and Open clears them.
const checkpointsDir = "checkpoints"

// checkpointSeq makes checkpoint directory names unique within a process.
var checkpointSeq atomic.Uint64

// Checkpoint is a checkpoint of the store, taken by Store.Checkpoint.
type Checkpoint struct {
	dir string
}

// Dir is the checkpoint's directory. Whoever takes the checkpoint over may
// move it (on the same file system, so the links stay links); Remove then
// does nothing.
func (c *Checkpoint) Dir() string { return c.dir }

// Remove deletes the checkpoint unless it has been moved away.
func (c *Checkpoint) Remove() error { return os.RemoveAll(c.dir) }

// WriteTo streams the checkpoint's content to w in the snapshot stream
// format (the format a Raft snapshot is sent in and a backup carries).
func (c *Checkpoint) WriteTo(w io.Writer) (int64, error) {
	r, err := OpenCheckpoint(c.dir, nil)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return r.WriteTo(w)
}

// Checkpoint takes a checkpoint of everything committed so far, after
// syncing the live database's WAL (so the store itself is durable up to
// the checkpoint's applied index too). It holds the store's read lock only
// while it is taken. Batches commit atomically, each with its applied
// index, so a checkpoint taken while one commits holds the state before or
// after it and says which; the FSM takes a Raft snapshot's between two
// applies, so that it holds exactly the index Raft records for it.
func (s *Store) Checkpoint() (*Checkpoint, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, errors.New("store: closed")
	}
	parent := filepath.Join(s.dir, checkpointsDir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("store: checkpoint: %w", err)
	}
	dir := filepath.Join(parent, fmt.Sprintf("ck-%d-%d", time.Now().UnixNano(), checkpointSeq.Add(1)))
	if err := s.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("store: checkpoint: %w", err)
	}
	return &Checkpoint{dir: dir}, nil
}

// removeStaleCheckpoints clears checkpoints a crash left before they were
// handed over.
func (s *Store) removeStaleCheckpoints() {
	if err := os.RemoveAll(filepath.Join(s.dir, checkpointsDir)); err != nil {
		s.logger.Warn("cannot remove stale checkpoints", "error", err)
	}
}

// CheckpointReader reads a checkpoint directory, opened read-only.
type CheckpointReader struct {
	db *pebble.DB
}

// checkpointCacheBytes is the block cache of a checkpoint being streamed:
// a stream reads each block once, so a cache buys nothing but memory.
const checkpointCacheBytes = 8 << 20

// OpenCheckpoint opens a checkpoint directory for reading. Nothing in the
// directory is modified, so it may be a set of hard links shared with
// another copy.
func OpenCheckpoint(dir string, logger hclog.Logger) (*CheckpointReader, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("store: open checkpoint: %w", err)
	}
	cache := pebble.NewCache(checkpointCacheBytes)
	defer cache.Unref()
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Cache: cache, Logger: pebbleLogger{logger}})
	if err != nil {
		return nil, fmt.Errorf("store: open checkpoint %s: %w", dir, err)
	}
	return &CheckpointReader{db: db}, nil
}

// View runs fn on the checkpoint's content.
func (r *CheckpointReader) View(fn func(v *View) error) error { return fn(&View{r: r.db}) }

// AppliedIndex is the Raft position the checkpoint reflects.
func (r *CheckpointReader) AppliedIndex() (index, term uint64, err error) {
	return (&View{r: r.db}).AppliedIndex()
}

// StreamSize is the exact length WriteTo will write (Raft sends a snapshot
// with its length up front). It reads the whole checkpoint.
func (r *CheckpointReader) StreamSize() (int64, error) { return snapshotStreamSize(r.db) }

// WriteTo streams the checkpoint in the snapshot stream format.
func (r *CheckpointReader) WriteTo(w io.Writer) (int64, error) { return writeSnapshotStream(r.db, w) }

// Close closes the checkpoint.
func (r *CheckpointReader) Close() error { return r.db.Close() }
