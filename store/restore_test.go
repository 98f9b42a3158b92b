package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// A restore whose directory sync fails after CURRENT was renamed keeps
// both databases: whichever name CURRENT holds after a crash (the new one,
// or the old one if the rename was lost), its database is there. It once
// deleted the new database and went on with the old one while CURRENT
// already named the new: the next start found CURRENT pointing at nothing,
// removed the old database as stale and came up empty.
func TestRestoreKeepsBothDatabasesWhenTheDirectorySyncFails(t *testing.T) {
	src := openTestStore(t)
	commitSet(t, src, map[string][]byte{"m/restored": []byte("yes")})
	stream := snapshotStream(t, src)

	dir := t.TempDir()
	st, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	commitSet(t, st, map[string][]byte{"m/original": []byte("yes")})
	oldDir, newDir := st.dbDir(st.dbNo), st.dbDir(st.dbNo+1)

	realSync := syncDir
	syncDir = func(string) error { return errors.New("injected: directory sync failed") }
	err = st.Restore(bytes.NewReader(stream))
	syncDir = realSync
	if err != nil {
		t.Fatalf("Restore: %v (the new database is complete and CURRENT names it)", err)
	}
	assertKeys(t, st, "after the restore", "m/restored")
	for _, d := range []string{oldDir, newDir} {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("%s: %v (both databases must stay until the next start)", d, err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// A crash that lost the rename: CURRENT is back on the old database.
	lost := t.TempDir()
	if err := os.CopyFS(lost, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	back := &Store{dir: lost}
	if err := back.writeCurrent(1); err != nil {
		t.Fatal(err)
	}
	reopened, err := Open(lost, nil)
	if err != nil {
		t.Fatal(err)
	}
	assertKeys(t, reopened, "reopened on the old name", "m/original")
	reopened.Close()

	// The rename survived: the new database, and the old one is removed.
	reopened, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reopened.Close()
	assertKeys(t, reopened, "reopened on the new name", "m/restored")
	if _, err := os.Stat(oldDir); !os.IsNotExist(err) {
		t.Fatalf("%s still there after the next start: %v", oldDir, err)
	}
}

// assertKeys checks that exactly one of the two marker keys is present.
func assertKeys(t *testing.T, st *Store, when, want string) {
	t.Helper()
	if err := st.Read(func(v *View) error {
		for _, k := range []string{"m/original", "m/restored"} {
			_, err := v.get(k)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			if found := err == nil; found != (k == want) {
				t.Errorf("%s: %s present = %v, want %v", when, k, found, k == want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A snapshot whose applied index is malformed is refused by verification
// and by Restore, before CURRENT moves: the FSM reads that index after
// every restore and at start, and a bad one made hashicorp/raft panic on a
// stream that had passed verification, then the node refuse to start.
func TestSnapshotWithACorruptAppliedIndexIsRefused(t *testing.T) {
	src := openTestStore(t)
	commitSet(t, src, map[string][]byte{keyApplied: {1, 2, 3}, prefixKekCheck + "k1": []byte("check")})
	stream := snapshotStream(t, src)
	if _, _, err := ReplaceRegionIdentity(bytes.NewReader(stream), io.Discard, RegionIdentity{}); err == nil || !strings.Contains(err.Error(), "applied index") {
		t.Fatalf("verifying the stream: %v, want a refusal naming the applied index", err)
	}
	dst := openTestStore(t)
	commitSet(t, dst, map[string][]byte{"m/original": []byte("yes")})
	if err := dst.Restore(bytes.NewReader(stream)); err == nil {
		t.Fatal("Restore accepted a corrupt applied index")
	}
	assertKeys(t, dst, "after the refused restore", "m/original")
}

// A verifying read returns the key check values and the applied index a
// snapshot holds.
func TestSnapshotInfoHasKeyChecksAndAppliedIndex(t *testing.T) {
	src := openTestStore(t)
	commitSet(t, src, map[string][]byte{prefixKekCheck + "k1": []byte("c1"), prefixKekCheck + "k2": []byte("c2"), "m/other": []byte("x")})
	b := src.NewBatch()
	if err := b.SetAppliedIndex(42, 7); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	stream := snapshotStream(t, src)
	_, info, err := ReplaceRegionIdentity(bytes.NewReader(stream), io.Discard, RegionIdentity{})
	if err != nil {
		t.Fatal(err)
	}
	if len(info.KeyChecks) != 2 || string(info.KeyChecks["k1"]) != "c1" || string(info.KeyChecks["k2"]) != "c2" {
		t.Fatalf("key checks = %q, want k1=c1 and k2=c2", info.KeyChecks)
	}
	if info.AppliedIndex != 42 || info.AppliedTerm != 7 {
		t.Fatalf("applied index %d term %d, want 42 and 7", info.AppliedIndex, info.AppliedTerm)
	}
}

// RestoreForNewRegion loads the applied index as zero in the restored
// database itself (a separate reset after the restore could be lost to a
// crash, and the FSM would skip the new region's first entries), leaves
// the old registry out and records the new cluster's id; Restore keeps
// all three.
func TestRestoreForNewRegionStartsAtIndexZero(t *testing.T) {
	src := openTestStore(t)
	b := src.NewBatch()
	if err := b.SetAppliedIndex(42, 7); err != nil {
		t.Fatal(err)
	}
	if err := b.set("m/restored", []byte("yes")); err != nil {
		t.Fatal(err)
	}
	if err := b.PutNode(&fsmpb.NodeRecord{NodeId: "old-4", Removed: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetBootstrapped("cluster-old"); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	stream := snapshotStream(t, src)
	newRegion := func(st *Store, r io.Reader) error { return st.RestoreForNewRegion(r, "cluster-new") }

	for _, c := range []struct {
		name              string
		restore           func(*Store, io.Reader) error
		wantIndex, wantTm uint64
		wantNodes         int // the old region's registry (a removal tombstone)
		wantCluster       string
	}{
		{"Restore", (*Store).Restore, 42, 7, 1, "cluster-old"},
		{"RestoreForNewRegion", newRegion, 0, 0, 0, "cluster-new"},
	} {
		dst := openTestStore(t)
		if err := c.restore(dst, bytes.NewReader(stream)); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		idx, term, err := dst.AppliedIndex()
		if err != nil || idx != c.wantIndex || term != c.wantTm {
			t.Fatalf("%s: applied index %d term %d (%v), want %d and %d", c.name, idx, term, err, c.wantIndex, c.wantTm)
		}
		assertKeys(t, dst, c.name, "m/restored")
		if n := len(nodesOf(t, dst)); n != c.wantNodes {
			t.Fatalf("%s: %d node records, want %d", c.name, n, c.wantNodes)
		}
		if err := dst.Read(func(v *View) error {
			id, err := v.ClusterID()
			if err == nil && id != c.wantCluster {
				err = fmt.Errorf("cluster id %q, want %q", id, c.wantCluster)
			}
			return err
		}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	if err := openTestStore(t).RestoreForNewRegion(bytes.NewReader(stream), ""); err == nil {
		t.Fatal("a new region restored without a cluster id")
	}
}

func nodesOf(t *testing.T, st *Store) []*fsmpb.NodeRecord {
	t.Helper()
	var nodes []*fsmpb.NodeRecord
	if err := st.Read(func(v *View) error {
		var err error
		nodes, err = v.Nodes()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return nodes
}

// ReplaceRegionIdentity puts the given registry and cluster id in place of the stream's
// own, keeps everything else, and writes a stream that verifies; a
// corrupt input is refused.
func TestReplaceRegionIdentity(t *testing.T) {
	src := openTestStore(t)
	commitSet(t, src, map[string][]byte{"a/first": []byte("1"), "z/last": []byte("2"), "m/restored": []byte("yes")})
	b := src.NewBatch()
	if err := b.SetBootstrapped("cluster-of-the-backup"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*fsmpb.NodeRecord{{NodeId: "backup-1", RaftAddress: "10.0.0.1:7001"}, {NodeId: "gone", Removed: true}} {
		if err := b.PutNode(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	stream := snapshotStream(t, src)
	current := []*fsmpb.NodeRecord{{NodeId: "now-2", RaftAddress: "10.0.0.2:7001"}, {NodeId: "now-1", Removed: true}}
	var out bytes.Buffer
	n, _, err := ReplaceRegionIdentity(bytes.NewReader(stream), &out, RegionIdentity{ClusterID: "cluster-here", Nodes: current})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(out.Len()) {
		t.Fatalf("returned length %d, wrote %d", n, out.Len())
	}
	dst := openTestStore(t)
	if err := dst.Restore(bytes.NewReader(out.Bytes())); err != nil {
		t.Fatalf("the rewritten stream does not restore: %v", err)
	}
	got := nodesOf(t, dst)
	if len(got) != 2 || got[0].GetNodeId() != "now-1" || !got[0].GetRemoved() || got[1].GetNodeId() != "now-2" || got[1].GetRaftAddress() != "10.0.0.2:7001" {
		t.Fatalf("registry after the rewrite: %v, want now-1 (removed) and now-2", got)
	}
	if err := dst.Read(func(v *View) error {
		id, err := v.ClusterID()
		if err == nil && id != "cluster-here" {
			err = fmt.Errorf("cluster id %q, want cluster-here", id)
		}
		return err
	}); err != nil {
		t.Fatalf("after the rewrite: %v", err)
	}
	for _, k := range []string{"a/first", "z/last", "m/restored"} {
		if err := dst.Read(func(v *View) error { _, err := v.get(k); return err }); err != nil {
			t.Errorf("%s lost in the rewrite: %v", k, err)
		}
	}
	src2, err := src.ContentHash()
	if err != nil {
		t.Fatal(err)
	}
	if dst2, err := dst.ContentHash(); err != nil || dst2 != src2 {
		t.Fatalf("content hash %s (%v), want the source's %s", dst2, err, src2)
	}
	// Keys stay in order: a stream written from the restored store is the
	// rewritten one, byte for byte.
	if again := snapshotStream(t, dst); !bytes.Equal(again, out.Bytes()) {
		t.Fatal("the rewritten stream is not in key order")
	}
	corrupt := append([]byte(nil), stream...)
	corrupt[len(corrupt)/2] ^= 0xff
	if _, _, err := ReplaceRegionIdentity(bytes.NewReader(corrupt), io.Discard, RegionIdentity{Nodes: current}); err == nil {
		t.Fatal("a corrupt stream was rewritten")
	}
}

// snapshotStream returns st's snapshot stream.
func snapshotStream(t *testing.T, st *Store) []byte {
	t.Helper()
	ck, err := st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Remove()
	var stream bytes.Buffer
	if _, err := ck.WriteTo(&stream); err != nil {
		t.Fatal(err)
	}
	return stream.Bytes()
}
