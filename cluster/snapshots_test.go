package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// fakeCheckpoint stands in for the store's checkpoint reader: its stream is
// every file's name and content, in name order.
type fakeCheckpoint struct{ dir string }

func openFakeCheckpoint(dir string) (CheckpointReader, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, err
	}
	return &fakeCheckpoint{dir: dir}, nil
}

func (f *fakeCheckpoint) stream() ([]byte, error) {
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	var buf bytes.Buffer
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(f.dir, e.Name()))
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&buf, "%s=%s;", e.Name(), b)
	}
	return buf.Bytes(), nil
}

func (f *fakeCheckpoint) StreamSize() (int64, error) {
	b, err := f.stream()
	return int64(len(b)), err
}

func (f *fakeCheckpoint) WriteTo(w io.Writer) (int64, error) {
	b, err := f.stream()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

func (f *fakeCheckpoint) Close() error { return nil }

// makeCheckpoint writes a checkpoint-like folder of files under parent (the
// same file system as the snapshot store, as the store's own are).
func makeCheckpoint(t *testing.T, parent, name string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(parent, "fsm", "checkpoints", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newTestSnapshotStore(t *testing.T, dataDir string, open func(string) (CheckpointReader, error)) *snapshotStore {
	t.Helper()
	s, err := newSnapshotStore(filepath.Join(dataDir, "raft"), 2, open, nil, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("newSnapshotStore: %v", err)
	}
	return s
}

func createSink(t *testing.T, s *snapshotStore, index uint64) *snapshotSink {
	t.Helper()
	_, trans := raft.NewInmemTransport("")
	sink, err := s.Create(raft.SnapshotVersionMax, index, 3, raft.Configuration{}, 1, trans)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return sink.(*snapshotSink)
}

// keepCheckpoint takes a snapshot at index made of a checkpoint with the
// given files, and returns the stream Open must give for it.
func keepCheckpoint(t *testing.T, s *snapshotStore, dataDir string, index uint64, files map[string]string) (id string, want []byte) {
	t.Helper()
	dir := makeCheckpoint(t, dataDir, fmt.Sprintf("ck-%d", index), files)
	want, err := (&fakeCheckpoint{dir: dir}).stream()
	if err != nil {
		t.Fatal(err)
	}
	sink := createSink(t, s, index)
	if err := sink.KeepCheckpoint(dir); err != nil {
		t.Fatalf("KeepCheckpoint: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the checkpoint was not moved out of %s: %v", dir, err)
	}
	if err := sink.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return sink.ID(), want
}

func readSnapshot(t *testing.T, s *snapshotStore, id string) (*raft.SnapshotMeta, []byte) {
	t.Helper()
	meta, rc, err := s.Open(id)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", id, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("close %s: %v", id, err)
	}
	if meta.Size != int64(len(b)) {
		t.Fatalf("snapshot %s: meta.Size %d, stream %d bytes", id, meta.Size, len(b))
	}
	return meta, b
}

func streamsLeft(t *testing.T, s *snapshotStore) []string {
	t.Helper()
	entries, err := os.ReadDir(s.streams)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestSnapshotStoreKeepsACheckpointAndStreamsItOnOpen(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	id, want := keepCheckpoint(t, s, dataDir, 10, map[string]string{"000001.sst": "tables", "MANIFEST-000002": "manifest"})

	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Index != 10 || list[0].Term != 3 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	meta, got := readSnapshot(t, s, id)
	if !bytes.Equal(got, want) || meta.Index != 10 || meta.Term != 3 {
		t.Fatalf("Open(%s) = %+v %q, want index 10 term 3 and %q", id, meta, got, want)
	}
	if left := streamsLeft(t, s); len(left) != 0 {
		t.Fatalf("links of a finished stream left behind: %v", left)
	}
	// The snapshot's own folder holds the checkpoint, not a copy of it.
	if _, err := os.Stat(filepath.Join(s.dir, id, checkpointFolder, "000001.sst")); err != nil {
		t.Fatalf("checkpoint not in the snapshot's folder: %v", err)
	}
}

// countingCheckpoint counts how often a checkpoint is walked for its size.
type countingCheckpoint struct {
	CheckpointReader
	sized *atomic.Int32
}

func (c countingCheckpoint) StreamSize() (int64, error) {
	c.sized.Add(1)
	return c.CheckpointReader.StreamSize()
}

func TestSnapshotSentTwiceIsSizedOnce(t *testing.T) {
	dataDir := t.TempDir()
	var sized atomic.Int32
	open := func(dir string) (CheckpointReader, error) {
		r, err := openFakeCheckpoint(dir)
		return countingCheckpoint{CheckpointReader: r, sized: &sized}, err
	}
	s, err := newSnapshotStore(filepath.Join(dataDir, "raft"), 2, open, nil, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	id, want := keepCheckpoint(t, s, dataDir, 10, map[string]string{"a.sst": "aaaa", "b.sst": "b"})
	for i := 0; i < 2; i++ {
		if _, got := readSnapshot(t, s, id); !bytes.Equal(got, want) {
			t.Fatalf("send %d: %q, want %q", i+1, got, want)
		}
	}
	if n := sized.Load(); n != 1 {
		t.Fatalf("the checkpoint was walked for its size %d times in two sends, want 1", n)
	}
	// Reaped snapshots are forgotten as new ones are sized.
	keepCheckpoint(t, s, dataDir, 20, map[string]string{"c.sst": "c"})
	id3, _ := keepCheckpoint(t, s, dataDir, 30, map[string]string{"d.sst": "d"})
	readSnapshot(t, s, id3)
	if _, ok := s.sizes[id]; ok || len(s.sizes) != 1 {
		t.Fatalf("sizes kept after %s was reaped: %v", id, s.sizes)
	}
}

func TestSnapshotStoreKeepsStreamsAsStreams(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	for _, data := range [][]byte{
		[]byte("MBXSNAP1 a stream a leader sent"),
		[]byte("MBXCKPT2\n"), // as long as the marker, not the marker
		{},
	} {
		sink := createSink(t, s, 20)
		if _, err := sink.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.KeepCheckpoint(makeCheckpoint(t, dataDir, "late", nil)); err == nil {
			t.Fatal("KeepCheckpoint after Write succeeded")
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		if _, got := readSnapshot(t, s, sink.ID()); !bytes.Equal(got, data) {
			t.Fatalf("Open = %q, want %q", got, data)
		}
	}
}

func TestSnapshotStoreWithoutACheckpointReaderRefusesCheckpoints(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, nil)
	dir := makeCheckpoint(t, dataDir, "ck", map[string]string{"f": "x"})
	sink := createSink(t, s, 5)
	if err := sink.KeepCheckpoint(dir); err == nil {
		t.Fatal("KeepCheckpoint succeeded without a way to read checkpoints back")
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
		t.Fatalf("a refused checkpoint was touched: %v", err)
	}
	streamInstead(t, s, sink, "stream")
}

// streamInstead writes data into a sink that refused a checkpoint, as the
// FSM then does, and checks the snapshot opens as that data.
func streamInstead(t *testing.T, s *snapshotStore, sink *snapshotSink, data string) {
	t.Helper()
	if _, err := sink.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if _, got := readSnapshot(t, s, sink.ID()); string(got) != data {
		t.Fatalf("Open = %q, want %q", got, data)
	}
}

func TestSnapshotStreamSurvivesItsSnapshotBeingReaped(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	big := strings.Repeat("x", 256<<10) // more than the pipe hands over at once
	id, want := keepCheckpoint(t, s, dataDir, 10, map[string]string{"a.sst": big, "b.sst": "b"})
	meta, rc, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1000)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatal(err)
	}
	// Two newer snapshots: the store keeps two, so the first is reaped.
	keepCheckpoint(t, s, dataDir, 20, map[string]string{"c.sst": "c"})
	keepCheckpoint(t, s, dataDir, 30, map[string]string{"d.sst": "d"})
	if _, err := os.Stat(filepath.Join(s.dir, id)); !os.IsNotExist(err) {
		t.Fatalf("snapshot %s was not reaped: %v", id, err)
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading a reaped snapshot's stream: %v", err)
	}
	rc.Close()
	if got := append(first, rest...); !bytes.Equal(got, want) || int64(len(got)) != meta.Size {
		t.Fatalf("stream of the reaped snapshot: %d bytes (meta.Size %d), want %d", len(got), meta.Size, len(want))
	}
	if _, _, err := s.Open(id); err == nil {
		t.Fatal("Open of a reaped snapshot succeeded")
	}
	if left := streamsLeft(t, s); len(left) != 0 {
		t.Fatalf("links left by a failed Open: %v", left)
	}
}

func TestSnapshotStreamClosedEarlyLeavesNothing(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	id, _ := keepCheckpoint(t, s, dataDir, 10, map[string]string{"a.sst": strings.Repeat("y", 1<<20)})
	_, rc, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if left := streamsLeft(t, s); len(left) != 1 {
		t.Fatalf("a stream being read has %d link folders, want 1", len(left))
	}
	rc.Close() // waits for the writer to stop
	if left := streamsLeft(t, s); len(left) != 0 {
		t.Fatalf("links of a closed stream left behind: %v", left)
	}
}

func TestSnapshotStoreRemovesWhatACrashLeft(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	kept, _ := keepCheckpoint(t, s, dataDir, 10, map[string]string{"a.sst": "a"})
	// A snapshot whose checkpoint was moved in, then the process died.
	sink := createSink(t, s, 20)
	if err := sink.KeepCheckpoint(makeCheckpoint(t, dataDir, "ck-20", map[string]string{"b.sst": "b"})); err != nil {
		t.Fatal(err)
	}
	// And a stream in progress.
	_, rc, err := s.Open(kept)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	s2 := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	if _, err := os.Stat(sink.tmpDir); !os.IsNotExist(err) {
		t.Fatalf("unfinished snapshot %s survived a restart: %v", sink.tmpDir, err)
	}
	if left := streamsLeft(t, s2); len(left) != 0 {
		t.Fatalf("stream links survived a restart: %v", left)
	}
	list, err := s2.List()
	if err != nil || len(list) != 1 || list[0].ID != kept {
		t.Fatalf("List after restart = %v, %v; want only %s", list, err, kept)
	}
	readSnapshot(t, s2, kept)
}

func TestCancelledSnapshotTakesItsCheckpointAlong(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	sink := createSink(t, s, 10)
	if err := sink.KeepCheckpoint(makeCheckpoint(t, dataDir, "ck", map[string]string{"a.sst": "a"})); err != nil {
		t.Fatal(err)
	}
	if err := sink.Cancel(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sink.tmpDir); !os.IsNotExist(err) {
		t.Fatalf("cancelled snapshot's folder still there: %v", err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("List after a cancelled snapshot = %v", list)
	}
}

// A snapshot whose completion fails before it is moved into place (here
// its metadata cannot be written) leaves neither its folder nor the
// checkpoint in it: Cancel cannot remove them once Close has run, and each
// would pin the checkpoint's tables until the next start.
func TestSnapshotThatFailsToCloseLeavesNothing(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	sink := createSink(t, s, 10)
	if err := sink.KeepCheckpoint(makeCheckpoint(t, dataDir, "ck", map[string]string{"a.sst": "a"})); err != nil {
		t.Fatal(err)
	}
	// The file store writes meta.json into the folder again on Close: a
	// directory in its place makes that fail.
	meta := filepath.Join(sink.tmpDir, "meta.json")
	if err := os.Remove(meta); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(meta, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err == nil {
		t.Fatal("Close succeeded with its metadata unwritable")
	}
	if _, err := os.Stat(sink.tmpDir); !os.IsNotExist(err) {
		t.Fatalf("the failed snapshot's folder is still there: %v", err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("List after a failed snapshot = %v", list)
	}
}

// A checkpoint the sink cannot move (here its destination is taken; across
// file systems the rename fails the same way) stays where it was, the sink
// holds no data, and the caller streams into the same sink instead.
func TestKeepCheckpointThatCannotMoveLeavesItInPlace(t *testing.T) {
	dataDir := t.TempDir()
	s := newTestSnapshotStore(t, dataDir, openFakeCheckpoint)
	dir := makeCheckpoint(t, dataDir, "ck", map[string]string{"a.sst": "a"})
	sink := createSink(t, s, 10)
	if err := os.MkdirAll(filepath.Join(sink.tmpDir, checkpointFolder, "occupied"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := sink.KeepCheckpoint(dir); err == nil {
		t.Fatal("KeepCheckpoint into an occupied folder succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "a.sst")); err != nil {
		t.Fatalf("the checkpoint did not stay in place: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(sink.tmpDir, checkpointFolder)); err != nil {
		t.Fatal(err)
	}
	streamInstead(t, s, sink, "MBXSNAP1 the stream instead")
}

// A kept checkpoint that cannot be read fails Open cleanly: no links left
// behind, and no hold on the log.
func TestUnreadableCheckpointFailsOpenCleanly(t *testing.T) {
	dataDir := t.TempDir()
	h, _ := newTestHold()
	broken := func(dir string) (CheckpointReader, error) { return nil, errors.New("corrupt checkpoint") }
	s, err := newSnapshotStore(filepath.Join(dataDir, "raft"), 2, broken, h, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := keepCheckpoint(t, s, dataDir, 10, map[string]string{"a.sst": "a"})
	if _, _, err := s.Open(id); err == nil || !strings.Contains(err.Error(), "corrupt checkpoint") {
		t.Fatalf("Open of an unreadable checkpoint: %v", err)
	}
	if left := streamsLeft(t, s); len(left) != 0 {
		t.Fatalf("links left by a failed Open: %v", left)
	}
	wantFloor(t, h, 0, false)
	// An id the store does not list fails before any hold starts.
	if _, _, err := s.Open("3-99-1"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("Open of an unknown snapshot: %v", err)
	}
	wantFloor(t, h, 0, false)
}

// slowSizeCheckpoint stops in StreamSize until told to go on, as a walk of
// a large checkpoint takes seconds.
type slowSizeCheckpoint struct {
	CheckpointReader
	walking, proceed chan struct{}
}

func (c *slowSizeCheckpoint) StreamSize() (int64, error) {
	close(c.walking)
	<-c.proceed
	return c.CheckpointReader.StreamSize()
}

// The log is held from before Open walks a checkpoint for its length: a
// compaction for a newer snapshot meanwhile must keep the entries after
// the snapshot being opened, which the node it is sent to asks for next.
// The hold used to start only once Open returned, and lost them (found in
// review: one extra snapshot install per hit).
func TestSnapshotOpenHoldsTheLogWhileItSizesTheStream(t *testing.T) {
	dataDir := t.TempDir()
	h := newLogHold(hclog.NewNullLogger())
	walking, proceed := make(chan struct{}), make(chan struct{})
	slow := func(dir string) (CheckpointReader, error) {
		ck, err := openFakeCheckpoint(dir)
		if err != nil {
			return nil, err
		}
		return &slowSizeCheckpoint{CheckpointReader: ck, walking: walking, proceed: proceed}, nil
	}
	s, err := newSnapshotStore(filepath.Join(dataDir, "raft"), 2, slow, h, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	id, _ := keepCheckpoint(t, s, dataDir, 100, map[string]string{"a.sst": "a"})
	mem := raft.NewInmemStore()
	for i := uint64(1); i <= 200; i++ {
		if err := mem.StoreLog(&raft.Log{Index: i, Term: 3}); err != nil {
			t.Fatal(err)
		}
	}
	log := gapLog{LogStore: mem, hold: h}

	type opened struct {
		rc  io.ReadCloser
		err error
	}
	done := make(chan opened, 1)
	go func() { _, rc, err := s.Open(id); done <- opened{rc, err} }() // as raft's sendLatestSnapshot
	<-walking
	// Meanwhile the leader snapshots at 150 and compacts with 50 trailing entries.
	if err := log.DeleteRange(1, 150); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	defer o.rc.Close()
	for _, i := range []uint64{100, 101, 150} {
		var l raft.Log
		if err := mem.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d (the snapshot being sent is at 100) was compacted while Open sized the stream: %v", i, err)
		}
	}
}
