package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	st, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func commitSet(t testing.TB, st *Store, kv map[string][]byte) {
	b := st.NewBatch()
	defer b.Close()
	for k, v := range kv {
		if err := b.set(k, v); err != nil {
			t.Error(err)
			return
		}
	}
	if err := b.Commit(); err != nil {
		t.Error(err)
	}
}

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// A view must never see a cached value its snapshot would not hold. Commit
// i sets keys a and b to i when i is odd and deletes both when it is even,
// so in one view they are both absent or equal, and a reader's successive
// views never go back in time (a value, then its deletion, then that value
// again would be a stale cache entry).
func TestCacheViewsMatchTheirSnapshots(t *testing.T) {
	st := openTestStore(t)
	const commits = 3000
	var wg sync.WaitGroup
	done := make(chan struct{})
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var floor uint64 // the oldest state this reader may still see
			for {
				select {
				case <-done:
					return
				default:
				}
				err := st.Read(func(v *View) error {
					var got [3][]byte
					for i, k := range []string{"c/a", "c/b", "c/a"} { // the second a possibly from the cache
						val, err := v.get(k)
						if err != nil && !errors.Is(err, ErrNotFound) {
							return err
						}
						got[i] = val
					}
					if !bytes.Equal(got[0], got[1]) || !bytes.Equal(got[0], got[2]) {
						return fmt.Errorf("one view read a=%x b=%x a again=%x", got[0], got[1], got[2])
					}
					if got[0] == nil {
						return nil
					}
					n := binary.BigEndian.Uint64(got[0])
					if n < floor {
						return fmt.Errorf("read value %d after a later state (%d)", n, floor)
					}
					floor = n
					return nil
				})
				if err == nil {
					// Absent now: every value before this is gone for good.
					err = st.Read(func(v *View) error {
						if _, err := v.get("c/a"); errors.Is(err, ErrNotFound) && floor%2 == 1 {
							floor++ // the deletion after the value last seen
						}
						return nil
					})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := uint64(1); i <= commits; i++ {
		b := st.NewBatch()
		for _, k := range []string{"c/a", "c/b"} {
			if i%2 == 1 {
				b.set(k, u64(i))
			} else {
				b.del(k)
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	commitSet(t, st, map[string][]byte{"c/a": u64(commits + 1)})
	err := st.Read(func(v *View) error {
		a, err := v.get("c/a")
		if err == nil && binary.BigEndian.Uint64(a) != commits+1 {
			err = fmt.Errorf("after the last commit a=%d, want %d", binary.BigEndian.Uint64(a), commits+1)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A batch reads its own writes and deletions, not the cache.
func TestCacheBatchSeesItsOwnWrites(t *testing.T) {
	st := openTestStore(t)
	commitSet(t, st, map[string][]byte{"p/x": []byte("old"), "p/y": []byte("y"), "q/z": []byte("z")})
	// Warm the cache.
	_ = st.Read(func(v *View) error { v.get("p/x"); v.get("p/y"); v.get("q/z"); return nil })

	b := st.NewBatch()
	if err := b.set("p/x", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got, err := b.get("p/x"); err != nil || string(got) != "new" {
		t.Fatalf("batch read of its own write: %q, %v", got, err)
	}
	if err := b.delPrefix("p/"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.get("p/y"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("batch read of a key in a range it deleted: %v, want not found", err)
	}
	if got, err := b.get("q/z"); err != nil || string(got) != "z" {
		t.Fatalf("batch read of an untouched key: %q, %v", got, err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	err := st.Read(func(v *View) error {
		for _, k := range []string{"p/x", "p/y"} {
			if _, err := v.get(k); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("%s after the range deletion: %v, want not found", k, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// What a caller does with a value it got must not change the cache.
func TestCacheValuesAreCopies(t *testing.T) {
	st := openTestStore(t)
	commitSet(t, st, map[string][]byte{"k": []byte("value")})
	for i := 0; i < 2; i++ {
		_ = st.Read(func(v *View) error {
			got, err := v.get("k")
			if err != nil || string(got) != "value" {
				t.Fatalf("read %d: %q, %v", i, got, err)
			}
			got[0] = 'X'
			return nil
		})
	}
}

// A restore replaces the database; nothing cached from before survives.
func TestCacheForgetsEverythingOnRestore(t *testing.T) {
	src := openTestStore(t)
	commitSet(t, src, map[string][]byte{"k": []byte("from the snapshot")})
	buf := bytes.NewBuffer(snapshotStream(t, src))

	st := openTestStore(t)
	commitSet(t, st, map[string][]byte{"k": []byte("before the restore")})
	_ = st.Read(func(v *View) error { v.get("k"); return nil })
	if err := st.Restore(buf); err != nil {
		t.Fatal(err)
	}
	_ = st.Read(func(v *View) error {
		if got, err := v.get("k"); err != nil || string(got) != "from the snapshot" {
			t.Fatalf("after restore: %q, %v", got, err)
		}
		return nil
	})
}

// The cache holds at most cacheMaxBytes of values.
func TestCacheIsBounded(t *testing.T) {
	c := newRecordCache()
	val := make([]byte, cacheMaxValue)
	for i := 0; i < 3*cacheMaxBytes/cacheMaxValue; i++ {
		c.offer(fmt.Sprintf("k%d", i), val, c.gen)
		if c.bytes > cacheMaxBytes {
			t.Fatalf("after %d values: %d bytes cached, bound %d", i+1, c.bytes, cacheMaxBytes)
		}
	}
	c.offer("big", make([]byte, cacheMaxValue+1), c.gen)
	if _, ok := c.lookup("big", c.gen); ok {
		t.Fatal("a value over cacheMaxValue was cached")
	}
}

// The cache's byte count stays the sum of its entries' sizes while a full
// cache has its records rewritten larger: each such commit that finds no
// room evicts about a tenth of the entries, and the record being replaced
// must not be counted out twice if the eviction picks it (it once was, so
// the count drifted low and the bound stopped holding).
func TestCacheCountsItsBytesExactly(t *testing.T) {
	c := newRecordCache()
	counted := func() int {
		n := 0
		for _, e := range c.entries {
			n += e.size()
		}
		return n
	}
	small, large := make([]byte, cacheMaxValue/2), make([]byte, cacheMaxValue)
	next := 0
	fill := func() { // as readers would, with small records
		for range cacheMaxBytes / len(small) {
			c.offer(fmt.Sprintf("k%d", next), small, c.gen)
			next++
		}
	}
	fill()
	evictions := 0
	for evictions < 100 {
		key := ""
		for k, e := range c.entries {
			if len(e.val) == len(small) {
				key = k
				break
			}
		}
		if key == "" {
			fill()
			continue
		}
		before := len(c.entries)
		w := &batchWrites{cache: c}
		w.set(key, large)
		if err := c.commit(w, func() error { return nil }); err != nil {
			t.Fatal(err)
		}
		if len(c.entries) >= before {
			continue
		}
		evictions++
		if got, want := c.bytes, counted(); got != want {
			t.Fatalf("after %d evictions: count %d bytes, entries hold %d", evictions, got, want)
		}
		if c.bytes > cacheMaxBytes {
			t.Fatalf("after %d evictions: %d bytes cached, bound %d", evictions, c.bytes, cacheMaxBytes)
		}
	}
}

func testSecretRecord(id, projectID, name string) *fsmpb.SecretRecord {
	return &fsmpb.SecretRecord{Secret: &pb.Secret{
		Metadata: &pb.Metadata{Id: id, ParentId: projectID, Name: name, ResourceVersion: 1},
		Status:   &pb.SecretStatus{State: pb.State_ACTIVE},
	}}
}

func putSecretRec(t testing.TB, st *Store, rec *fsmpb.SecretRecord) {
	t.Helper()
	b := st.NewBatch()
	defer b.Close()
	if err := b.PutSecret(rec); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

func sharedSecret(t testing.TB, st *Store, id string) *fsmpb.SecretRecord {
	t.Helper()
	var rec *fsmpb.SecretRecord
	if err := st.Read(func(v *View) error {
		var err error
		rec, err = v.SharedSecret(id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A record read through SharedSecret is decoded once while it stays the
// same, and a write replaces it: readers after the commit get the new
// record, readers of an older snapshot the old one.
func TestSharedRecordsAreDecodedOnceAndFollowWrites(t *testing.T) {
	st := openTestStore(t)
	putSecretRec(t, st, testSecretRecord("mbsec-1", "project-a", "db"))

	first := sharedSecret(t, st, "mbsec-1") // from Pebble: now cached
	second := sharedSecret(t, st, "mbsec-1")
	third := sharedSecret(t, st, "mbsec-1")
	if second != third {
		t.Fatal("a cached record was decoded again for another reader")
	}
	if !proto.Equal(first, second) || second.GetSecret().GetMetadata().GetName() != "db" {
		t.Fatalf("shared record %v, want %v", second, first)
	}

	// A snapshot taken before the rename keeps seeing the old record.
	err := st.Read(func(old *View) error {
		renamed := testSecretRecord("mbsec-1", "project-a", "db-renamed")
		putSecretRec(t, st, renamed)
		got, err := old.SharedSecret("mbsec-1")
		if err != nil {
			return err
		}
		if name := got.GetSecret().GetMetadata().GetName(); name != "db" {
			t.Errorf("a snapshot from before the write read %q", name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if name := sharedSecret(t, st, "mbsec-1").GetSecret().GetMetadata().GetName(); name != "db-renamed" {
			t.Fatalf("read %d after the write: %q", i, name)
		}
	}
}

// The FSM modifies what it reads through its batch: a batch's view never
// hands out (or stores) a shared message.
func TestBatchViewsNeverShareRecords(t *testing.T) {
	st := openTestStore(t)
	putSecretRec(t, st, testSecretRecord("mbsec-1", "project-a", "db"))
	sharedSecret(t, st, "mbsec-1")
	shared := sharedSecret(t, st, "mbsec-1") // decoded and kept

	b := st.NewBatch()
	defer b.Close()
	rec, err := b.SharedSecret("mbsec-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec == shared {
		t.Fatal("a batch's view got the shared record")
	}
	rec.Secret.Metadata.Name = "changed in the batch"
	if name := sharedSecret(t, st, "mbsec-1").GetSecret().GetMetadata().GetName(); name != "db" {
		t.Fatalf("a batch's change reached other readers before commit: %q", name)
	}
}

// Decoded records count towards the cache's bound, and leave the count
// when their entry goes.
func TestSharedRecordsCountTowardsTheBound(t *testing.T) {
	st := openTestStore(t)
	putSecretRec(t, st, testSecretRecord("mbsec-1", "project-a", "db"))
	sharedSecret(t, st, "mbsec-1")
	st.cache.mu.RLock()
	rawOnly := st.cache.bytes
	st.cache.mu.RUnlock()
	sharedSecret(t, st, "mbsec-1")
	st.cache.mu.RLock()
	withDecoded := st.cache.bytes
	st.cache.mu.RUnlock()
	if withDecoded <= rawOnly {
		t.Fatalf("cache bytes %d with a decoded record, %d without", withDecoded, rawOnly)
	}

	b := st.NewBatch()
	if err := b.DeleteSecret(testSecretRecord("mbsec-1", "project-a", "db")); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	st.cache.mu.RLock()
	defer st.cache.mu.RUnlock()
	if st.cache.bytes != 0 || len(st.cache.entries) != 0 {
		t.Fatalf("after deleting the only cached record: %d bytes, %d entries", st.cache.bytes, len(st.cache.entries))
	}
}
