package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/cockroachdb/pebble"
)

// Snapshot stream format: the magic, then (uvarint key length, key, uvarint
// value length, value) for every key in order, then a zero key length, then
// the SHA-256 of everything before it. Keys are never empty.
var snapshotMagic = []byte("MBXSNAP1")

// writeSnapshotStream writes every key of r to w in the snapshot stream
// format; snapshotStreamSize predicts its length.
func writeSnapshotStream(r pebble.Reader, w io.Writer) (int64, error) {
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(w, h)}
	bw := bufio.NewWriterSize(cw, 256<<10)
	if _, err := bw.Write(snapshotMagic); err != nil {
		return cw.n, err
	}
	var lenBuf [binary.MaxVarintLen64]byte
	writeBytes := func(b []byte) error {
		n := binary.PutUvarint(lenBuf[:], uint64(len(b)))
		if _, err := bw.Write(lenBuf[:n]); err != nil {
			return err
		}
		_, err := bw.Write(b)
		return err
	}
	err := (&View{r: r}).ForEach(func(k, v []byte) error {
		if err := writeBytes(k); err != nil {
			return err
		}
		return writeBytes(v)
	})
	if err != nil {
		return cw.n, fmt.Errorf("store: write snapshot: %w", err)
	}
	if err := bw.WriteByte(0); err != nil {
		return cw.n, err
	}
	if err := bw.Flush(); err != nil {
		return cw.n, err
	}
	sum := h.Sum(nil)
	n, err := w.Write(sum)
	return cw.n + int64(n), err
}

// snapshotStreamSize is the length writeSnapshotStream(r) will have, found
// by walking r without encoding or hashing anything.
func snapshotStreamSize(r pebble.Reader) (int64, error) {
	size := int64(len(snapshotMagic)) + 1 + sha256.Size
	var lenBuf [binary.MaxVarintLen64]byte
	err := (&View{r: r}).ForEach(func(k, v []byte) error {
		size += int64(binary.PutUvarint(lenBuf[:], uint64(len(k))) + len(k))
		size += int64(binary.PutUvarint(lenBuf[:], uint64(len(v))) + len(v))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: size snapshot: %w", err)
	}
	return size, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// hashingReader hashes every byte read through it.
type hashingReader struct {
	r *bufio.Reader
	h hash.Hash
}

func (hr *hashingReader) ReadByte() (byte, error) {
	b, err := hr.r.ReadByte()
	if err == nil {
		hr.h.Write([]byte{b})
	}
	return b, err
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	return n, err
}

// Restore replaces the whole store with the snapshot read from r. The new
// content is written to a fresh database and verified; only then does
// CURRENT switch to it, so a crash at any point leaves either the old or the
// new store, never a mix. It must not run concurrently with a Batch.
func (s *Store) Restore(r io.Reader) error { return s.restore(r, false) }

// RestoreForNewRegion is Restore for a store seeded from a backup into a
// new region, whose Raft log starts again at 1: the content's applied
// index is written as zero in the new database itself, before CURRENT
// switches to it, so no crash can leave the backup's index in place (the
// FSM would skip the new log's first entries up to it).
func (s *Store) RestoreForNewRegion(r io.Reader) error { return s.restore(r, true) }

func (s *Store) restore(r io.Reader, resetApplied bool) error {
	s.mu.RLock()
	newNo := s.dbNo + 1
	s.mu.RUnlock()
	dir := s.dbDir(newNo)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("store: clear %s: %w", dir, err)
	}
	db, err := s.openDB(newNo)
	if err != nil {
		return err
	}
	if err := loadSnapshot(db, r, loadOptions{resetApplied: resetApplied}); err != nil {
		db.Close()
		os.RemoveAll(dir)
		return err
	}
	if err := db.Flush(); err != nil {
		db.Close()
		os.RemoveAll(dir)
		return fmt.Errorf("store: flush restored database: %w", err)
	}
	if err := s.writeCurrent(newNo); err != nil {
		db.Close()
		os.RemoveAll(dir)
		return err
	}
	// CURRENT names the new database from here on, whatever happens next;
	// if the directory cannot be synced, a crash may still bring back the
	// old name, so both databases stay until the next start removes the
	// one CURRENT does not name (removeStaleDirs). Coming back on the old
	// one is coming back behind the Raft snapshot, which a node restores
	// again at start.
	keepOld := false
	if err := syncDir(s.dir); err != nil {
		s.logger.Error("cannot sync the directory holding CURRENT after a restore; keeping the replaced database until the next start", "dir", s.dir, "error", err)
		keepOld = true
	}
	s.mu.Lock()
	old, oldNo := s.db, s.dbNo
	s.idem.abandon() // it may be scanning the old database
	s.db, s.dbNo = db, newNo
	s.cache.reset()
	s.scanIdempotencyKeys()
	s.mu.Unlock()
	if old != nil {
		if err := old.Close(); err != nil {
			s.logger.Warn("closing replaced database", "error", err)
		}
	}
	if keepOld {
		return nil
	}
	if err := os.RemoveAll(s.dbDir(oldNo)); err != nil {
		s.logger.Warn("removing replaced database", "error", err)
	}
	return nil
}

// SnapshotInfo is what VerifySnapshot reads from a snapshot stream.
type SnapshotInfo struct {
	// KeyChecks are the check values the stream records for its
	// key-encryption keys, by key id, so that a restore can make sure the
	// keyring that will open its payloads holds the same keys, not only
	// keys of the same ids.
	KeyChecks map[string][]byte
	// AppliedIndex and AppliedTerm are the Raft position the content
	// reflects (zero when it records none).
	AppliedIndex, AppliedTerm uint64
}

// VerifySnapshot reads a whole snapshot stream and checks its structure
// and checksum without storing anything. Only what it returns is covered
// by the stream's checksum; nothing else said about a stream (a backup's
// header) should be trusted over it.
func VerifySnapshot(r io.Reader) (SnapshotInfo, error) {
	info := SnapshotInfo{KeyChecks: map[string][]byte{}}
	if err := loadSnapshot(nil, r, loadOptions{info: &info}); err != nil {
		return SnapshotInfo{}, err
	}
	return info, nil
}

// loadOptions: what loadSnapshot does besides verifying and loading.
type loadOptions struct {
	info         *SnapshotInfo // filled in from the stream (KeyChecks made by the caller)
	resetApplied bool          // load the applied index as zero
}

// loadSnapshot reads a snapshot stream into db (nil: only verify it).
func loadSnapshot(db *pebble.DB, r io.Reader, o loadOptions) error {
	hr := &hashingReader{r: bufio.NewReaderSize(r, 256<<10), h: sha256.New()}
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(hr, magic); err != nil || !bytes.Equal(magic, snapshotMagic) {
		return fmt.Errorf("store: not a MysteryBox snapshot (bad magic)")
	}
	readBytes := func() ([]byte, error) {
		n, err := binary.ReadUvarint(hr)
		if err != nil {
			return nil, err
		}
		if n > 64<<20 {
			return nil, fmt.Errorf("record of %d bytes", n)
		}
		b := make([]byte, n)
		_, err = io.ReadFull(hr, b)
		return b, err
	}
	var batch *pebble.Batch
	newBatch := func() {
		if db != nil {
			batch = db.NewBatch()
		}
	}
	closeBatch := func() {
		if batch != nil {
			batch.Close()
			batch = nil
		}
	}
	defer closeBatch()
	newBatch()
	for {
		k, err := readBytes()
		if err != nil {
			return fmt.Errorf("store: truncated or corrupt snapshot: %w", err)
		}
		if len(k) == 0 {
			break
		}
		v, err := readBytes()
		if err != nil {
			return fmt.Errorf("store: truncated or corrupt snapshot: %w", err)
		}
		// The applied index is read at start and after every restore; a
		// bad one must fail here, before Raft or CURRENT see the stream.
		if string(k) == keyApplied {
			if len(v) != 16 {
				return fmt.Errorf("store: corrupt snapshot: applied index of %d bytes", len(v))
			}
			if o.info != nil {
				o.info.AppliedIndex, o.info.AppliedTerm = binary.BigEndian.Uint64(v[:8]), binary.BigEndian.Uint64(v[8:])
			}
			if o.resetApplied {
				v = make([]byte, 16) // index 0, term 0 (the stream's checksum covers what was read)
			}
		}
		if o.info != nil && bytes.HasPrefix(k, []byte(prefixKekCheck)) {
			o.info.KeyChecks[string(k[len(prefixKekCheck):])] = v
		}
		if batch == nil {
			continue
		}
		if err := batch.Set(k, v, nil); err != nil {
			return err
		}
		if batch.Len() > 4<<20 {
			err := batch.Commit(pebble.NoSync)
			closeBatch()
			if err != nil {
				return err
			}
			newBatch()
		}
	}
	want := hr.h.Sum(nil)
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(hr.r, got); err != nil {
		return fmt.Errorf("store: snapshot checksum missing: %w", err)
	}
	if !bytes.Equal(want, got) {
		return fmt.Errorf("store: snapshot checksum mismatch (want %s, got %s)", hex.EncodeToString(want), hex.EncodeToString(got))
	}
	if _, err := hr.r.ReadByte(); err != io.EOF {
		return fmt.Errorf("store: unexpected data after the snapshot's checksum")
	}
	if batch == nil {
		return nil
	}
	return batch.Commit(pebble.Sync)
}

// ContentHash is Hash without the applied index, the node registry and
// the audit log: equal for two stores with the same data at different Raft
// positions, on different nodes, with different access histories (a backup
// and the region it was restored into, whose restore was itself audited).
func (s *Store) ContentHash() (string, error) { return s.hash(false) }

// Hash returns the SHA-256 of every key and value in the store, for
// comparing replicas and checking that a restore is exact.
func (s *Store) Hash() (string, error) { return s.hash(true) }

func (s *Store) hash(withApplied bool) (string, error) {
	h := sha256.New()
	var lenBuf [8]byte
	err := s.Read(func(v *View) error {
		return v.ForEach(func(k, val []byte) error {
			if !withApplied && (string(k) == keyApplied || string(k) == keyAuditHead ||
				bytes.HasPrefix(k, []byte(prefixNode)) || bytes.HasPrefix(k, []byte(prefixAudit))) {
				return nil
			}
			binary.BigEndian.PutUint64(lenBuf[:], uint64(len(k)))
			h.Write(lenBuf[:])
			h.Write(k)
			binary.BigEndian.PutUint64(lenBuf[:], uint64(len(val)))
			h.Write(lenBuf[:])
			h.Write(val)
			return nil
		})
	})
	return hex.EncodeToString(h.Sum(nil)), err
}
