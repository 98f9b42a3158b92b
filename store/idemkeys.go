package store

import (
	"hash/maphash"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/hashicorp/go-hclog"
)

// idemKeys knows which idempotency keys the store holds, so that the FSM's
// lookup of a new key (every mutation a client sends has one, and it must
// be deduplicated on every node) does not search every memtable and level
// of Pebble to find nothing: profiles put that lookup at about 10 % of a
// follower's CPU under writes.
//
// It holds a 128-bit fingerprint of every key in the store, and answers
// "maybe" (look it up) or "no" (certainly absent). A "no" must never be
// wrong, so:
//   - a batch adds a key's fingerprint when it writes the key, before it
//     commits (a batch that fails leaves a fingerprint too many: harmless);
//   - a deletion removes it only once its batch committed, and not if the
//     same batch wrote the key again;
//   - it answers "no" only to a batch's view (the newest state); a
//     snapshot's view may hold keys deleted since;
//   - after Open and Restore it answers "maybe" until a background scan of
//     the store has added every key that was there (keys written meanwhile
//     are added by their batches);
//   - past maxIdemKeys it switches itself off (always "maybe") until the
//     store is next opened, bounding its memory (about 55 bytes a key as
//     measured: 55 MiB of heap for a million keys, scanned in 0.4 s).
//
// Fingerprints are keyed with seeds drawn per process, so a client cannot
// aim two of its keys at one fingerprint; a chance collision (about n²/2¹²⁹)
// could only make a deletion hide the other key.
type idemKeys struct {
	seeds [2]maphash.Seed

	mu    sync.Mutex
	set   map[[2]uint64]struct{}
	ready bool // the scan finished: "no" is exact
	off   bool // over maxIdemKeys: always "maybe"

	stop chan struct{} // closed to abandon the scan
	done chan struct{} // closed when the scan has returned
}

// maxIdemKeys bounds the fingerprints held (about 80 MiB): a day of
// idempotency records at 17 writes a second. A busier region looks keys
// up in Pebble instead.
var maxIdemKeys = 3 << 19 // a variable for tests

func newIdemKeys() *idemKeys {
	return &idemKeys{
		seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		set:   map[[2]uint64]struct{}{},
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
}

func (k *idemKeys) fingerprint(key string) [2]uint64 {
	return [2]uint64{maphash.String(k.seeds[0], key), maphash.String(k.seeds[1], key)}
}

// mayHold reports whether the store may hold key (false: it certainly does
// not, as of the newest committed state plus the open batch).
func (k *idemKeys) mayHold(key string) bool {
	fp := k.fingerprint(key)
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.ready || k.off {
		return true
	}
	_, ok := k.set[fp]
	return ok
}

// add records that key is (about to be) in the store.
func (k *idemKeys) add(fps ...[2]uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.off {
		return
	}
	for _, fp := range fps {
		k.set[fp] = struct{}{}
	}
	if len(k.set) > maxIdemKeys {
		k.off, k.set = true, nil
	}
}

// remove forgets keys whose deletion has committed.
func (k *idemKeys) remove(fps map[[2]uint64]struct{}) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for fp := range fps {
		delete(k.set, fp)
	}
}

// scan adds every idempotency key of db's current state, then makes "no"
// answers exact. It runs in the background; abandon stops it.
func (k *idemKeys) scan(db *pebble.DB, logger hclog.Logger) {
	defer close(k.done)
	snap := db.NewSnapshot()
	defer snap.Close()
	lower := []byte(prefixIdem)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
	if err != nil {
		logger.Warn("idempotency keys: cannot scan the store; every key is looked up", "error", err)
		return
	}
	defer it.Close()
	batch := make([][2]uint64, 0, 1024)
	for ok := it.First(); ok; ok = it.Next() {
		batch = append(batch, k.fingerprint(string(it.Key()[len(prefixIdem):])))
		if len(batch) == cap(batch) {
			select {
			case <-k.stop:
				return
			default:
			}
			k.add(batch...)
			batch = batch[:0]
		}
	}
	if err := it.Error(); err != nil {
		logger.Warn("idempotency keys: scan failed; every key is looked up", "error", err)
		return
	}
	k.add(batch...)
	k.mu.Lock()
	k.ready = true
	off := k.off
	k.mu.Unlock()
	if off {
		logger.Info("idempotency keys: more than the in-memory bound; new keys are looked up in the store", "bound", maxIdemKeys)
	}
}

// abandon stops the scan and waits for it to let go of the database.
func (k *idemKeys) abandon() {
	select {
	case <-k.stop:
	default:
		close(k.stop)
	}
	<-k.done
}
