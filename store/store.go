// Package store keeps MysteryBox's replicated state in Pebble: the key layout,
// typed reads with stable paging, atomic write batches that carry the Raft
// applied index, and whole-store snapshots for Raft.
//
// Only the FSM writes; everyone else reads. Writes go through a Batch so that
// one Raft batch becomes one Pebble batch, together with the applied index.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/bloom"
	"github.com/hashicorp/go-hclog"
)

// ErrNotFound is returned by typed reads when the key is absent.
var ErrNotFound = errors.New("not found")

// Key layout. Every key starts with a short prefix naming its table; ids and
// names never contain '/', so '/' separates the parts of a composite key.
const (
	keyApplied         = "m/applied"      // -> index(8) term(8)
	prefixProject      = "p/"             // p/<projectID> -> mysteryboxv1.Project
	prefixProjectName  = "pn/"            // pn/<name> -> projectID
	prefixSecret       = "s/"             // s/<secretID> -> fsmpb.SecretRecord
	prefixSecretName   = "sn/"            // sn/<projectID>/<name> -> secretID (live secrets only)
	prefixProjSecrets  = "ps/"            // ps/<projectID>/<secretID> -> ""
	prefixVersion      = "v/"             // v/<versionID> -> fsmpb.VersionRecord
	prefixSecretVers   = "sv/"            // sv/<secretID>/<number BE8> -> versionID
	prefixEntry        = "e/"             // e/<versionID>/<entryKey> -> fsmpb.SealedEntry
	prefixIdem         = "i/"             // i/<key> -> fsmpb.IdempotencyRecord
	prefixIdemExpiry   = "ie/"            // ie/<expiry BE8><key> -> ""
	prefixPurgeQueue   = "d/"             // d/<purgeAt BE8><id> -> ""
	prefixKekVersions  = "kv/"            // kv/<kekID>/<versionID> -> "" (which KEK wraps which version)
	prefixKekCheck     = "kc/"            // kc/<kekID> -> check value sealed under the KEK
	prefixAccount      = "a/"             // a/<accountID> -> mysteryboxv1.Account
	prefixAccountName  = "an/"            // an/<name> -> accountID
	prefixToken        = "t/"             // t/<tokenID> -> fsmpb.TokenRecord
	prefixAcctTokens   = "at/"            // at/<accountID>/<tokenID> -> ""
	prefixBinding      = "b/"             // b/<bindingID> -> mysteryboxv1.AccessBinding
	prefixResBindings  = "br/"            // br/<resourceID>/<bindingID> -> ""
	prefixAcctBindings = "ba/"            // ba/<accountID>/<bindingID> -> ""
	keyBootstrapped    = "m/bootstrapped" // present once the first admin exists
	prefixAudit        = "au/"            // au/<seq BE8> -> mysteryboxv1.AuditRecord
	keyAuditHead       = "m/audit_head"   // -> fsmpb.AuditHead
	prefixNode         = "n/"             // n/<nodeID> -> fsmpb.NodeRecord
	currentFile        = "CURRENT"        // names the live Pebble directory
	dbDirPrefix        = "db-"            // Pebble directories: db-000001, ...
	maxRestoreDBNumber = 1<<31 - 1        // sanity bound when parsing CURRENT
)

// Store is the Pebble-backed state of one node. Reads may run concurrently
// with each other and with the FSM's batches; Restore swaps the database
// under an exclusive lock.
type Store struct {
	dir    string
	logger hclog.Logger

	mu   sync.RWMutex // guards db and dbNum against Restore's swap
	db   *pebble.DB
	dbNo int

	cache *recordCache
	idem  *idemKeys // replaced with db, under mu
}

// Open opens (or creates) the store in dir. A restore that crashed half-way
// is discarded: CURRENT names the last complete database.
func Open(dir string, logger hclog.Logger) (*Store, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create %s: %w", dir, err)
	}
	s := &Store{dir: dir, logger: logger, cache: newRecordCache()}
	no, err := s.readCurrent()
	if err != nil {
		return nil, err
	}
	if no == 0 {
		no = 1
		if err := s.writeCurrent(no); err != nil {
			return nil, err
		}
		if err := syncDir(s.dir); err != nil {
			return nil, fmt.Errorf("store: sync %s: %w", s.dir, err)
		}
	}
	s.removeStaleDirs(no)
	s.removeStaleCheckpoints()
	db, err := s.openDB(no)
	if err != nil {
		return nil, err
	}
	s.db, s.dbNo = db, no
	s.scanIdempotencyKeys()
	return s, nil
}

// scanIdempotencyKeys starts knowing the idempotency keys of s.db afresh;
// the caller holds mu (or has s to itself).
func (s *Store) scanIdempotencyKeys() {
	s.idem = newIdemKeys()
	go s.idem.scan(s.db, s.logger)
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	s.idem.abandon()
	err := s.db.Close()
	s.db = nil
	return err
}

func (s *Store) dbDir(no int) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s%06d", dbDirPrefix, no))
}

// blockCacheBytes is Pebble's block cache. Point lookups dominate (records
// by id, index entries, idempotency keys), and many look for keys that do
// not exist, which bloom filters answer without reading a block.
const blockCacheBytes = 64 << 20

// lBaseMaxBytes bounds the level that flushed tables are compacted into
// (Pebble's default is 64 MiB). Every flushed table spans nearly the whole
// key space, since one Raft batch writes versions, entries, indexes,
// idempotency and audit records, so each compaction out of level 0
// rewrites all of that level: the smaller it is, the less each one
// rewrites, while the time-ordered keys (ids, audit sequence numbers) then
// mostly move down the deeper levels without being rewritten. 8 MiB wrote
// 43 % fewer bytes and spent 36 % less CPU than the default over a million
// versions (docs/performance.md; BenchmarkApplyVersions in fsm).
const lBaseMaxBytes = 8 << 20

// blockSize is the target size of an sstable's data blocks (Pebble's
// default, 4 KiB; a variable so that BenchmarkEntryReads can compare).
var blockSize = 4 << 10

func (s *Store) openDB(no int) (*pebble.DB, error) {
	cache := pebble.NewCache(blockCacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{Logger: pebbleLogger{s.logger.Named("pebble")}, Cache: cache, LBaseMaxBytes: lBaseMaxBytes, Levels: make([]pebble.LevelOptions, 7)}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].FilterType = pebble.TableFilter
		opts.Levels[i].BlockSize = blockSize
	}
	db, err := pebble.Open(s.dbDir(no), opts)
	if err != nil {
		return nil, fmt.Errorf("store: open pebble: %w", err)
	}
	return db, nil
}

func (s *Store) readCurrent() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, currentFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: read CURRENT: %w", err)
	}
	var no int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), dbDirPrefix+"%d", &no); err != nil || no <= 0 || no > maxRestoreDBNumber {
		return 0, fmt.Errorf("store: CURRENT file is corrupt: %q", b)
	}
	return no, nil
}

// writeCurrent atomically points CURRENT at database no. The switch is
// durable only once the caller has synced the directory (syncDir).
func (s *Store) writeCurrent(no int) error {
	tmp := filepath.Join(s.dir, currentFile+".tmp")
	content := fmt.Sprintf("%s%06d\n", dbDirPrefix, no)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("store: write CURRENT: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("store: write CURRENT: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("store: sync CURRENT: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store: write CURRENT: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, currentFile)); err != nil {
		return fmt.Errorf("store: install CURRENT: %w", err)
	}
	return nil
}

// removeStaleDirs deletes databases other than the live one: leftovers of a
// restore that crashed before or after the CURRENT switch.
func (s *Store) removeStaleDirs(live int) {
	entries, _ := os.ReadDir(s.dir)
	keep := filepath.Base(s.dbDir(live))
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), dbDirPrefix) && e.Name() != keep {
			if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
				s.logger.Warn("cannot remove stale database", "dir", e.Name(), "error", err)
			}
		}
	}
}

// syncDir makes a directory's entries durable (a variable so that tests
// can make it fail).
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Read runs fn on a consistent point-in-time view of the store.
func (s *Store) Read(fn func(v *View) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return errors.New("store: closed")
	}
	// The snapshot and the generation are taken together, between commits.
	s.cache.mu.RLock()
	snap := s.db.NewSnapshot()
	gen := s.cache.gen
	s.cache.mu.RUnlock()
	defer snap.Close()
	return fn(&View{r: snap, cache: s.cache, gen: gen})
}

// AppliedIndex returns the Raft index and term of the last entry applied.
func (s *Store) AppliedIndex() (index, term uint64, err error) {
	err = s.Read(func(v *View) error {
		index, term, err = v.AppliedIndex()
		return err
	})
	return index, term, err
}

// NewBatch starts an atomic write. Reads through the batch see its own
// writes. Commit or Close it.
func (s *Store) NewBatch() *Batch {
	s.mu.RLock()
	b := s.db.NewIndexedBatch()
	s.cache.mu.RLock()
	gen := s.cache.gen
	s.cache.mu.RUnlock()
	nb := &Batch{b: b, s: s, writes: batchWrites{cache: s.cache}}
	nb.View = View{r: b, cache: s.cache, gen: gen, writes: &nb.writes, idem: s.idem}
	return nb
}

// Sync makes every committed batch durable (batches commit without fsync,
// since the Raft log is the durable record until a snapshot truncates it).
func (s *Store) Sync() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.LogData(nil, pebble.Sync)
}

// Batch is one atomic write to the store. It holds the store's read lock
// from creation to Commit/Close, so Restore cannot swap the database under it.
type Batch struct {
	View
	b      *pebble.Batch
	s      *Store
	done   bool
	writes batchWrites
	// idemDeleted: fingerprints of the idempotency keys this batch deleted
	// (and did not write again), which View.idem forgets once it commits.
	idemDeleted map[[2]uint64]struct{}
}

// Commit applies the batch. It does not fsync (see Sync).
func (b *Batch) Commit() error {
	if b.done {
		return errors.New("store: batch already finished")
	}
	b.done = true
	defer b.s.mu.RUnlock()
	err := b.s.cache.commit(&b.writes, func() error { return b.b.Commit(pebble.NoSync) })
	b.b.Close()
	if err == nil && len(b.idemDeleted) > 0 {
		b.idem.remove(b.idemDeleted)
	}
	return err
}

// Close discards an uncommitted batch. Safe after Commit.
func (b *Batch) Close() {
	if b.done {
		return
	}
	b.done = true
	b.b.Close()
	b.s.mu.RUnlock()
}

// SetAppliedIndex records the Raft position the batch brings the store to.
func (b *Batch) SetAppliedIndex(index, term uint64) error {
	var v [16]byte
	binary.BigEndian.PutUint64(v[:8], index)
	binary.BigEndian.PutUint64(v[8:], term)
	return b.set(keyApplied, v[:])
}

func (b *Batch) set(key string, value []byte) error {
	b.writes.set(key, value)
	return b.b.Set([]byte(key), value, nil)
}

func (b *Batch) del(key string) error {
	b.writes.del(key)
	return b.b.Delete([]byte(key), nil)
}

func (b *Batch) delPrefix(prefix string) error {
	b.writes.delPrefix(prefix)
	return b.b.DeleteRange([]byte(prefix), prefixEnd([]byte(prefix)), nil)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func be8(n uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return string(b[:])
}

// pebbleLogger routes Pebble's own messages to hclog at debug level; its
// errors stay errors.
type pebbleLogger struct{ l hclog.Logger }

func (p pebbleLogger) Infof(format string, args ...interface{}) {
	p.l.Debug(fmt.Sprintf(format, args...))
}
func (p pebbleLogger) Errorf(format string, args ...interface{}) {
	p.l.Error(fmt.Sprintf(format, args...))
}
func (p pebbleLogger) Fatalf(format string, args ...interface{}) {
	p.l.Error(fmt.Sprintf(format, args...))
	panic(fmt.Sprintf(format, args...))
}

// StorageStats are Pebble's figures for monitoring.
type StorageStats struct {
	DiskBytes     uint64
	Compactions   int64
	MemtableBytes uint64
	Tables        int64
	// WrittenBytes: bytes written to sstables by flushes and compactions
	// since the database was opened (its WAL not included); against the
	// bytes applied, the write amplification.
	WrittenBytes uint64
	// CompactionsInProgress: compactions running now.
	CompactionsInProgress int64
}

// Stats returns Pebble's current figures.
func (s *Store) Stats() StorageStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return StorageStats{}
	}
	m := s.db.Metrics()
	st := StorageStats{DiskBytes: m.DiskSpaceUsage(), Compactions: m.Compact.Count, MemtableBytes: m.MemTable.Size,
		CompactionsInProgress: m.Compact.NumInProgress}
	for _, l := range m.Levels {
		st.Tables += l.NumFiles
		st.WrittenBytes += l.BytesFlushed + l.BytesCompacted
	}
	return st
}

// Counts returns how many secrets and versions the store holds (a scan of
// their tables: callers cache it).
func (s *Store) Counts() (secrets, versions int64, err error) {
	err = s.Read(func(v *View) error {
		for _, c := range []struct {
			prefix string
			n      *int64
		}{{prefixSecret, &secrets}, {prefixVersion, &versions}} {
			if err := v.scan(c.prefix, "", false, func(_, _ []byte) (bool, error) {
				*c.n++
				return true, nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return secrets, versions, err
}

// Empty reports whether the store holds no key at all.
func (s *Store) Empty() (bool, error) {
	empty := true
	errStop := errors.New("stop")
	err := s.Read(func(v *View) error {
		return v.ForEach(func(_, _ []byte) error {
			empty = false
			return errStop
		})
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return empty, err
}
