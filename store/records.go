package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// View is a read-only view of the store: a point-in-time snapshot (from
// Store.Read) or a batch in progress (Batch embeds it and sees its writes).
type View struct {
	r pebble.Reader
	// cache, when set, answers point lookups as of generation gen (see
	// recordCache); a batch's view skips it for keys the batch wrote.
	cache  *recordCache
	gen    uint64
	writes *batchWrites
	// idem, in a batch's view, rules out idempotency keys the store
	// certainly does not hold without a lookup (see idemKeys).
	idem *idemKeys
}

// get returns a copy of key's value, which the caller may keep and modify.
func (v *View) get(key string) ([]byte, error) {
	val, err := v.getShared(key)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), val...), nil
}

// getShared returns key's value, which may be shared with the cache: the
// caller must not modify it.
func (v *View) getShared(key string) ([]byte, error) {
	cacheable := v.cache != nil && (v.writes == nil || !v.writes.touched(key))
	if cacheable {
		if e, ok := v.cache.lookup(key, v.gen); ok {
			return e.val, nil
		}
	}
	val, closer, err := v.r.Get([]byte(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("store: get: %w", err)
	}
	out := append([]byte(nil), val...)
	closer.Close()
	if cacheable {
		v.cache.offer(key, out, v.gen)
	}
	return out, nil
}

func (v *View) getProto(key string, m proto.Message) error {
	raw, err := v.getShared(key)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(raw, m); err != nil {
		return fmt.Errorf("store: corrupt record %q: %w", key, err)
	}
	return nil
}

// sharedProto returns key's record decoded into a message of newMsg's
// type, possibly the very message other readers got: the caller must not
// modify it (nor anything it points to). A snapshot's view keeps a decoded
// copy in the cache; a batch's view (the FSM, which modifies what it reads)
// always decodes afresh.
func sharedProto[M proto.Message](v *View, key string, newMsg func() M) (M, error) {
	var zero M
	if v.cache != nil && v.writes == nil {
		if e, ok := v.cache.lookup(key, v.gen); ok {
			if d := e.decoded.Load(); d != nil {
				if m, ok := (*d).(M); ok {
					return m, nil
				}
			}
			m := newMsg()
			if err := proto.Unmarshal(e.val, m); err != nil {
				return zero, fmt.Errorf("store: corrupt record %q: %w", key, err)
			}
			v.cache.keepDecoded(key, e, m)
			return m, nil
		}
	}
	m := newMsg()
	if err := v.getProto(key, m); err != nil {
		return zero, err
	}
	return m, nil
}

// scan calls fn for each key with prefix, in key order, starting strictly
// after prefix+after when after is not empty (or at the end, backwards, when
// reverse is set). fn returns false to stop.
func (v *View) scan(prefix, after string, reverse bool, fn func(key, value []byte) (bool, error)) error {
	lower := []byte(prefix)
	upper := prefixEnd(lower)
	it, err := v.r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("store: iterate: %w", err)
	}
	defer it.Close()
	var ok bool
	switch {
	case reverse && after != "":
		ok = it.SeekLT([]byte(prefix + after))
	case reverse:
		ok = it.Last()
	case after != "":
		ok = it.SeekGE([]byte(prefix + after))
		if ok && bytes.Equal(it.Key(), []byte(prefix+after)) {
			ok = it.Next()
		}
	default:
		ok = it.First()
	}
	for ; ok; ok = step(it, reverse) {
		more, err := fn(it.Key(), it.Value())
		if err != nil || !more {
			return err
		}
	}
	return it.Error()
}

func step(it *pebble.Iterator, reverse bool) bool {
	if reverse {
		return it.Prev()
	}
	return it.Next()
}

// AppliedIndex returns the Raft index and term of the last applied entry
// (0, 0 for a new store).
func (v *View) AppliedIndex() (index, term uint64, err error) {
	raw, err := v.get(keyApplied)
	if errors.Is(err, ErrNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	if len(raw) != 16 {
		return 0, 0, fmt.Errorf("store: corrupt applied index (%d bytes)", len(raw))
	}
	return binary.BigEndian.Uint64(raw[:8]), binary.BigEndian.Uint64(raw[8:]), nil
}

// ---------------------------------------------------------------- projects

// Project returns the project with id.
func (v *View) Project(id string) (*pb.Project, error) {
	p := &pb.Project{}
	return p, v.getProto(prefixProject+id, p)
}

// ProjectIDByName returns the id of the project called name.
func (v *View) ProjectIDByName(name string) (string, error) {
	raw, err := v.get(prefixProjectName + name)
	return string(raw), err
}

// ListProjects returns up to limit projects in id order, after the id
// afterID, and whether more follow.
func (v *View) ListProjects(afterID string, limit int) ([]*pb.Project, bool, error) {
	var out []*pb.Project
	more := false
	err := v.scan(prefixProject, afterID, false, func(_, val []byte) (bool, error) {
		if len(out) == limit {
			more = true
			return false, nil
		}
		p := &pb.Project{}
		if err := proto.Unmarshal(val, p); err != nil {
			return false, fmt.Errorf("store: corrupt project: %w", err)
		}
		out = append(out, p)
		return true, nil
	})
	return out, more, err
}

// PutProject writes a project and its name index.
func (b *Batch) PutProject(p *pb.Project) error {
	if err := b.putProto(prefixProject+p.GetMetadata().GetId(), p); err != nil {
		return err
	}
	return b.set(prefixProjectName+p.GetMetadata().GetName(), []byte(p.GetMetadata().GetId()))
}

// DeleteProject removes a project and its name index.
func (b *Batch) DeleteProject(p *pb.Project) error {
	if err := b.del(prefixProject + p.GetMetadata().GetId()); err != nil {
		return err
	}
	return b.del(prefixProjectName + p.GetMetadata().GetName())
}

func (b *Batch) putProto(key string, m proto.Message) error {
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: marshal %q: %w", key, err)
	}
	return b.set(key, raw)
}

// ---------------------------------------------------------------- secrets

// Secret returns the secret record with id.
func (v *View) Secret(id string) (*fsmpb.SecretRecord, error) {
	r := &fsmpb.SecretRecord{}
	return r, v.getProto(prefixSecret+id, r)
}

// SharedSecret is Secret for readers that do not modify the record: it may
// be shared with other readers (and is then not decoded again).
func (v *View) SharedSecret(id string) (*fsmpb.SecretRecord, error) {
	return sharedProto(v, prefixSecret+id, func() *fsmpb.SecretRecord { return &fsmpb.SecretRecord{} })
}

// SecretIDByName returns the id of the live secret called name in a project.
func (v *View) SecretIDByName(projectID, name string) (string, error) {
	raw, err := v.get(prefixSecretName + projectID + "/" + name)
	return string(raw), err
}

// ProjectHasSecrets reports whether any secret (live or scheduled for
// deletion) belongs to the project.
func (v *View) ProjectHasSecrets(projectID string) (bool, error) {
	found := false
	err := v.scan(prefixProjSecrets+projectID+"/", "", false, func(_, _ []byte) (bool, error) {
		found = true
		return false, nil
	})
	return found, err
}

// ScanSecrets calls fn for the project's secrets in id order, after afterID.
func (v *View) ScanSecrets(projectID, afterID string, fn func(*fsmpb.SecretRecord) (bool, error)) error {
	prefix := prefixProjSecrets + projectID + "/"
	return v.scan(prefix, afterID, false, func(key, _ []byte) (bool, error) {
		rec, err := v.Secret(string(key[len(prefix):]))
		if err != nil {
			return false, fmt.Errorf("store: secret index points at %q: %w", key, err)
		}
		return fn(rec)
	})
}

// PutSecret writes a secret record and its project index entry.
func (b *Batch) PutSecret(rec *fsmpb.SecretRecord) error {
	md := rec.GetSecret().GetMetadata()
	if err := b.putProto(prefixSecret+md.GetId(), rec); err != nil {
		return err
	}
	return b.set(prefixProjSecrets+md.GetParentId()+"/"+md.GetId(), nil)
}

// PutSecretName claims name for the secret in its project.
func (b *Batch) PutSecretName(projectID, name, secretID string) error {
	return b.set(prefixSecretName+projectID+"/"+name, []byte(secretID))
}

// DeleteSecretName releases a secret name.
func (b *Batch) DeleteSecretName(projectID, name string) error {
	return b.del(prefixSecretName + projectID + "/" + name)
}

// DeleteSecret removes a secret record and its project index entry (the
// name index is released separately, at soft deletion).
func (b *Batch) DeleteSecret(rec *fsmpb.SecretRecord) error {
	md := rec.GetSecret().GetMetadata()
	if err := b.del(prefixSecret + md.GetId()); err != nil {
		return err
	}
	return b.del(prefixProjSecrets + md.GetParentId() + "/" + md.GetId())
}

// ---------------------------------------------------------------- versions

// Version returns the version record with id.
func (v *View) Version(id string) (*fsmpb.VersionRecord, error) {
	r := &fsmpb.VersionRecord{}
	return r, v.getProto(prefixVersion+id, r)
}

// SharedVersion is Version for readers that do not modify the record: it
// may be shared with other readers (and is then not decoded again).
func (v *View) SharedVersion(id string) (*fsmpb.VersionRecord, error) {
	return sharedProto(v, prefixVersion+id, func() *fsmpb.VersionRecord { return &fsmpb.VersionRecord{} })
}

// ScanVersions calls fn for a secret's versions ordered by number (newest
// first when reverse), starting after version number afterNumber (0: from
// the start).
func (v *View) ScanVersions(secretID string, afterNumber int64, reverse bool, fn func(*fsmpb.VersionRecord) (bool, error)) error {
	prefix := prefixSecretVers + secretID + "/"
	after := ""
	if afterNumber > 0 {
		after = be8(uint64(afterNumber))
	}
	return v.scan(prefix, after, reverse, func(key, val []byte) (bool, error) {
		rec, err := v.Version(string(val))
		if err != nil {
			return false, fmt.Errorf("store: version index points at %q: %w", val, err)
		}
		return fn(rec)
	})
}

// PutVersion writes a version record and its place in the secret's order.
func (b *Batch) PutVersion(rec *fsmpb.VersionRecord) error {
	ver := rec.GetVersion()
	id := ver.GetMetadata().GetId()
	if err := b.putProto(prefixVersion+id, rec); err != nil {
		return err
	}
	if rec.GetKekId() != "" { // a version without payload has no data key
		if err := b.set(prefixKekVersions+rec.GetKekId()+"/"+id, nil); err != nil {
			return err
		}
	}
	return b.set(prefixSecretVers+ver.GetMetadata().GetParentId()+"/"+be8(uint64(ver.GetStatus().GetNumber())), []byte(id))
}

// DeleteVersion removes a version, its order entry and its payload entries.
func (b *Batch) DeleteVersion(rec *fsmpb.VersionRecord) error {
	ver := rec.GetVersion()
	id := ver.GetMetadata().GetId()
	if err := b.del(prefixVersion + id); err != nil {
		return err
	}
	if err := b.del(prefixKekVersions + rec.GetKekId() + "/" + id); err != nil {
		return err
	}
	if err := b.del(prefixSecretVers + ver.GetMetadata().GetParentId() + "/" + be8(uint64(ver.GetStatus().GetNumber()))); err != nil {
		return err
	}
	return b.delPrefix(prefixEntry + id + "/")
}

// RewrapVersion records that a version's data key is now wrapped by kekID.
func (b *Batch) RewrapVersion(rec *fsmpb.VersionRecord, kekID string, wrappedDEK []byte) error {
	id := rec.GetVersion().GetMetadata().GetId()
	if err := b.del(prefixKekVersions + rec.GetKekId() + "/" + id); err != nil {
		return err
	}
	rec.KekId, rec.WrappedDek = kekID, wrappedDEK
	return b.PutVersion(rec)
}

// KeyIDsInUse returns the ids of the KEKs that wrap at least one version.
func (v *View) KeyIDsInUse() ([]string, error) {
	var ids []string
	after := ""
	for {
		found := ""
		err := v.scan(prefixKekVersions, after, false, func(key, _ []byte) (bool, error) {
			rest := string(key[len(prefixKekVersions):])
			if i := indexByte(rest, '/'); i >= 0 {
				found = rest[:i+1]
			}
			return false, nil
		})
		if err != nil || found == "" {
			return ids, err
		}
		found = found[:len(found)-1]
		if found != "" {
			ids = append(ids, found)
		}
		after = found + "0" // '0' sorts right after '/': skip to the next key id
	}
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// VersionsWrappedBy returns up to limit ids of versions whose data key is
// wrapped by kekID, and how many there are in all.
func (v *View) VersionsWrappedBy(kekID string, limit int) (ids []string, total int, err error) {
	prefix := prefixKekVersions + kekID + "/"
	err = v.scan(prefix, "", false, func(key, _ []byte) (bool, error) {
		if len(ids) < limit {
			ids = append(ids, string(key[len(prefix):]))
		}
		total++
		return true, nil
	})
	return ids, total, err
}

// KeyCheck returns the recorded check value of a KEK.
func (v *View) KeyCheck(kekID string) ([]byte, error) { return v.get(prefixKekCheck + kekID) }

// PutKeyCheck records a KEK's check value unless one is already recorded.
func (b *Batch) PutKeyCheck(kekID string, check []byte) error {
	if len(check) == 0 {
		return nil
	}
	if _, err := b.KeyCheck(kekID); err == nil || !errors.Is(err, ErrNotFound) {
		return err
	}
	return b.set(prefixKekCheck+kekID, check)
}

// Entry returns one sealed payload entry of a version.
func (v *View) Entry(versionID, key string) (*fsmpb.SealedEntry, error) {
	e := &fsmpb.SealedEntry{}
	return e, v.getProto(prefixEntry+versionID+"/"+key, e)
}

// SharedEntry is Entry for readers that do not modify it: it may be shared
// with other readers (and is then not decoded again).
func (v *View) SharedEntry(versionID, key string) (*fsmpb.SealedEntry, error) {
	return sharedProto(v, prefixEntry+versionID+"/"+key, func() *fsmpb.SealedEntry { return &fsmpb.SealedEntry{} })
}

// PutEntry writes one sealed payload entry of a version.
func (b *Batch) PutEntry(versionID string, e *fsmpb.SealedEntry) error {
	return b.putProto(prefixEntry+versionID+"/"+e.GetKey(), e)
}

// ---------------------------------------------------------------- purge queue

// SchedulePurge queues id (a secret or version id) for purge at purgeAt.
func (b *Batch) SchedulePurge(purgeAtUnixNano int64, id string) error {
	return b.set(prefixPurgeQueue+be8(uint64(purgeAtUnixNano))+id, nil)
}

// UnschedulePurge removes id from the purge queue.
func (b *Batch) UnschedulePurge(purgeAtUnixNano int64, id string) error {
	return b.del(prefixPurgeQueue + be8(uint64(purgeAtUnixNano)) + id)
}

// DuePurges returns up to limit ids whose purge time is at or before now,
// oldest first.
func (v *View) DuePurges(nowUnixNano int64, limit int) ([]string, error) {
	var ids []string
	err := v.scan(prefixPurgeQueue, "", false, func(key, _ []byte) (bool, error) {
		rest := key[len(prefixPurgeQueue):]
		if len(rest) < 8 || int64(binary.BigEndian.Uint64(rest[:8])) > nowUnixNano || len(ids) == limit {
			return false, nil
		}
		ids = append(ids, string(rest[8:]))
		return true, nil
	})
	return ids, err
}

// ---------------------------------------------------------------- idempotency

// Idempotency returns the remembered result for an idempotency key.
func (v *View) Idempotency(key string) (*fsmpb.IdempotencyRecord, error) {
	if v.idem != nil && !v.idem.mayHold(key) {
		return nil, ErrNotFound
	}
	r := &fsmpb.IdempotencyRecord{}
	return r, v.getProto(prefixIdem+key, r)
}

// MayHoldIdempotency reports whether key may have a record in the newest
// committed state. false is certain (up to that moment; a commit after it
// may add the record) and costs no read of the store: most keys a leader
// sees are new.
func (s *Store) MayHoldIdempotency(key string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.idem == nil || s.idem.mayHold(key)
}

// PutIdempotency remembers a result under key until rec.ExpiresUnixNano.
func (b *Batch) PutIdempotency(key string, rec *fsmpb.IdempotencyRecord) error {
	fp := b.idem.fingerprint(key)
	delete(b.idemDeleted, fp)
	b.idem.add(fp) // before the write: a "no" must never miss a key
	if err := b.putProto(prefixIdem+key, rec); err != nil {
		return err
	}
	return b.set(prefixIdemExpiry+be8(uint64(rec.GetExpiresUnixNano()))+key, nil)
}

// DeleteIdempotency forgets key.
func (b *Batch) DeleteIdempotency(key string, rec *fsmpb.IdempotencyRecord) error {
	if b.idemDeleted == nil {
		b.idemDeleted = map[[2]uint64]struct{}{}
	}
	b.idemDeleted[b.idem.fingerprint(key)] = struct{}{}
	if err := b.del(prefixIdem + key); err != nil {
		return err
	}
	return b.del(prefixIdemExpiry + be8(uint64(rec.GetExpiresUnixNano())) + key)
}

// ExpiredIdempotency returns up to limit keys expired at now.
func (v *View) ExpiredIdempotency(nowUnixNano int64, limit int) ([]string, error) {
	var keys []string
	err := v.scan(prefixIdemExpiry, "", false, func(key, _ []byte) (bool, error) {
		rest := key[len(prefixIdemExpiry):]
		if len(rest) < 8 || int64(binary.BigEndian.Uint64(rest[:8])) > nowUnixNano || len(keys) == limit {
			return false, nil
		}
		keys = append(keys, string(rest[8:]))
		return true, nil
	})
	return keys, err
}

// ---------------------------------------------------------------- nodes

// Nodes returns every registered node in id order.
func (v *View) Nodes() ([]*fsmpb.NodeRecord, error) {
	var out []*fsmpb.NodeRecord
	err := v.scan(prefixNode, "", false, func(_, val []byte) (bool, error) {
		n := &fsmpb.NodeRecord{}
		if err := proto.Unmarshal(val, n); err != nil {
			return false, fmt.Errorf("store: corrupt node record: %w", err)
		}
		out = append(out, n)
		return true, nil
	})
	return out, err
}

// Node returns one registered node.
func (v *View) Node(id string) (*fsmpb.NodeRecord, error) {
	n := &fsmpb.NodeRecord{}
	return n, v.getProto(prefixNode+id, n)
}

// PutNode registers a node's addresses.
func (b *Batch) PutNode(n *fsmpb.NodeRecord) error { return b.putProto(prefixNode+n.GetNodeId(), n) }

// DeleteNode forgets a node.
func (b *Batch) DeleteNode(id string) error { return b.del(prefixNode + id) }

// ---------------------------------------------------------------- whole store

// ForEach calls fn for every key and value in the store, in key order.
func (v *View) ForEach(fn func(key, value []byte) error) error {
	it, err := v.r.NewIter(nil)
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}
