package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

func waitIdemReady(t *testing.T, st *Store) *idemKeys {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st.mu.RLock()
		k := st.idem
		st.mu.RUnlock()
		k.mu.Lock()
		ready := k.ready
		k.mu.Unlock()
		if ready {
			return k
		}
		if time.Now().After(deadline) {
			t.Fatal("the idempotency key scan did not finish")
		}
		time.Sleep(time.Millisecond)
	}
}

func idemRec(n int) *fsmpb.IdempotencyRecord {
	return &fsmpb.IdempotencyRecord{RequestHash: []byte{byte(n)}, ExpiresUnixNano: int64(1000 + n)}
}

// inBatch reports whether a batch's view finds key.
func inBatch(t *testing.T, b *Batch, key string) bool {
	t.Helper()
	_, err := b.Idempotency(key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// The property the FSM relies on: whatever a batch's view would find in
// Pebble, it finds with the filter too — through random batches of writes
// and deletions (the same key deleted and written again in one batch
// included), some committed and some abandoned, and across a reopen.
func TestIdempotencyKeysNeverHideAKey(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitIdemReady(t, st)
	rng := rand.New(rand.NewSource(1))
	committed := map[string]*fsmpb.IdempotencyRecord{}
	key := func() string { return fmt.Sprintf("key-%d", rng.Intn(60)) }
	check := func(b *Batch, want map[string]*fsmpb.IdempotencyRecord, when string) {
		for i := 0; i < 60; i++ {
			k := fmt.Sprintf("key-%d", i)
			_, has := want[k]
			if got := inBatch(t, b, k); got != has {
				t.Fatalf("%s: %s found=%v, want %v", when, k, got, has)
			}
		}
	}
	for round := 0; round < 300; round++ {
		if round == 150 { // across a restart: the scan must find them all
			st.Close()
			if st, err = Open(dir, nil); err != nil {
				t.Fatal(err)
			}
			waitIdemReady(t, st)
		}
		b := st.NewBatch()
		state := map[string]*fsmpb.IdempotencyRecord{}
		for k, r := range committed {
			state[k] = r
		}
		for op := 0; op < 1+rng.Intn(6); op++ {
			k := key()
			if r, ok := state[k]; ok && rng.Intn(2) == 0 {
				if err := b.DeleteIdempotency(k, r); err != nil {
					t.Fatal(err)
				}
				delete(state, k)
			} else {
				r := idemRec(round)
				if err := b.PutIdempotency(k, r); err != nil {
					t.Fatal(err)
				}
				state[k] = r
			}
			check(b, state, fmt.Sprintf("round %d, inside the batch", round))
		}
		if rng.Intn(4) == 0 {
			b.Close() // abandoned
		} else {
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			committed = state
		}
		nb := st.NewBatch()
		check(nb, committed, fmt.Sprintf("round %d, after the batch", round))
		nb.Close()
	}
	st.Close()
}

// Once the scan is done a key never written is ruled out without a lookup,
// and keys of the store are all known — also those written while the scan
// ran (a batch adds them itself).
func TestIdempotencyKeysScanFindsTheStoresKeys(t *testing.T) {
	st := openTestStore(t)
	b := st.NewBatch()
	for i := 0; i < 5000; i++ {
		if err := b.PutIdempotency(fmt.Sprintf("stored-%d", i), idemRec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}

	k := newIdemKeys()
	k.add(k.fingerprint("written-during-the-scan"))
	if k.mayHold("never-written") != true {
		t.Fatal("before its scan the filter ruled a key out")
	}
	k.scan(st.db, st.logger)
	for i := 0; i < 5000; i++ {
		if !k.mayHold(fmt.Sprintf("stored-%d", i)) {
			t.Fatalf("stored-%d is in the store but ruled out", i)
		}
	}
	if !k.mayHold("written-during-the-scan") {
		t.Fatal("a key added while the scan ran was lost")
	}
	misses := 0
	for i := 0; i < 1000; i++ {
		if k.mayHold(fmt.Sprintf("never-written-%d", i)) {
			misses++
		}
	}
	if misses != 0 {
		t.Fatalf("%d of 1000 keys never written were not ruled out", misses)
	}
}

// A restore replaces the keys known with the snapshot's.
func TestIdempotencyKeysFollowARestore(t *testing.T) {
	src := openTestStore(t)
	b := src.NewBatch()
	if err := b.PutIdempotency("from-the-snapshot", idemRec(1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	buf := bytes.NewBuffer(snapshotStream(t, src))

	st := openTestStore(t)
	b = st.NewBatch()
	if err := b.PutIdempotency("before-the-restore", idemRec(2)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := st.Restore(buf); err != nil {
		t.Fatal(err)
	}
	k := waitIdemReady(t, st)
	if !k.mayHold("from-the-snapshot") {
		t.Fatal("a key of the restored snapshot is ruled out")
	}
	if k.mayHold("before-the-restore") {
		t.Fatal("a key of the replaced database is still known")
	}
	nb := st.NewBatch()
	defer nb.Close()
	if !inBatch(t, nb, "from-the-snapshot") || inBatch(t, nb, "before-the-restore") {
		t.Fatal("lookups after the restore disagree with the snapshot")
	}
}

// Past its bound the filter stops answering "no" rather than grow: every
// key is then looked up, and found.
func TestIdempotencyKeysSwitchOffPastTheBound(t *testing.T) {
	defer func(n int) { maxIdemKeys = n }(maxIdemKeys)
	maxIdemKeys = 100
	st := openTestStore(t)
	k := waitIdemReady(t, st)
	b := st.NewBatch()
	for i := 0; i < 150; i++ {
		if err := b.PutIdempotency(fmt.Sprintf("k%d", i), idemRec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	off, held := k.off, len(k.set)
	k.mu.Unlock()
	if !off || held != 0 {
		t.Fatalf("past the bound: off=%v, %d fingerprints held", off, held)
	}
	nb := st.NewBatch()
	defer nb.Close()
	for i := 0; i < 150; i++ {
		if !inBatch(t, nb, fmt.Sprintf("k%d", i)) {
			t.Fatalf("k%d not found with the filter off", i)
		}
	}
	if inBatch(t, nb, "never-written") {
		t.Fatal("found a key never written")
	}
}

// Store.MayHoldIdempotency answers from the set, for the newest state: a
// key written is held (from before its batch commits), a key deleted is
// ruled out once the deletion commits, a key never written is ruled out.
func TestStoreMayHoldIdempotency(t *testing.T) {
	st := openTestStore(t)
	waitIdemReady(t, st)
	if st.MayHoldIdempotency("never-written") {
		t.Fatal("a key never written may be held")
	}
	b := st.NewBatch()
	if err := b.PutIdempotency("written", idemRec(1)); err != nil {
		t.Fatal(err)
	}
	if !st.MayHoldIdempotency("written") {
		t.Fatal("a key its batch is writing is ruled out before the commit")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	b = st.NewBatch()
	if err := b.DeleteIdempotency("written", idemRec(1)); err != nil {
		t.Fatal(err)
	}
	if !st.MayHoldIdempotency("written") {
		t.Fatal("a key is ruled out before its deletion commits")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if st.MayHoldIdempotency("written") {
		t.Fatal("a deleted key may still be held")
	}
}
