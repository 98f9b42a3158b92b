package store_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// writeBulk commits enough payload (≈ 6 MiB, more than a memtable) that
// Pebble flushes some of it to sstables, so a checkpoint has both tables
// to link and a WAL to copy.
func writeBulk(t *testing.T, st *store.Store, tag string) {
	t.Helper()
	for b := 0; b < 3; b++ {
		write(t, st, func(batch *store.Batch) error {
			for i := 0; i < 32; i++ {
				ct := make([]byte, 64<<10)
				rand.Read(ct)
				vid := fmt.Sprintf("mbsecver-%s-%d-%02d", tag, b, i)
				if err := batch.PutEntry(vid, &fsmpb.SealedEntry{Key: "k", Nonce: []byte("nonce"), Ciphertext: ct}); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

func checkpointStream(t *testing.T, dir string) []byte {
	t.Helper()
	r, err := store.OpenCheckpoint(dir, nil)
	if err != nil {
		t.Fatalf("OpenCheckpoint: %v", err)
	}
	defer r.Close()
	size, err := r.StreamSize()
	if err != nil {
		t.Fatalf("StreamSize: %v", err)
	}
	var buf bytes.Buffer
	n, err := r.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) || size != n {
		t.Fatalf("StreamSize %d, WriteTo reported %d, wrote %d bytes", size, n, buf.Len())
	}
	return buf.Bytes()
}

func TestCheckpointStreamsTheStateItWasTakenAt(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	writeBulk(t, st, "early")
	populate(t, st) // the applied index 42/3, left in the memtable and WAL
	want := snapshotBytes(t, st)
	wantHash := hashOf(t, st)

	ck, err := st.Checkpoint()
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if !isUnder(ck.Dir(), dir) {
		t.Fatalf("checkpoint %s is not under the store's directory %s", ck.Dir(), dir)
	}
	tables, _ := filepath.Glob(filepath.Join(ck.Dir(), "*.sst"))
	wals, _ := filepath.Glob(filepath.Join(ck.Dir(), "*.log"))
	if len(tables) == 0 || len(wals) == 0 {
		t.Fatalf("checkpoint has %d sstables and %d WAL files; the test wants both", len(tables), len(wals))
	}

	// Writes after the checkpoint, including flushed ones, do not reach it.
	writeBulk(t, st, "late")
	write(t, st, func(b *store.Batch) error { return b.SetAppliedIndex(43, 3) })

	if got := checkpointStream(t, ck.Dir()); !bytes.Equal(got, want) {
		t.Fatalf("checkpoint stream (%d bytes) differs from the snapshot stream taken at the same point (%d bytes)", len(got), len(want))
	}
	r, err := store.OpenCheckpoint(ck.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	idx, term, err := r.AppliedIndex()
	r.Close()
	if err != nil || idx != 42 || term != 3 {
		t.Fatalf("checkpoint AppliedIndex = %d, %d, %v; want 42, 3", idx, term, err)
	}

	// Checkpoint.WriteTo gives the same stream, and it restores exactly.
	var buf bytes.Buffer
	if _, err := ck.WriteTo(&buf); err != nil {
		t.Fatalf("Checkpoint.WriteTo: %v", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("Checkpoint.WriteTo differs from the snapshot stream")
	}
	dst := openStore(t, t.TempDir())
	if err := dst.Restore(&buf); err != nil {
		t.Fatalf("Restore from a checkpoint stream: %v", err)
	}
	if got := hashOf(t, dst); got != wantHash {
		t.Fatalf("restored hash %s, want %s", got, wantHash)
	}

	// The checkpoint outlives the database it was taken from: a restore
	// replaces (and deletes) that database, the links keep the tables.
	if err := st.Restore(bytes.NewReader(snapshotBytes(t, openStore(t, t.TempDir())))); err != nil {
		t.Fatal(err)
	}
	if got := checkpointStream(t, ck.Dir()); !bytes.Equal(got, want) {
		t.Fatal("checkpoint stream changed after the store was restored over")
	}

	if err := ck.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ck.Dir()); !os.IsNotExist(err) {
		t.Fatalf("checkpoint still there after Remove: %v", err)
	}
}

func TestOpenCheckpointRefusesAMissingDirectory(t *testing.T) {
	if _, err := store.OpenCheckpoint(filepath.Join(t.TempDir(), "gone"), nil); err == nil {
		t.Fatal("OpenCheckpoint of a missing directory succeeded")
	}
}

func TestOpenRemovesCheckpointsLeftByACrash(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	populate(t, st)
	ck, err := st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	want := hashOf(t, st)
	st.Close() // as if the process died before the checkpoint was handed over

	st = openStore(t, dir)
	if _, err := os.Stat(ck.Dir()); !os.IsNotExist(err) {
		t.Fatalf("stale checkpoint %s survived reopening: %v", ck.Dir(), err)
	}
	if got := hashOf(t, st); got != want {
		t.Fatalf("store changed by reopening: %s, want %s", got, want)
	}
	if _, err := st.Checkpoint(); err != nil {
		t.Fatalf("Checkpoint after reopening: %v", err)
	}
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && (len(rel) < 3 || rel[:3] != "../")
}
