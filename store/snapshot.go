package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sort"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// Snapshot stream format: the magic, then (uvarint key length, key, uvarint
// value length, value) for every key in order, then a zero key length, then
// the SHA-256 of everything before it. Keys are never empty.
var snapshotMagic = []byte("MBXSNAP1")

// writeSnapshotStream writes every key of r to w in the snapshot stream
// format; snapshotStreamSize predicts its length.
func writeSnapshotStream(r pebble.Reader, w io.Writer) (int64, error) {
	sw := newSnapshotWriter(w)
	if err := (&View{r: r}).ForEach(sw.put); err != nil {
		return sw.cw.n, fmt.Errorf("store: write snapshot: %w", err)
	}
	return sw.finish()
}

// snapshotWriter writes a snapshot stream: newSnapshotWriter the magic,
// put each key in order, finish the end and the checksum.
type snapshotWriter struct {
	w      io.Writer
	h      hash.Hash
	cw     *countingWriter
	bw     *bufio.Writer
	err    error
	lenBuf [binary.MaxVarintLen64]byte
}

func newSnapshotWriter(w io.Writer) *snapshotWriter {
	sw := &snapshotWriter{w: w, h: sha256.New()}
	sw.cw = &countingWriter{w: io.MultiWriter(w, sw.h)}
	sw.bw = bufio.NewWriterSize(sw.cw, 256<<10)
	_, sw.err = sw.bw.Write(snapshotMagic)
	return sw
}

func (sw *snapshotWriter) bytes(b []byte) {
	if sw.err != nil {
		return
	}
	n := binary.PutUvarint(sw.lenBuf[:], uint64(len(b)))
	if _, sw.err = sw.bw.Write(sw.lenBuf[:n]); sw.err == nil {
		_, sw.err = sw.bw.Write(b)
	}
}

func (sw *snapshotWriter) put(k, v []byte) error {
	sw.bytes(k)
	sw.bytes(v)
	return sw.err
}

// finish ends the stream and returns its length.
func (sw *snapshotWriter) finish() (int64, error) {
	if sw.err == nil {
		sw.err = sw.bw.WriteByte(0)
	}
	if sw.err == nil {
		sw.err = sw.bw.Flush()
	}
	if sw.err != nil {
		return sw.cw.n, sw.err
	}
	n, err := sw.w.Write(sw.h.Sum(nil))
	return sw.cw.n + int64(n), err
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
func (s *Store) Restore(r io.Reader) error { return s.restore(r, loadOptions{}) }

// RestoreForNewRegion is Restore for a store seeded from a backup into a
// new region, whose Raft log starts again at 1: the content's applied
// index is written as zero in the new database itself, before CURRENT
// switches to it, so no crash can leave the backup's index in place (the
// FSM would skip the new log's first entries up to it). The old region's
// node registry is left out: the new region's nodes register themselves,
// and a removal tombstone of the old region's must not keep a node of the
// same id out of the new one. clusterID replaces the old cluster's id:
// discovery must tell the new cluster from the old one's nodes, should
// any come back under the same region name.
func (s *Store) RestoreForNewRegion(r io.Reader, clusterID string) error {
	if clusterID == "" {
		return errors.New("store: a new region needs a cluster id")
	}
	return s.restore(r, loadOptions{newRegion: true, clusterID: clusterID})
}

func (s *Store) restore(r io.Reader, o loadOptions) error {
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
	if err := loadSnapshot(db, r, o); err != nil {
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

// SnapshotInfo is what a verifying read of a snapshot stream found in it
// (ReplaceRegionIdentity). Only what the stream's checksum covers is in it;
// nothing else said about a stream (a backup's header) should be trusted
// over it.
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

// inspect checks one record of a stream that the store must be able to
// read back (the applied index is read at start and after every restore;
// a bad one must fail before Raft or CURRENT see the stream), and notes in
// info (when not nil) what SnapshotInfo reports.
func inspect(k, v []byte, info *SnapshotInfo) error {
	if string(k) == keyApplied {
		if len(v) != 16 {
			return fmt.Errorf("store: corrupt snapshot: applied index of %d bytes", len(v))
		}
		if info != nil {
			info.AppliedIndex, info.AppliedTerm = binary.BigEndian.Uint64(v[:8]), binary.BigEndian.Uint64(v[8:])
		}
	}
	if info != nil && bytes.HasPrefix(k, []byte(prefixKekCheck)) {
		if info.KeyChecks == nil {
			info.KeyChecks = map[string][]byte{}
		}
		info.KeyChecks[string(k[len(prefixKekCheck):])] = v
	}
	return nil
}

// loadOptions: what loadSnapshot does besides verifying and loading.
type loadOptions struct {
	// newRegion: load the applied index as zero, leave the node registry
	// out and record clusterID as the cluster's (RestoreForNewRegion).
	newRegion bool
	clusterID string
}

// loadSnapshot reads a snapshot stream into db (nil: only verify it).
func loadSnapshot(db *pebble.DB, r io.Reader, o loadOptions) error {
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
	err := readSnapshotStream(r, func(k, v []byte) error {
		if err := inspect(k, v, nil); err != nil {
			return err
		}
		if o.newRegion && string(k) == keyApplied {
			v = make([]byte, 16) // index 0, term 0 (the stream's checksum covers what was read)
		}
		if o.newRegion && string(k) == keyBootstrapped {
			v = []byte(o.clusterID)
		}
		if batch == nil || (o.newRegion && bytes.HasPrefix(k, []byte(prefixNode))) {
			return nil
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
		return nil
	})
	if err != nil || batch == nil {
		return err
	}
	return batch.Commit(pebble.Sync)
}

// readSnapshotStream calls fn with every key and value of the snapshot
// stream r, in order, then checks the stream's checksum: fn sees a stream
// before it is known to be intact, so what it does must be undone on error.
func readSnapshotStream(r io.Reader, fn func(k, v []byte) error) error {
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
		if err := fn(k, v); err != nil {
			return err
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
	return nil
}

// RegionIdentity is what a store says of the region it runs in rather
// than of its data: the cluster id recorded when the region got its first
// admin (discovery tells clusters apart by it) and the node registry (its
// removal tombstones above all: discovery must not add back a node an
// operator removed after a backup was taken).
type RegionIdentity struct {
	ClusterID string // "" keeps the stream's
	Nodes     []*fsmpb.NodeRecord
}

// ReplaceRegionIdentity copies the snapshot stream r to w with id in
// place of the region identity r holds, and returns w's length and what
// the stream holds (SnapshotInfo): a backup restored into a running
// region keeps that region's identity. r is verified as it is read, and w
// is complete only if it returns no error: with io.Discard it verifies,
// measures and inspects a stream.
func ReplaceRegionIdentity(r io.Reader, w io.Writer, id RegionIdentity) (int64, SnapshotInfo, error) {
	var info SnapshotInfo
	recs := make([][2][]byte, 0, len(id.Nodes)+1)
	for _, n := range id.Nodes {
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(n)
		if err != nil {
			return 0, info, err
		}
		recs = append(recs, [2][]byte{[]byte(prefixNode + n.GetNodeId()), v})
	}
	if id.ClusterID != "" {
		recs = append(recs, [2][]byte{[]byte(keyBootstrapped), []byte(id.ClusterID)})
	}
	sort.Slice(recs, func(i, j int) bool { return bytes.Compare(recs[i][0], recs[j][0]) < 0 })
	sw := newSnapshotWriter(w)
	// putBefore writes the identity's records that sort before k (all of
	// them for nil), keeping the stream in key order.
	putBefore := func(k []byte) error {
		for len(recs) > 0 && (k == nil || bytes.Compare(recs[0][0], k) < 0) {
			if err := sw.put(recs[0][0], recs[0][1]); err != nil {
				return err
			}
			recs = recs[1:]
		}
		return nil
	}
	err := readSnapshotStream(r, func(k, v []byte) error {
		if err := inspect(k, v, &info); err != nil {
			return err
		}
		if bytes.HasPrefix(k, []byte(prefixNode)) || (id.ClusterID != "" && string(k) == keyBootstrapped) {
			return nil
		}
		if err := putBefore(k); err != nil {
			return err
		}
		return sw.put(k, v)
	})
	if err == nil {
		err = putBefore(nil)
	}
	if err != nil {
		return 0, info, err
	}
	n, err := sw.finish()
	return n, info, err
}

// ContentHash is Hash without the applied index, the region identity
// (cluster id, node registry) and the audit log: equal for two stores with
// the same data at different Raft positions, on different nodes, in
// different regions, with different access histories (a backup and the
// region it was restored into, whose restore was itself audited).
func (s *Store) ContentHash() (string, error) { return s.hash(false) }

// Hash returns the SHA-256 of every key and value in the store, for
// comparing replicas and checking that a restore is exact.
func (s *Store) Hash() (string, error) { return s.hash(true) }

func (s *Store) hash(withApplied bool) (string, error) {
	h := sha256.New()
	var lenBuf [8]byte
	err := s.Read(func(v *View) error {
		return v.ForEach(func(k, val []byte) error {
			if !withApplied && (string(k) == keyApplied || string(k) == keyAuditHead || string(k) == keyBootstrapped ||
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
