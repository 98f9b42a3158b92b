// Package fsm is MysteryBox's Raft state machine: it decodes replicated
// commands and applies them to the store, deterministically, one Pebble batch
// per Raft batch, together with the applied index.
//
// Rules (see docs/architecture.md): no clock but the command's, no
// randomness, no map iteration order; preconditions that fail are results,
// identical on every replica; an entry that cannot be decoded panics, because
// diverging silently is worse than stopping. Each command checks all its
// preconditions before its first write, so a command that fails leaves
// nothing behind in the shared batch.
package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// Command formats. A command with a format this build does not know stops
// the node rather than be misread. CallerFormat marks commands that name
// their caller or are replay-only (CallerVersion): a build that knows only
// CommandFormat would ignore those fields and apply the command as a plain
// one — its idempotency records would lack the caller, and a replay-only
// command whose record is gone would apply as a new call that the leader
// never checked the permission of — so it must stop on them instead (a
// node of an older release that joins, or replays its log after a
// downgrade).
const (
	CommandFormat = 1
	CallerFormat  = 2
)

// CommandVersion is the newest command set this build applies. Each
// command type has the version that introduced it (RequiredVersion); the
// leader proposes a type only once every voter advertises (in gossip) a
// version at least that high, so a rolling upgrade never sends a node a
// command it cannot apply.
const CommandVersion = 5

// AuditInCommandVersion is the command version from which a command may
// carry its call's audit record (Command.audit). An older node would
// ignore the field and its audit chain would miss those records, so the
// leader attaches it only while every node of the region advertises this
// version; unlike a command type, it is never a reason to refuse a call.
const AuditInCommandVersion = 3

// ShippedAuditVersion is the version from which a node accepts audit
// records shipped by the follower that served a payload read from its own
// state (nodepb.NodeService.ShipAudit). It adds no command: followers serve
// stale payload reads themselves only while every node of the region
// advertises it, since any of them may be the leader they ship to; until
// then such reads are forwarded to the leader as before.
const ShippedAuditVersion = 4

// CallerVersion is the version from which a command may name its caller
// (Command.caller, kept in the idempotency record: only that account's
// retries get the outcome) and be marked replay_only (the leader let a
// retry through without its permission check). An older node would ignore
// both: its records would differ from the others', and it would apply a
// replay_only command whose record is gone. The leader sets them only
// while every node of the region advertises this version.
const CallerVersion = 5

// RequiredVersion is the command version that introduced cmd's type, or
// the fields it uses.
func RequiredVersion(cmd *fsmpb.Command) int {
	v := 1
	switch cmd.GetOp().(type) {
	case *fsmpb.Command_RewrapVersions:
		v = 2
	}
	if cmd.GetReplayOnly() {
		v = max(v, CallerVersion)
	}
	return v
}

// IdempotencyTTL is how long a mutation's result is remembered under its
// idempotency key.
const IdempotencyTTL = 24 * time.Hour

// Domain errors returned in a Result. store.ErrNotFound is used for missing
// resources.
var (
	ErrAlreadyExists      = errors.New("already exists")
	ErrConflict           = errors.New("resource_version mismatch")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrInvalidArgument    = errors.New("invalid argument")
)

// Result is what Apply returns for a command: the response message or a
// domain error.
type Result struct {
	Response proto.Message
	Err      error
}

// FSM applies commands to a store.
type FSM struct {
	store   *store.Store
	logger  hclog.Logger
	applied atomic.Uint64 // index of the last entry applied (or skipped)
	obs     atomic.Pointer[Observer]
	// identityGen changes whenever tokens, accounts or bindings may have
	// changed, so that caches of them know to drop their entries.
	identityGen     atomic.Uint64
	identityTouched bool // by the batch being applied (FSM goroutine only)
}

// IdentityGeneration changes (increases) whenever an applied command or a
// restore may have changed tokens, accounts or access bindings.
func (f *FSM) IdentityGeneration() uint64 { return f.identityGen.Load() }

// touchesIdentity reports whether a command can change what authentication
// or authorization reads.
func touchesIdentity(cmd *fsmpb.Command) bool {
	switch cmd.GetOp().(type) {
	case *fsmpb.Command_CreateAccount, *fsmpb.Command_DeleteAccount, *fsmpb.Command_CreateToken,
		*fsmpb.Command_RevokeToken, *fsmpb.Command_CreateBinding, *fsmpb.Command_DeleteBinding,
		*fsmpb.Command_BootstrapAdmin, *fsmpb.Command_DeleteProject, *fsmpb.Command_Purge,
		*fsmpb.Command_CreateSecret, *fsmpb.Command_DeleteSecret, *fsmpb.Command_UndeleteSecret:
		return true
	}
	return false
}

// Observer is told about applied batches, idempotent replays and the
// checkpoints taken for snapshots (metrics).
type Observer interface {
	Applied(entries int, d time.Duration)
	IdempotencyReplay()
	// Checkpointed: a snapshot's checkpoint took d, during which nothing
	// was applied.
	Checkpointed(d time.Duration)
}

type noObserver struct{}

func (noObserver) Applied(int, time.Duration) {}
func (noObserver) IdempotencyReplay()         {}
func (noObserver) Checkpointed(time.Duration) {}

// SetObserver installs o (safe while Raft applies).
func (f *FSM) SetObserver(o Observer) { f.obs.Store(&o) }

func (f *FSM) observer() Observer {
	if o := f.obs.Load(); o != nil {
		return *o
	}
	return noObserver{}
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// New returns an FSM over st, resuming after the store's applied index.
func New(st *store.Store, logger hclog.Logger) (*FSM, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	idx, _, err := st.AppliedIndex()
	if err != nil {
		return nil, err
	}
	f := &FSM{store: st, logger: logger}
	f.applied.Store(idx)
	// Raft applies the log after this index (after a crash, that includes
	// what had not reached the store's disk).
	logger.Info("store opened", "applied_index", idx)
	return f, nil
}

// AppliedIndex is the index of the last Raft entry in the store.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Apply applies one entry.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies a batch of entries as one Pebble batch. Entries at or
// below the applied index were applied before a restart and are skipped.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	start := time.Now()
	out := make([]interface{}, len(logs))
	b := f.store.NewBatch()
	defer b.Close()
	var last *raft.Log
	head := &auditHead{}
	for i, l := range logs {
		if l.Index <= f.applied.Load() {
			continue
		}
		last = l
		if l.Type != raft.LogCommand {
			continue
		}
		out[i] = f.applyCommand(b, head, l)
	}
	if last == nil {
		return out
	}
	if err := head.flush(b); err != nil {
		panic(fmt.Sprintf("fsm: record the audit head at index %d: %v", last.Index, err))
	}
	if err := b.SetAppliedIndex(last.Index, last.Term); err != nil {
		panic(fmt.Sprintf("fsm: record applied index %d: %v", last.Index, err))
	}
	if err := b.Commit(); err != nil {
		panic(fmt.Sprintf("fsm: commit batch ending at index %d: %v", last.Index, err))
	}
	f.applied.Store(last.Index)
	if f.identityTouched {
		// After the commit: a cache that read the generation before
		// reading the store can never hold pre-commit state under the
		// new generation.
		f.identityTouched = false
		f.identityGen.Add(1)
	}
	f.observer().Applied(len(logs), time.Since(start))
	return out
}

// DecodeCommand decodes a log entry's data. It panics on an entry that is
// not a command this FSM knows.
func DecodeCommand(data []byte) *fsmpb.Command {
	cmd := &fsmpb.Command{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		panic(fmt.Sprintf("fsm: undecodable log entry: %v", err))
	}
	if f := cmd.GetFormat(); f != CommandFormat && f != CallerFormat {
		panic(fmt.Sprintf("fsm: command format %d, this build applies %d and %d: upgrade this node", f, CommandFormat, CallerFormat))
	}
	if cmd.GetOp() == nil {
		panic("fsm: command with an unknown operation (written by a newer version?): upgrade this node")
	}
	return cmd
}

// EncodeCommand serializes a command for Raft.
func EncodeCommand(cmd *fsmpb.Command) ([]byte, error) {
	cmd.Format = CommandFormat
	if cmd.GetCaller() != "" || cmd.GetReplayOnly() {
		cmd.Format = CallerFormat
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
}

func (f *FSM) applyCommand(b *store.Batch, head *auditHead, l *raft.Log) *Result {
	cmd := DecodeCommand(l.Data)
	a := &applier{b: b, head: head, now: cmd.GetTimeUnixNano()}
	key := cmd.GetIdempotencyKey()
	if key != "" {
		if res, done := a.replay(key, cmd); done {
			f.observer().IdempotencyReplay()
			a.auditCall(cmd.GetAudit(), res)
			return res
		}
	}
	if cmd.GetReplayOnly() {
		// Authorized only as a replay, and there is nothing to replay.
		return &Result{Err: ErrReplayGone}
	}
	if touchesIdentity(cmd) {
		f.identityTouched = true
	}
	res := a.dispatch(cmd)
	if res.Err != nil && !isDomainError(res.Err) {
		// A storage failure half-way through a command would leave this
		// replica different from the others.
		panic(fmt.Sprintf("fsm: applying index %d: %v", l.Index, res.Err))
	}
	if key != "" {
		a.remember(key, cmd, res)
	}
	a.auditCall(cmd.GetAudit(), res)
	return res
}

func isDomainError(err error) bool {
	for _, e := range []error{store.ErrNotFound, ErrAlreadyExists, ErrConflict, ErrFailedPrecondition, ErrInvalidArgument} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Error kinds stored in idempotency records, so a replayed error keeps its
// meaning.
var errorKinds = map[string]error{
	"not_found":           store.ErrNotFound,
	"already_exists":      ErrAlreadyExists,
	"aborted":             ErrConflict,
	"failed_precondition": ErrFailedPrecondition,
	"invalid_argument":    ErrInvalidArgument,
}

func errorKind(err error) string {
	for _, kind := range []string{"not_found", "already_exists", "aborted", "failed_precondition", "invalid_argument"} {
		if errors.Is(err, errorKinds[kind]) {
			return kind
		}
	}
	return "invalid_argument"
}

// domainError is a precondition failure: its message is for the user, and
// errors.Is matches its kind (one of the sentinels above).
type domainError struct {
	kind error
	msg  string
}

func (e *domainError) Error() string { return e.msg }
func (e *domainError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &domainError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// HashKeyMismatch is the result of a command whose idempotency key has a
// record with a request hash made under another key than the command's
// (the active key rotated between a call and its retry). Nothing is
// applied; the proposer hashes the request with KeyID and proposes again,
// so it needs not read the record to know which key to hash with.
type HashKeyMismatch struct{ KeyID string }

func (e *HashKeyMismatch) Error() string {
	return "the idempotency record's request hash uses key " + e.KeyID
}

// ErrReplayGone is the result of a replay_only command whose idempotency
// record was not there (expired, or pruned) when it applied. Nothing is
// applied or recorded; the leader authorizes the call as a new one and
// proposes it again.
var ErrReplayGone = errors.New("the idempotency record to replay is gone")

func (a *applier) replay(key string, cmd *fsmpb.Command) (*Result, bool) {
	hash, hashKeyID := cmd.GetRequestHash(), cmd.GetRequestHashKeyId()
	rec, err := a.b.Idempotency(key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		panic(fmt.Sprintf("fsm: read idempotency key: %v", err))
	}
	if rec.GetExpiresUnixNano() <= a.now {
		if err := a.b.DeleteIdempotency(key, rec); err != nil {
			panic(fmt.Sprintf("fsm: delete idempotency key: %v", err))
		}
		return nil, false
	}
	if caller := cmd.GetCaller(); caller != "" && rec.GetCaller() != "" && rec.GetCaller() != caller {
		// Another account's outcome (a token's secret, say) is not this
		// caller's to see, nor is the call its to repeat.
		return &Result{Err: errorf(ErrInvalidArgument, "x-idempotency-key was already used by another account; use a new key")}, true
	}
	if hashKeyID != "" && rec.GetRequestHashKeyId() != "" && rec.GetRequestHashKeyId() != hashKeyID {
		return &Result{Err: &HashKeyMismatch{KeyID: rec.GetRequestHashKeyId()}}, true
	}
	if !bytes.Equal(rec.GetRequestHash(), hash) {
		return &Result{Err: errorf(ErrInvalidArgument, "x-idempotency-key was already used with a different request")}, true
	}
	if rec.GetErrorKind() != "" {
		return &Result{Err: &domainError{kind: errorKinds[rec.GetErrorKind()], msg: rec.GetErrorMessage()}}, true
	}
	if len(rec.GetResponse()) == 0 {
		return &Result{}, true
	}
	anyMsg := &anypb.Any{}
	if err := proto.Unmarshal(rec.GetResponse(), anyMsg); err != nil {
		panic(fmt.Sprintf("fsm: corrupt idempotency record: %v", err))
	}
	msg, err := anyMsg.UnmarshalNew()
	if err != nil {
		panic(fmt.Sprintf("fsm: corrupt idempotency record: %v", err))
	}
	return &Result{Response: msg}, true
}

func (a *applier) remember(key string, cmd *fsmpb.Command, res *Result) {
	rec := &fsmpb.IdempotencyRecord{
		RequestHash: cmd.GetRequestHash(), RequestHashKeyId: cmd.GetRequestHashKeyId(),
		ExpiresUnixNano: a.now + int64(IdempotencyTTL), Caller: cmd.GetCaller(),
	}
	if res.Err != nil {
		rec.ErrorKind, rec.ErrorMessage = errorKind(res.Err), res.Err.Error()
	} else if res.Response != nil {
		anyMsg, err := anypb.New(res.Response)
		if err != nil {
			panic(fmt.Sprintf("fsm: wrap response: %v", err))
		}
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(anyMsg)
		if err != nil {
			panic(fmt.Sprintf("fsm: marshal response: %v", err))
		}
		rec.Response = raw
	}
	if err := a.b.PutIdempotency(key, rec); err != nil {
		panic(fmt.Sprintf("fsm: store idempotency record: %v", err))
	}
}

// Snapshot captures the store at the current applied index as a
// checkpoint (store.Checkpoint: hard links, milliseconds whatever the
// store's size). Taking it syncs the store's WAL first, because Raft may
// truncate its log up to the snapshot's index once the snapshot is
// persisted. Raft calls Snapshot between applies, so the checkpoint holds
// exactly the index Raft records for it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	start := time.Now()
	ck, err := f.store.Checkpoint()
	if err != nil {
		return nil, fmt.Errorf("fsm: snapshot: %w", err)
	}
	took := time.Since(start)
	f.observer().Checkpointed(took)
	f.logger.Info("checkpoint taken for a snapshot", "applied_index", f.applied.Load(), "duration", took)
	return &fsmSnapshot{ck: ck, logger: f.logger}, nil
}

// Restore replaces the store with a snapshot's content.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.store.Restore(rc); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	idx, _, err := f.store.AppliedIndex()
	if err != nil {
		return err
	}
	f.applied.Store(idx)
	f.identityGen.Add(1)
	f.logger.Info("restored from snapshot", "applied_index", idx)
	return nil
}

// CheckpointSink is a snapshot sink that can keep a store checkpoint as
// the snapshot itself instead of a stream of it (cluster's snapshot store
// does). KeepCheckpoint takes the directory over (it moves it) or fails
// leaving the directory where it was and nothing written to the sink.
type CheckpointSink interface {
	raft.SnapshotSink
	KeepCheckpoint(dir string) error
}

type fsmSnapshot struct {
	ck     *store.Checkpoint
	logger hclog.Logger
}

// Persist hands the checkpoint to the sink, or streams it into a sink that
// cannot keep one.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if cs, ok := sink.(CheckpointSink); ok {
		err := cs.KeepCheckpoint(s.ck.Dir())
		if err == nil {
			return sink.Close()
		}
		s.logger.Warn("snapshot store cannot keep the checkpoint; streaming it instead", "error", err)
	}
	if _, err := s.ck.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release removes the checkpoint unless the sink kept it.
func (s *fsmSnapshot) Release() {
	if err := s.ck.Remove(); err != nil {
		s.logger.Warn("cannot remove a snapshot's checkpoint", "dir", s.ck.Dir(), "error", err)
	}
}
