package store

import (
	"strings"
	"sync"
	"sync/atomic"
)

// recordCache holds recently read and written values of point lookups, so
// that hot records (a secret read on every payload read, its project, the
// audit chain's head, key checks) do not go through Pebble's merging
// iterators each time. Profiles put Pebble point lookups at 10-15 % of a
// read's CPU.
//
// It stays coherent with the committed state through a generation count:
// every batch commit increments gen, under the write lock, after removing
// (or replacing) the keys the batch wrote. An entry is valid from its
// `since` generation until it is removed, so a reader whose snapshot was
// taken at generation g may use it only when since <= g; a reader inserts
// what it read from its snapshot only while no commit has happened since
// that snapshot (gen still g). A view thus never sees a value its snapshot
// would not.
type recordCache struct {
	mu      sync.RWMutex
	gen     uint64
	entries map[string]*cacheEntry
	bytes   int
}

type cacheEntry struct {
	val   []byte // never modified once stored
	since uint64
	// decoded is val unmarshalled, kept for readers that promise not to
	// modify it (sharedProto): a hot record read on every call is then
	// decoded once per write instead of once per read. Its memory counts
	// towards the cache's bound from when it is kept (decodedBytes, under
	// mu).
	decoded      atomic.Pointer[any]
	decodedBytes int
}

// size is what the entry counts towards cacheMaxBytes.
func (e *cacheEntry) size() int { return len(e.val) + e.decodedBytes }

// keepDecoded attaches m, decoded from e.val, to e if e is still the
// cached entry of key, counting an estimate of its memory.
func (c *recordCache) keepDecoded(key string, e *cacheEntry, m any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[key] != e || e.decoded.Load() != nil {
		return
	}
	// A decoded message holds copies of the record's strings and bytes
	// plus Go structs and slice headers: about twice the encoding.
	n := 2*len(e.val) + 128
	if c.bytes+n > cacheMaxBytes {
		return
	}
	e.decoded.Store(&m)
	e.decodedBytes = n
	c.bytes += n
}

const (
	// cacheMaxBytes bounds the values held (keys and map overhead come on
	// top: about 100 bytes an entry).
	cacheMaxBytes = 32 << 20
	// cacheMaxValue: larger values (big payloads) are not worth the room.
	cacheMaxValue = 8 << 10
)

func newRecordCache() *recordCache {
	return &recordCache{entries: map[string]*cacheEntry{}}
}

// lookup returns key's entry as of generation g, if cached.
func (c *recordCache) lookup(key string, g uint64) (*cacheEntry, bool) {
	c.mu.RLock()
	e, ok := c.entries[key]
	c.mu.RUnlock()
	if !ok || e.since > g {
		return nil, false
	}
	return e, true
}

// has reports whether key is cached (at any generation).
func (c *recordCache) has(key string) bool {
	c.mu.RLock()
	_, ok := c.entries[key]
	c.mu.RUnlock()
	return ok
}

// offer stores val, read from a snapshot of generation g, unless a commit
// has happened since (then val may be stale).
func (c *recordCache) offer(key string, val []byte, g uint64) {
	if len(val) > cacheMaxValue {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != g {
		return
	}
	if _, ok := c.entries[key]; ok {
		return
	}
	c.put(key, val, g)
}

// put adds an entry; the caller holds mu.
func (c *recordCache) put(key string, val []byte, since uint64) {
	if old, ok := c.entries[key]; ok {
		// Out of the map before evicting, or eviction could pick it and
		// subtract its size a second time.
		delete(c.entries, key)
		c.bytes -= old.size()
	}
	for c.bytes+len(val) > cacheMaxBytes && len(c.entries) > 0 {
		// Evict about a tenth, in map order (random enough, and cheap).
		n := len(c.entries)/10 + 1
		for k, e := range c.entries {
			delete(c.entries, k)
			c.bytes -= e.size()
			if n--; n == 0 {
				break
			}
		}
	}
	c.entries[key] = &cacheEntry{val: val, since: since}
	c.bytes += len(val)
}

// commit runs apply (the Pebble commit) under the write lock, then applies
// a batch's writes to the cache and moves to the next generation: cached
// keys the batch set get their new value (valid from the new generation),
// deleted ones go, and a deleted range drops every cached key under its
// prefix. Keys written but never read (payload entries, idempotency and
// audit records) are not added: caching them cost more than it saved.
func (c *recordCache) commit(w *batchWrites, apply func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := apply(); err != nil {
		// What Pebble applied is unknown: forget everything.
		c.resetLocked()
		return err
	}
	c.gen++
	for _, p := range w.deletedPrefixes {
		for k, e := range c.entries {
			if strings.HasPrefix(k, p) {
				delete(c.entries, k)
				c.bytes -= e.size()
			}
		}
	}
	for k, val := range w.keys {
		old, ok := c.entries[k]
		if !ok {
			continue // only what was read before is worth keeping
		}
		if val == nil {
			delete(c.entries, k)
			c.bytes -= old.size()
			continue
		}
		c.put(k, *val, c.gen) // a hot record rewritten: keep it hot
	}
	return nil
}

// reset forgets everything (a restore replaced the database).
func (c *recordCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked()
}

func (c *recordCache) resetLocked() {
	c.gen++
	c.entries = map[string]*cacheEntry{}
	c.bytes = 0
}

// batchWrites records what a batch wrote, for reads through the batch
// (which must not use the cache for those keys) and for the commit.
type batchWrites struct {
	cache           *recordCache
	keys            map[string]*[]byte // nil: deleted, or not worth caching
	deletedPrefixes []string
}

func (w *batchWrites) set(key string, val []byte) {
	if w.keys == nil {
		w.keys = map[string]*[]byte{}
	}
	if len(val) > cacheMaxValue || !w.cache.has(key) {
		// The commit only drops it (should a reader cache it meanwhile):
		// no copy of values nobody reads.
		w.keys[key] = nil
		return
	}
	v := append([]byte(nil), val...)
	w.keys[key] = &v
}

func (w *batchWrites) del(key string) {
	if w.keys == nil {
		w.keys = map[string]*[]byte{}
	}
	w.keys[key] = nil
}

// delPrefix records a range deletion. Writes before it under the prefix
// are gone; writes after it come back into keys.
func (w *batchWrites) delPrefix(prefix string) {
	for k := range w.keys {
		if strings.HasPrefix(k, prefix) {
			delete(w.keys, k)
		}
	}
	w.deletedPrefixes = append(w.deletedPrefixes, prefix)
}

// touched reports whether the batch wrote key (or a range holding it).
func (w *batchWrites) touched(key string) bool {
	if _, ok := w.keys[key]; ok {
		return true
	}
	for _, p := range w.deletedPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}
