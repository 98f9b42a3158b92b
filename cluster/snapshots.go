package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Snapshots are kept in hashicorp/raft's file snapshot store, in one of two
// forms. A snapshot this node took is the FSM's checkpoint (hard links to
// its sstables): the FSM hands the checkpoint's directory to the sink, which
// moves it into the snapshot's folder and writes only a marker as the
// snapshot's data. A snapshot received from a leader (or restored from a
// backup) arrives as a byte stream and is stored as one. Open turns a
// checkpoint back into the stream the FSM restores from, so Raft, which
// sends and restores what Open returns, sees the same bytes either way.
//
// Why: a stream is a full copy of the store, ≈ 2 GB at a million versions,
// written every few minutes while the node serves; a checkpoint costs a
// link per sstable. The stream is produced only when a node needs one.

// CheckpointReader streams a checkpoint kept as a snapshot (the store's
// read-only view of it).
type CheckpointReader interface {
	// StreamSize is the exact length WriteTo will write.
	StreamSize() (int64, error)
	WriteTo(w io.Writer) (int64, error)
	Close() error
}

// checkpointMarker is the whole data of a snapshot kept as a checkpoint.
// A stream the FSM writes starts with its own magic, never with this.
var checkpointMarker = []byte("MBXCKPT1\n")

const (
	checkpointFolder = "checkpoint"       // in a snapshot's folder
	streamsFolder    = "snapshot-streams" // in DataDir: links to checkpoints being streamed
	tmpSuffix        = ".tmp"             // hashicorp/raft's suffix for a snapshot being written
)

// snapshotStore adds checkpoints to raft's file snapshot store.
type snapshotStore struct {
	files   *raft.FileSnapshotStore
	dir     string // DataDir/snapshots, where files keeps them
	streams string // DataDir/snapshot-streams
	open    func(dir string) (CheckpointReader, error)
	hold    *logHold // nil: none
	logger  hclog.Logger

	// reapMu keeps a newer snapshot's Close, which reaps old snapshots,
	// from removing a checkpoint while Open links it for a stream.
	reapMu sync.Mutex
	seq    atomic.Uint64

	// sizes: the stream length of checkpoints already walked, by snapshot
	// id (a kept checkpoint never changes), so that sending the same
	// snapshot again, or to a second node, walks it once instead of twice.
	sizesMu sync.Mutex
	sizes   map[string]int64
}

// newSnapshotStore opens the snapshot store in dataDir, keeping retain
// snapshots. open reads a kept checkpoint; nil keeps every snapshot as a
// stream.
func newSnapshotStore(dataDir string, retain int, open func(dir string) (CheckpointReader, error), hold *logHold, logger hclog.Logger) (*snapshotStore, error) {
	files, err := raft.NewFileSnapshotStoreWithLogger(dataDir, retain, logger)
	if err != nil {
		return nil, err
	}
	s := &snapshotStore{
		files:   files,
		dir:     filepath.Join(dataDir, "snapshots"),
		streams: filepath.Join(dataDir, streamsFolder),
		open:    open,
		hold:    hold,
		logger:  logger,
		sizes:   map[string]int64{},
	}
	// Links left by streams a crash interrupted.
	if err := os.RemoveAll(s.streams); err != nil {
		return nil, fmt.Errorf("remove %s: %w", s.streams, err)
	}
	// Snapshots a crash interrupted: the file store skips them but never
	// removes them, and a checkpoint in one would pin old sstables.
	tmps, _ := filepath.Glob(filepath.Join(s.dir, "*"+tmpSuffix))
	for _, dir := range tmps {
		logger.Info("removing an unfinished snapshot", "path", dir)
		if err := os.RemoveAll(dir); err != nil {
			return nil, fmt.Errorf("remove unfinished snapshot %s: %w", dir, err)
		}
	}
	return s, nil
}

func (s *snapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.files.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &snapshotSink{SnapshotSink: sink, store: s, tmpDir: filepath.Join(s.dir, sink.ID()+tmpSuffix)}, nil
}

// List lists the snapshots, newest first. The size of one kept as a
// checkpoint is its marker's; Open gives the size of its stream.
func (s *snapshotStore) List() ([]*raft.SnapshotMeta, error) { return s.files.List() }

// Open opens a snapshot as the stream the FSM restores from (Raft sends
// it to a node, or restores it). From before the stream is opened until
// some time after it is closed, the log from the snapshot's index on is
// held (logHold): opening one kept as a checkpoint walks it for the
// stream's length, seconds at a million versions, during which the leader
// may snapshot again and compact the entries the node will need next.
func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	if s.hold == nil {
		return s.openStream(id)
	}
	index, err := s.indexOf(id)
	if err != nil {
		return nil, nil, err
	}
	release, drop := s.hold.start(index)
	meta, rc, err := s.openStream(id)
	if err != nil {
		drop()
		return nil, nil, err
	}
	return meta, &heldStream{ReadCloser: rc, release: release}, nil
}

// indexOf returns the Raft index of snapshot id.
func (s *snapshotStore) indexOf(id string) (uint64, error) {
	metas, err := s.files.List()
	if err != nil {
		return 0, err
	}
	for _, m := range metas {
		if m.ID == id {
			return m.Index, nil
		}
	}
	return 0, fmt.Errorf("snapshot %s: not found", id)
}

// heldStream releases its hold on the log when closed.
type heldStream struct {
	io.ReadCloser
	release func()
}

func (h *heldStream) Close() error {
	err := h.ReadCloser.Close()
	h.release()
	return err
}

// openStream opens a snapshot's stream: the file as it is, or the stream
// of the checkpoint it keeps.
func (s *snapshotStore) openStream(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.files.Open(id)
	if err != nil {
		return nil, nil, err
	}
	if meta.Size != int64(len(checkpointMarker)) {
		return meta, rc, nil
	}
	head := make([]byte, len(checkpointMarker))
	n, err := io.ReadFull(rc, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		rc.Close()
		return nil, nil, fmt.Errorf("read snapshot %s: %w", id, err)
	}
	if !bytes.Equal(head[:n], checkpointMarker) {
		// A stream that happens to be as long as the marker.
		return meta, &readCloser{Reader: io.MultiReader(bytes.NewReader(head[:n]), rc), Closer: rc}, nil
	}
	rc.Close()
	return s.openCheckpoint(meta, id)
}

// openCheckpoint streams a snapshot kept as a checkpoint. It links the
// checkpoint's files into a folder of the stream's own first, so that the
// snapshot can be reaped while a slow follower is still receiving it.
func (s *snapshotStore) openCheckpoint(meta *raft.SnapshotMeta, id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	if s.open == nil {
		return nil, nil, fmt.Errorf("snapshot %s is a checkpoint, and this node cannot read checkpoints", id)
	}
	private := filepath.Join(s.streams, fmt.Sprintf("%s-%d", id, s.seq.Add(1)))
	s.reapMu.Lock()
	err := linkFiles(filepath.Join(s.dir, id, checkpointFolder), private)
	s.reapMu.Unlock()
	if err != nil {
		os.RemoveAll(private)
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	ck, err := s.open(private)
	if err != nil {
		os.RemoveAll(private)
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	size, err := s.streamSize(id, ck)
	if err != nil {
		ck.Close()
		os.RemoveAll(private)
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	pr, pw := io.Pipe()
	st := &checkpointStream{PipeReader: pr, done: make(chan struct{})}
	go func() {
		defer close(st.done)
		n, err := ck.WriteTo(pw)
		if err == nil && n != size {
			err = fmt.Errorf("snapshot %s: streamed %d bytes, expected %d", id, n, size)
		}
		pw.CloseWithError(err)
		if err := ck.Close(); err != nil {
			s.logger.Warn("closing a streamed checkpoint", "snapshot", id, "error", err)
		}
		if err := os.RemoveAll(private); err != nil {
			s.logger.Warn("removing a streamed checkpoint's links", "dir", private, "error", err)
		}
	}()
	m := *meta
	m.Size = size
	return &m, st, nil
}

// streamSize is the stream length of snapshot id's checkpoint ck, walked
// once per snapshot. Sizes of snapshots reaped since are forgotten.
func (s *snapshotStore) streamSize(id string, ck CheckpointReader) (int64, error) {
	s.sizesMu.Lock()
	size, ok := s.sizes[id]
	s.sizesMu.Unlock()
	if ok {
		return size, nil
	}
	size, err := ck.StreamSize()
	if err != nil {
		return 0, err
	}
	s.sizesMu.Lock()
	defer s.sizesMu.Unlock()
	for known := range s.sizes {
		if _, err := os.Stat(filepath.Join(s.dir, known)); errors.Is(err, os.ErrNotExist) {
			delete(s.sizes, known)
		}
	}
	s.sizes[id] = size
	return size, nil
}

// checkpointStream is a checkpoint being streamed; Close stops the stream
// and waits until its links are gone.
type checkpointStream struct {
	*io.PipeReader
	done chan struct{}
}

func (c *checkpointStream) Close() error {
	c.PipeReader.CloseWithError(errors.New("snapshot stream closed"))
	<-c.done
	return nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// linkFiles makes dst a folder of hard links to the files in src (copies
// where the file system cannot link). A checkpoint has no subfolders.
func linkFiles(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return fmt.Errorf("unexpected %s in checkpoint %s", e.Name(), src)
		}
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if err := os.Link(from, to); err != nil {
			if err := copyFile(from, to); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// snapshotSink is a file snapshot sink that can also keep a checkpoint
// (fsm.CheckpointSink).
type snapshotSink struct {
	raft.SnapshotSink
	store   *snapshotStore
	tmpDir  string // the folder the file store writes this snapshot into
	written bool
}

func (k *snapshotSink) Write(p []byte) (int, error) {
	k.written = true
	return k.SnapshotSink.Write(p)
}

// KeepCheckpoint moves the checkpoint in dir into the snapshot's folder and
// writes the marker as the snapshot's data. On failure dir stays where it
// was and the sink holds no data, so the caller can stream it instead.
func (k *snapshotSink) KeepCheckpoint(dir string) error {
	if k.store.open == nil {
		return errors.New("this snapshot store keeps no checkpoints")
	}
	if k.written {
		return errors.New("snapshot data already written")
	}
	if _, err := os.Stat(k.tmpDir); err != nil {
		return fmt.Errorf("snapshot folder: %w", err)
	}
	dst := filepath.Join(k.tmpDir, checkpointFolder)
	if err := os.Rename(dir, dst); err != nil {
		return err
	}
	if err := syncDir(k.tmpDir); err != nil {
		if rerr := os.Rename(dst, dir); rerr != nil {
			return fmt.Errorf("%w (and moving the checkpoint back: %v)", err, rerr)
		}
		return err
	}
	if _, err := k.Write(checkpointMarker); err != nil {
		// The file sink's buffered writer keeps failing from now on, so
		// the caller's attempt to stream instead fails too and cancels.
		os.Rename(dst, dir)
		return err
	}
	return nil
}

// Close completes the snapshot; the file store then reaps the oldest ones.
// If the file store fails before moving the snapshot into place (writing
// its metadata, the rename), it leaves the unfinished folder behind, and
// Cancel no longer removes it: a kept checkpoint would pin its tables
// until the next start, one more per failed attempt on a full disk.
func (k *snapshotSink) Close() error {
	k.store.reapMu.Lock()
	defer k.store.reapMu.Unlock()
	err := k.SnapshotSink.Close()
	if err != nil {
		if rerr := os.RemoveAll(k.tmpDir); rerr != nil {
			k.store.logger.Warn("cannot remove an unfinished snapshot", "path", k.tmpDir, "error", rerr)
		}
	}
	return err
}
