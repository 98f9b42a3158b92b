package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// t0 is the leader's clock at the start of every test, in Unix nanoseconds.
const t0 = int64(1_700_000_000_000_000_000)

// ---------------------------------------------------------------- harness

// harness is one FSM over one store, fed raft.Log values directly.
type harness struct {
	t   testing.TB
	dir string
	st  *store.Store
	f   *fsm.FSM
	idx uint64 // index of the last log built
	now int64  // time stamped on commands that carry none
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), now: t0}
	h.open()
	t.Cleanup(func() {
		if h.st != nil {
			h.st.Close()
		}
	})
	return h
}

func (h *harness) open() {
	h.t.Helper()
	st, err := store.Open(h.dir, nil)
	if err != nil {
		h.t.Fatalf("store.Open: %v", err)
	}
	f, err := fsm.New(st, nil)
	if err != nil {
		h.t.Fatalf("fsm.New: %v", err)
	}
	h.st, h.f = st, f
}

// reopen closes the store and opens a new store and FSM over the same
// directory, as a restarted node does.
func (h *harness) reopen() {
	h.t.Helper()
	if err := h.st.Close(); err != nil {
		h.t.Fatalf("close: %v", err)
	}
	h.st = nil
	h.open()
}

func encode(t testing.TB, cmd *fsmpb.Command) []byte {
	t.Helper()
	data, err := fsm.EncodeCommand(cmd)
	if err != nil {
		t.Fatalf("EncodeCommand: %v", err)
	}
	return data
}

// log builds the next log entry for cmd, stamping h.now when the command
// carries no time.
func (h *harness) log(cmd *fsmpb.Command) *raft.Log {
	h.t.Helper()
	if cmd.TimeUnixNano == 0 {
		cmd.TimeUnixNano = h.now
	}
	h.idx++
	return &raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: encode(h.t, cmd)}
}

func asResult(t testing.TB, v interface{}) *fsm.Result {
	t.Helper()
	res, ok := v.(*fsm.Result)
	if !ok || res == nil {
		t.Fatalf("apply returned %T %v, want *fsm.Result", v, v)
	}
	return res
}

func (h *harness) apply(cmd *fsmpb.Command) *fsm.Result {
	h.t.Helper()
	return asResult(h.t, h.f.Apply(h.log(cmd)))
}

// ok applies cmd and fails the test unless it succeeds.
func (h *harness) ok(cmd *fsmpb.Command) proto.Message {
	h.t.Helper()
	res := h.apply(cmd)
	if res.Err != nil {
		h.t.Fatalf("apply %v: unexpected error %v", cmd.GetOp(), res.Err)
	}
	return res.Response
}

// fail applies cmd and fails the test unless it fails with kind.
func (h *harness) fail(cmd *fsmpb.Command, kind error) error {
	h.t.Helper()
	res := h.apply(cmd)
	if !errors.Is(res.Err, kind) {
		h.t.Fatalf("apply %v: err = %v, want %v", cmd.GetOp(), res.Err, kind)
	}
	if res.Response != nil {
		h.t.Fatalf("apply %v failed but returned a response %v", cmd.GetOp(), res.Response)
	}
	return res.Err
}

func (h *harness) hash() string {
	h.t.Helper()
	s, err := h.st.Hash()
	if err != nil {
		h.t.Fatalf("Hash: %v", err)
	}
	return s
}

// content is a digest of every key except the applied index, to check that
// a command changed nothing but the Raft position.
func (h *harness) content() string {
	h.t.Helper()
	var sb strings.Builder
	err := h.st.Read(func(v *store.View) error {
		return v.ForEach(func(k, val []byte) error {
			if string(k) == "m/applied" {
				return nil
			}
			fmt.Fprintf(&sb, "%q=%x\n", k, val)
			return nil
		})
	})
	if err != nil {
		h.t.Fatalf("read: %v", err)
	}
	return sb.String()
}

func (h *harness) read(fn func(v *store.View) error) {
	h.t.Helper()
	if err := h.st.Read(fn); err != nil {
		h.t.Fatalf("read: %v", err)
	}
}

func (h *harness) secret(id string) *pb.Secret {
	h.t.Helper()
	var s *pb.Secret
	h.read(func(v *store.View) error {
		rec, err := v.Secret(id)
		s = rec.GetSecret()
		return err
	})
	return s
}

func (h *harness) version(id string) *pb.SecretVersion {
	h.t.Helper()
	var ver *pb.SecretVersion
	h.read(func(v *store.View) error {
		rec, err := v.Version(id)
		ver = rec.GetVersion()
		return err
	})
	return ver
}

func (h *harness) project(id string) *pb.Project {
	h.t.Helper()
	var p *pb.Project
	h.read(func(v *store.View) error {
		var err error
		p, err = v.Project(id)
		return err
	})
	return p
}

func (h *harness) notFound(what string, fn func(v *store.View) error) {
	h.t.Helper()
	if err := h.st.Read(fn); !errors.Is(err, store.ErrNotFound) {
		h.t.Fatalf("%s: err = %v, want ErrNotFound", what, err)
	}
}

func (h *harness) secretIDByName(projectID, name string) (string, error) {
	var id string
	err := h.st.Read(func(v *store.View) error {
		var err error
		id, err = v.SecretIDByName(projectID, name)
		return err
	})
	return id, err
}

func (h *harness) duePurges(now int64) []string {
	h.t.Helper()
	var ids []string
	h.read(func(v *store.View) error {
		var err error
		ids, err = v.DuePurges(now, 1000)
		return err
	})
	return ids
}

func (h *harness) appliedIndex() uint64 {
	h.t.Helper()
	idx, _, err := h.st.AppliedIndex()
	if err != nil {
		h.t.Fatal(err)
	}
	if idx != h.f.AppliedIndex() {
		h.t.Fatalf("store applied index %d != FSM applied index %d", idx, h.f.AppliedIndex())
	}
	return idx
}

func mustPanic(t *testing.T, what string, fn func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Fatalf("%s: did not panic", what)
		}
	}()
	fn()
}

// ---------------------------------------------------------------- commands

func cmdCreateProject(id, name string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CreateProject{CreateProject: &fsmpb.CreateProject{
		Project: &pb.Project{
			Metadata: &pb.Metadata{Id: id, Name: name, Labels: map[string]string{"team": "a", "env": "prod"}},
			Spec:     &pb.ProjectSpec{Description: "project " + name},
			Status:   &pb.ProjectStatus{Region: "local1"},
		},
	}}}
}

func cmdDeleteProject(id string, rv int64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_DeleteProject{DeleteProject: &fsmpb.DeleteProject{Id: id, ResourceVersion: rv}}}
}

// sealed is a stand-in for a payload sealed by the leader.
func sealed(versionID string, keys ...string) *fsmpb.SealedPayload {
	p := &fsmpb.SealedPayload{KekId: "k1", WrappedDek: []byte("wrapped-dek-of-" + versionID)}
	for i, k := range keys {
		p.Entries = append(p.Entries, &fsmpb.SealedEntry{
			Key: k, Binary: i%2 == 1, Nonce: []byte("nonce-" + k), Ciphertext: []byte("ct-" + versionID + "-" + k),
		})
	}
	return p
}

func newVersion(id, secretID string, setPrimary bool) *fsmpb.CreateVersion {
	return &fsmpb.CreateVersion{
		Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{Id: id, ParentId: secretID},
			Spec:     &pb.SecretVersionSpec{Description: "version " + id},
		},
		Payload:    sealed(id, "user", "password"),
		SetPrimary: setPrimary,
	}
}

func cmdCreateSecret(id, projectID, name string, first *fsmpb.CreateVersion) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CreateSecret{CreateSecret: &fsmpb.CreateSecret{
		Secret: &pb.Secret{
			Metadata: &pb.Metadata{Id: id, ParentId: projectID, Name: name},
			Spec:     &pb.SecretSpec{Description: "secret " + name},
		},
		FirstVersion: first,
	}}}
}

func cmdCreateVersion(id, secretID string, setPrimary bool) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_CreateVersion{CreateVersion: newVersion(id, secretID, setPrimary)}}
}

func cmdUpdateSecret(op *fsmpb.UpdateSecret) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_UpdateSecret{UpdateSecret: op}}
}

func cmdSetPrimary(secretID, versionID string) *fsmpb.Command {
	return cmdUpdateSecret(&fsmpb.UpdateSecret{Id: secretID, Paths: []string{"spec.primary_version_id"}, PrimaryVersionId: versionID})
}

func cmdDeleteSecret(id string, rv int64, purgeAfter time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_DeleteSecret{DeleteSecret: &fsmpb.DeleteSecret{Id: id, ResourceVersion: rv, PurgeAfterNanos: int64(purgeAfter)}}}
}

func cmdUndeleteSecret(id, name string, rv int64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_UndeleteSecret{UndeleteSecret: &fsmpb.UndeleteSecret{Id: id, Name: name, ResourceVersion: rv}}}
}

func cmdDeleteVersion(id string, rv int64, purgeAfter time.Duration) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_DeleteVersion{DeleteVersion: &fsmpb.DeleteVersion{Id: id, ResourceVersion: rv, PurgeAfterNanos: int64(purgeAfter)}}}
}

func cmdUndeleteVersion(id string, rv int64) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_UndeleteVersion{UndeleteVersion: &fsmpb.UndeleteVersion{Id: id, ResourceVersion: rv}}}
}

func cmdPurge(secretIDs, versionIDs []string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_Purge{Purge: &fsmpb.Purge{SecretIds: secretIDs, VersionIds: versionIDs}}}
}

func cmdPrune(keys ...string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_PruneIdempotency{PruneIdempotency: &fsmpb.PruneIdempotency{Keys: keys}}}
}

func cmdRegisterNode(id string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: &fsmpb.NodeRecord{
		NodeId: id, RaftAddress: id + ":7701", GrpcAddress: id + ":7700",
	}}}}
}

func cmdDeregisterNode(id string) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_DeregisterNode{DeregisterNode: &fsmpb.DeregisterNode{NodeId: id}}}
}

func cmdRewrap(items ...*fsmpb.Rewrap) *fsmpb.Command {
	return &fsmpb.Command{Op: &fsmpb.Command_RewrapVersions{RewrapVersions: &fsmpb.RewrapVersions{Items: items}}}
}

func withKey(cmd *fsmpb.Command, key, request string) *fsmpb.Command {
	cmd.IdempotencyKey = key
	cmd.RequestHash = []byte("sha256:" + request)
	return cmd
}

func at(cmd *fsmpb.Command, t int64) *fsmpb.Command {
	cmd.TimeUnixNano = t
	return cmd
}

// ---------------------------------------------------------------- replay safety

// Every command, applied again at the same index (as after a restart with
// NoSnapshotRestoreOnStart), is skipped: nil response, state unchanged.
func TestEveryCommandAppliedTwiceIsSkipped(t *testing.T) {
	h := newHarness(t)
	steps := []struct {
		name string
		cmd  *fsmpb.Command
	}{
		{"register node", cmdRegisterNode("node-1")},
		{"create project", cmdCreateProject("project-1", "p1")},
		{"create secret", cmdCreateSecret("mbsec-1", "project-1", "s1", newVersion("mbsecver-1", "mbsec-1", false))},
		{"create version", cmdCreateVersion("mbsecver-2", "mbsec-1", false)},
		{"update secret", cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"spec.description"}, Description: "new"})},
		{"delete version", cmdDeleteVersion("mbsecver-2", 0, time.Minute)},
		{"undelete version", cmdUndeleteVersion("mbsecver-2", 0)},
		{"delete secret", cmdDeleteSecret("mbsec-1", 0, time.Minute)},
		{"undelete secret", cmdUndeleteSecret("mbsec-1", "", 0)},
		{"delete secret again", cmdDeleteSecret("mbsec-1", 0, time.Minute)},
		{"purge", at(cmdPurge([]string{"mbsec-1"}, nil), t0+int64(time.Minute))},
		{"keyed create project", withKey(cmdCreateProject("project-2", "p2"), "key-1", "req-1")},
		{"prune idempotency", at(cmdPrune("key-1"), t0+int64(48*time.Hour))},
		{"delete project", cmdDeleteProject("project-2", 0)},
		{"delete emptied project", cmdDeleteProject("project-1", 0)},
		{"setup for rewrap", cmdCreateProject("project-3", "p3")},
		{"setup for rewrap 2", cmdCreateSecret("mbsec-3", "project-3", "s3", newVersion("mbsecver-3", "mbsec-3", false))},
		{"setup for rewrap 3", cmdDeleteSecret("mbsec-3", 0, time.Minute)},
		{"rewrap", cmdRewrap(&fsmpb.Rewrap{VersionId: "mbsecver-3", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("w2")})},
		{"purge rewrapped", at(cmdPurge([]string{"mbsec-3"}, nil), t0+int64(time.Minute))},
		{"delete project 3", cmdDeleteProject("project-3", 0)},
		{"deregister node", cmdDeregisterNode("node-1")},
	}
	for _, s := range steps {
		l := h.log(s.cmd)
		res := asResult(t, h.f.Apply(l))
		if res.Err != nil {
			t.Fatalf("%s: %v", s.name, res.Err)
		}
		before, idx := h.hash(), h.appliedIndex()
		if idx != l.Index {
			t.Fatalf("%s: applied index %d, want %d", s.name, idx, l.Index)
		}
		if again := h.f.Apply(l); again != nil {
			t.Fatalf("%s: second apply at index %d returned %v, want nil", s.name, l.Index, again)
		}
		if got := h.hash(); got != before {
			t.Fatalf("%s: second apply at index %d changed the store", s.name, l.Index)
		}
		// Also in a batch, and with older entries mixed in.
		out := h.f.ApplyBatch([]*raft.Log{l, {Index: 1, Term: 1, Type: raft.LogCommand, Data: l.Data}})
		if len(out) != 2 || out[0] != nil || out[1] != nil {
			t.Fatalf("%s: replayed batch returned %v", s.name, out)
		}
		if got := h.hash(); got != before || h.appliedIndex() != idx {
			t.Fatalf("%s: replayed batch changed the store", s.name)
		}
	}
	// Everything was created, deleted and purged: only the applied index is left.
	if c := h.content(); c != "" {
		t.Fatalf("left over after the full cycle:\n%s", c)
	}
}

func TestAppliedIndexSurvivesReopen(t *testing.T) {
	h := newHarness(t)
	l1 := h.log(cmdCreateProject("project-1", "p1"))
	l2 := h.log(cmdCreateSecret("mbsec-1", "project-1", "s1", nil))
	l3 := h.log(cmdCreateVersion("mbsecver-1", "mbsec-1", false))
	l3.Term = 4
	// Two entries in one batch, one alone.
	for _, r := range h.f.ApplyBatch([]*raft.Log{l1, l2}) {
		if res := asResult(t, r); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	if res := asResult(t, h.f.Apply(l3)); res.Err != nil {
		t.Fatal(res.Err)
	}
	want := h.hash()

	h.reopen()
	if got := h.f.AppliedIndex(); got != 3 {
		t.Fatalf("FSM over reopened store resumes at %d, want 3", got)
	}
	idx, term, err := h.st.AppliedIndex()
	if err != nil || idx != 3 || term != 4 {
		t.Fatalf("store applied index = %d, %d, %v; want 3, 4", idx, term, err)
	}
	if got := h.hash(); got != want {
		t.Fatal("store changed across reopen")
	}
	// Raft replays the log from the start: everything is skipped.
	out := h.f.ApplyBatch([]*raft.Log{l1, l2, l3})
	for i, r := range out {
		if r != nil {
			t.Fatalf("replayed entry %d returned %v", i+1, r)
		}
	}
	if got := h.hash(); got != want {
		t.Fatal("replay after reopen changed the store")
	}
	// A batch straddling the applied index applies only the new part.
	l4 := h.log(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	out = h.f.ApplyBatch([]*raft.Log{l3, l4})
	if out[0] != nil {
		t.Fatalf("old entry in a straddling batch returned %v", out[0])
	}
	if res := asResult(t, out[1]); res.Err != nil {
		t.Fatal(res.Err)
	}
	if h.appliedIndex() != 4 {
		t.Fatalf("applied index %d, want 4", h.appliedIndex())
	}
	if n := h.secret("mbsec-1").GetStatus().GetVersionCount(); n != 2 {
		t.Fatalf("version_count = %d, want 2 (mbsecver-1 must not be applied twice)", n)
	}
}

func TestNonCommandEntriesAdvanceAppliedIndex(t *testing.T) {
	h := newHarness(t)
	h.ok(cmdCreateProject("project-1", "p1"))
	before := h.content()
	h.idx++
	cfg := &raft.Log{Index: h.idx, Term: 2, Type: raft.LogConfiguration, Data: []byte("not a command")}
	if out := h.f.ApplyBatch([]*raft.Log{cfg}); out[0] != nil {
		t.Fatalf("configuration entry returned %v", out[0])
	}
	if h.appliedIndex() != h.idx {
		t.Fatalf("applied index %d, want %d", h.appliedIndex(), h.idx)
	}
	if h.content() != before {
		t.Fatal("configuration entry changed the data")
	}
	// An empty batch is harmless.
	if out := h.f.ApplyBatch(nil); len(out) != 0 {
		t.Fatalf("empty batch returned %v", out)
	}
}

func TestUndecodableEntryPanics(t *testing.T) {
	h := newHarness(t)
	h.ok(cmdCreateProject("project-1", "p1"))
	want, idx := h.hash(), h.appliedIndex()

	valid := encode(t, at(cmdCreateProject("project-2", "p2"), t0))
	otherFormat := func(format uint32) []byte {
		raw, err := proto.Marshal(&fsmpb.Command{Format: format, TimeUnixNano: t0, Op: cmdCreateProject("project-3", "p3").Op})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	emptyOp := encode(t, &fsmpb.Command{TimeUnixNano: t0})
	// A command written by a newer version: a oneof case this build does
	// not know arrives as an unknown field.
	newerOp := protowire.AppendTag(encode(t, &fsmpb.Command{TimeUnixNano: t0}), 99, protowire.BytesType)
	newerOp = protowire.AppendBytes(newerOp, []byte{0x0a, 0x01, 'x'})

	cases := map[string][]byte{
		"garbage bytes":    {0xff, 0xff, 0xff, 0xff},
		"truncated":        valid[:len(valid)-3],
		"format 0":         otherFormat(0),
		"format 3":         otherFormat(3),
		"empty op":         emptyOp,
		"unknown op":       newerOp,
		"empty data":       nil,
		"text, not protos": []byte("create project p3"),
	}
	for name, data := range cases {
		l := &raft.Log{Index: idx + 1, Term: 1, Type: raft.LogCommand, Data: data}
		mustPanic(t, name, func() { h.f.Apply(l) })
		if h.appliedIndex() != idx || h.hash() != want {
			t.Fatalf("%s: a panicking entry changed the store", name)
		}
		// Whole batch is refused: the valid entry before the bad one is
		// not committed either.
		good := &raft.Log{Index: idx + 1, Term: 1, Type: raft.LogCommand, Data: valid}
		bad := &raft.Log{Index: idx + 2, Term: 1, Type: raft.LogCommand, Data: data}
		mustPanic(t, name+" in a batch", func() { h.f.ApplyBatch([]*raft.Log{good, bad}) })
		if h.appliedIndex() != idx || h.hash() != want {
			t.Fatalf("%s: a batch with a panicking entry was partly committed", name)
		}
		mustPanic(t, "DecodeCommand "+name, func() { fsm.DecodeCommand(data) })
	}
	// The store is not left locked: a later entry and a restore both work.
	h.idx = idx
	h.ok(cmdCreateProject("project-2", "p2"))
	ck, err := h.st.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Remove()
	var buf bytes.Buffer
	if _, err := ck.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if err := h.st.Restore(&buf); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeDecodeCommand(t *testing.T) {
	cmd := cmdCreateProject("project-1", "p1")
	cmd.Format = 7
	data := encode(t, cmd)
	if cmd.GetFormat() != fsm.CommandFormat {
		t.Fatalf("EncodeCommand left format %d", cmd.GetFormat())
	}
	got := fsm.DecodeCommand(data)
	if !proto.Equal(got, cmd) {
		t.Fatalf("round trip: got %v, want %v", got, cmd)
	}
	// A command naming its caller, or replay-only, is of a format older
	// builds (which apply format 1 only) stop on instead of ignoring those
	// fields; this build applies both.
	for _, c := range []*fsmpb.Command{byCaller(cmdCreateProject("project-1", "p1"), "useraccount-1"), replayOnly(cmdCreateProject("project-1", "p1"))} {
		data := encode(t, c)
		if c.GetFormat() != fsm.CallerFormat || fsm.CallerFormat == fsm.CommandFormat {
			t.Fatalf("a command with caller %q, replay-only %v encoded as format %d, want %d", c.GetCaller(), c.GetReplayOnly(), c.GetFormat(), fsm.CallerFormat)
		}
		if got := fsm.DecodeCommand(data); !proto.Equal(got, c) {
			t.Fatalf("round trip: got %v, want %v", got, c)
		}
	}
	// Deterministic: map fields (labels) encode the same every time.
	for i := 0; i < 20; i++ {
		if !bytes.Equal(encode(t, cmdCreateProject("project-1", "p1")), encode(t, cmdCreateProject("project-1", "p1"))) {
			t.Fatal("EncodeCommand is not deterministic")
		}
	}
}

// ---------------------------------------------------------------- batches

func TestApplyBatchWithDependentCommands(t *testing.T) {
	h := newHarness(t)
	logs := []*raft.Log{
		h.log(cmdCreateProject("project-1", "p1")),
		h.log(cmdCreateSecret("mbsec-1", "project-1", "s1", newVersion("mbsecver-1", "mbsec-1", false))),
		h.log(cmdCreateVersion("mbsecver-2", "mbsec-1", false)),
		h.log(cmdCreateSecret("mbsec-2", "project-1", "s1", nil)), // name taken by entry 2
		h.log(cmdDeleteVersion("mbsecver-1", 0, time.Hour)),
		h.log(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", ResourceVersion: 3, Paths: []string{"metadata.name"}, Name: "renamed"})),
		h.log(cmdCreateSecret("mbsec-3", "project-1", "s1", nil)), // name freed by entry 6
	}
	out := h.f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("%d results for %d entries", len(out), len(logs))
	}
	for i, r := range out {
		res := asResult(t, r)
		if i == 3 {
			if !errors.Is(res.Err, fsm.ErrAlreadyExists) {
				t.Fatalf("entry %d: err = %v, want ErrAlreadyExists", i+1, res.Err)
			}
			continue
		}
		if res.Err != nil {
			t.Fatalf("entry %d: %v", i+1, res.Err)
		}
	}
	if v := asResult(t, out[2]).Response.(*pb.SecretVersion); v.GetStatus().GetNumber() != 2 {
		t.Fatalf("second version number = %d", v.GetStatus().GetNumber())
	}
	s := h.secret("mbsec-1")
	if s.GetMetadata().GetName() != "renamed" || s.GetStatus().GetPrimaryVersionId() != "mbsecver-2" || s.GetStatus().GetVersionCount() != 1 {
		t.Fatalf("secret after batch: %v", s)
	}
	if id, err := h.secretIDByName("project-1", "s1"); err != nil || id != "mbsec-3" {
		t.Fatalf("name s1 -> %q, %v", id, err)
	}
	if n := h.project("project-1").GetStatus().GetSecretCount(); n != 2 {
		t.Fatalf("secret_count = %d, want 2", n)
	}
	if h.appliedIndex() != uint64(len(logs)) {
		t.Fatalf("applied index %d", h.appliedIndex())
	}
}

// ---------------------------------------------------------------- determinism

// scenario is a run of commands touching every operation, with failures
// and idempotent retries among them.
func scenario() []*fsmpb.Command {
	min := int64(time.Minute)
	return []*fsmpb.Command{
		at(cmdRegisterNode("node-b"), t0),
		at(cmdRegisterNode("node-a"), t0),
		at(withKey(cmdCreateProject("project-1", "p1"), "k1", "r1"), t0+1),
		at(withKey(cmdCreateProject("project-9", "p1"), "k1", "r1"), t0+2), // retry
		at(cmdCreateProject("project-2", "p2"), t0+3),
		at(cmdCreateProject("project-x", "p2"), t0+3), // name taken
		at(cmdCreateSecret("mbsec-1", "project-1", "s1", newVersion("mbsecver-1", "", false)), t0+4),
		at(cmdCreateSecret("mbsec-2", "project-1", "s2", nil), t0+5),
		at(cmdCreateVersion("mbsecver-2", "mbsec-1", false), t0+6),
		at(cmdCreateVersion("mbsecver-3", "mbsec-1", true), t0+7),
		at(cmdCreateVersion("mbsecver-4", "mbsec-2", false), t0+8),
		at(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"metadata.labels", "spec.description"},
			Labels: map[string]string{"z": "1", "a": "2", "m": "3"}, Description: "d"}), t0+9),
		at(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", ResourceVersion: 1}), t0+10), // conflict
		at(cmdSetPrimary("mbsec-1", ""), t0+11),
		at(cmdDeleteVersion("mbsecver-3", 0, time.Minute), t0+12),
		at(cmdDeleteSecret("mbsec-2", 0, time.Minute), t0+13),
		at(withKey(cmdCreateSecret("mbsec-5", "project-1", "s2", nil), "k2", "r2"), t0+14),
		at(withKey(cmdCreateSecret("mbsec-6", "project-1", "s2", nil), "k2", "other"), t0+15), // key reused
		at(cmdUndeleteSecret("mbsec-2", "", 0), t0+16),                                        // name taken
		at(cmdUndeleteSecret("mbsec-2", "s2-restored", 0), t0+17),                             // new name
		at(cmdDeleteSecret("mbsec-2", 0, time.Minute), t0+18),
		at(cmdUndeleteVersion("mbsecver-3", 0), t0+19),
		at(cmdDeleteVersion("mbsecver-3", 0, time.Minute), t0+20),
		at(cmdPurge([]string{"mbsec-2"}, []string{"mbsecver-3"}), t0+min), // not due yet
		at(cmdPurge([]string{"mbsec-2"}, []string{"mbsecver-3"}), t0+20+min),
		at(cmdPrune("k1", "k2"), t0+int64(24*time.Hour)+14),
		at(cmdDeleteProject("project-2", 0), t0+int64(25*time.Hour)),
		at(cmdDeregisterNode("node-b"), t0+int64(25*time.Hour)),
		at(cmdRewrap(&fsmpb.Rewrap{VersionId: "mbsecver-1", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("w"), ToKekCheck: []byte("c2")}), t0+int64(26*time.Hour)),
	}
}

func TestDeterminism(t *testing.T) {
	// The same entries, applied one by one, in batches of three, and all in
	// one batch, give byte-identical stores and the same results.
	type run struct {
		h       *harness
		results []interface{}
	}
	var runs []*run
	for _, batch := range []int{1, 3, 1000} {
		h := newHarness(t)
		var logs []*raft.Log
		for _, cmd := range scenario() {
			logs = append(logs, h.log(cmd))
		}
		r := &run{h: h}
		for i := 0; i < len(logs); i += batch {
			end := min(i+batch, len(logs))
			r.results = append(r.results, h.f.ApplyBatch(logs[i:end])...)
		}
		runs = append(runs, r)
	}
	ref := runs[0]
	for _, r := range runs[1:] {
		if r.h.hash() != ref.h.hash() {
			t.Fatalf("stores differ:\n%s\nvs\n%s", ref.h.content(), r.h.content())
		}
		for i := range ref.results {
			a, b := asResult(t, ref.results[i]), asResult(t, r.results[i])
			if !proto.Equal(a.Response, b.Response) || fmt.Sprint(a.Err) != fmt.Sprint(b.Err) {
				t.Fatalf("entry %d: results differ: %v / %v", i+1, a, b)
			}
		}
	}
	// Sanity: the scenario did what it says.
	h := ref.h
	if _, err := h.secretIDByName("project-1", "s2"); err != nil {
		t.Fatalf("s2: %v", err)
	}
	h.notFound("purged secret", func(v *store.View) error { _, err := v.Secret("mbsec-2"); return err })
	h.notFound("purged version", func(v *store.View) error { _, err := v.Version("mbsecver-3"); return err })
	h.notFound("deleted project", func(v *store.View) error { _, err := v.Project("project-2"); return err })
	errs := 0
	for _, r := range ref.results {
		if asResult(t, r).Err != nil {
			errs++
		}
	}
	if errs != 4 {
		t.Fatalf("%d failed commands in the scenario, want 4", errs)
	}
}

// ---------------------------------------------------------------- snapshots

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	buf       bytes.Buffer
	failAfter int // fail writes once this many bytes are written (0: never)
	closed    bool
	cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.closed || s.cancelled {
		return 0, errors.New("sink finished")
	}
	if s.failAfter > 0 && s.buf.Len()+len(p) > s.failAfter {
		return 0, errors.New("disk full")
	}
	return s.buf.Write(p)
}
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) ID() string    { return "mem-1" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func persist(t *testing.T, f *fsm.FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist left the sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.buf.Bytes()
}

func TestSnapshotPersistRestore(t *testing.T) {
	src := newHarness(t)
	cmds := scenario()
	half := len(cmds) / 2
	for _, cmd := range cmds[:half] {
		src.apply(cmd)
	}
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	wantHash, wantIdx := src.hash(), src.f.AppliedIndex()
	// The FSM keeps applying while the snapshot is persisted; the snapshot
	// stays at its point in time.
	var rest []*raft.Log
	for _, cmd := range cmds[half:] {
		rest = append(rest, src.log(cmd))
	}
	src.f.ApplyBatch(rest)
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	// Restore into an FSM that has state of its own.
	dst := newHarness(t)
	dst.ok(cmdCreateProject("project-only-dst", "dst"))
	dst.ok(cmdCreateProject("project-only-dst2", "dst2"))
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(sink.buf.Bytes()))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if dst.hash() != wantHash {
		t.Fatal("restored store differs from the snapshot's point in time")
	}
	if dst.f.AppliedIndex() != wantIdx || dst.appliedIndex() != wantIdx {
		t.Fatalf("restored applied index %d, want %d", dst.f.AppliedIndex(), wantIdx)
	}
	// Raft then sends the entries after the snapshot (and possibly some
	// before, which are skipped). Both replicas converge.
	dst.f.ApplyBatch(append([]*raft.Log{{Index: wantIdx, Term: 1, Type: raft.LogCommand, Data: []byte("already applied, never decoded")}}, rest...))
	if dst.hash() != src.hash() {
		t.Fatal("replicas differ after applying the same entries past the snapshot")
	}
	// The restore survives a restart of the destination.
	h := dst.hash()
	dst.reopen()
	if dst.hash() != h || dst.f.AppliedIndex() != src.f.AppliedIndex() {
		t.Fatal("restored state lost across reopen")
	}

	// A full snapshot of the final state into a brand-new node.
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(persist(t, src.f)))); err != nil {
		t.Fatal(err)
	}
	if fresh.hash() != src.hash() || fresh.f.AppliedIndex() != src.f.AppliedIndex() {
		t.Fatal("new node restored from a snapshot differs")
	}
}

func TestRestoreRefusesCorruptSnapshot(t *testing.T) {
	src := newHarness(t)
	for _, cmd := range scenario() {
		src.apply(cmd)
	}
	data := persist(t, src.f)

	dst := newHarness(t)
	dst.ok(cmdCreateProject("project-1", "mine"))
	want, idx := dst.hash(), dst.f.AppliedIndex()
	bad := append([]byte(nil), data...)
	bad[len(bad)/2] ^= 0x10
	for name, b := range map[string][]byte{"flipped": bad, "truncated": data[:len(data)-10]} {
		if err := dst.f.Restore(io.NopCloser(bytes.NewReader(b))); err == nil {
			t.Fatalf("%s snapshot accepted", name)
		}
		if dst.hash() != want || dst.f.AppliedIndex() != idx {
			t.Fatalf("%s snapshot changed the FSM", name)
		}
	}
}

func TestPersistCancelsOnWriteError(t *testing.T) {
	h := newHarness(t)
	for _, cmd := range scenario() {
		h.apply(cmd)
	}
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{failAfter: 100}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("Persist to a failing sink succeeded")
	}
	if !sink.cancelled {
		t.Fatal("Persist did not cancel the failing sink")
	}
}

// keepingSink is a memSink that can keep checkpoints (fsm.CheckpointSink),
// as cluster's snapshot store does; refuse makes KeepCheckpoint fail.
type keepingSink struct {
	memSink
	into    string // where a kept checkpoint is moved
	offered string // the directory KeepCheckpoint was given
	refuse  bool
}

func (s *keepingSink) KeepCheckpoint(dir string) error {
	s.offered = dir
	if s.refuse {
		return errors.New("cannot keep checkpoints here")
	}
	return os.Rename(dir, s.into)
}

var _ fsm.CheckpointSink = (*keepingSink)(nil)

func TestPersistHandsTheCheckpointToASinkThatKeepsIt(t *testing.T) {
	h := newHarness(t)
	cmds := scenario()
	for _, cmd := range cmds[:10] {
		h.apply(cmd)
	}
	wantHash, wantIdx := h.hash(), h.f.AppliedIndex()
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds[10:] { // applies go on while the snapshot is persisted
		h.apply(cmd)
	}
	sink := &keepingSink{into: filepath.Join(t.TempDir(), "kept")}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled || sink.buf.Len() != 0 {
		t.Fatalf("sink closed=%v cancelled=%v with %d bytes; want closed with no data", sink.closed, sink.cancelled, sink.buf.Len())
	}
	// Release left the kept checkpoint alone, and it holds the snapshot's
	// point in time.
	var stream bytes.Buffer
	r, err := store.OpenCheckpoint(sink.into, nil)
	if err != nil {
		t.Fatalf("open the kept checkpoint: %v", err)
	}
	_, err = r.WriteTo(&stream)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	dst := newHarness(t)
	if err := dst.f.Restore(io.NopCloser(&stream)); err != nil {
		t.Fatalf("Restore from the kept checkpoint: %v", err)
	}
	if dst.hash() != wantHash || dst.f.AppliedIndex() != wantIdx {
		t.Fatalf("kept checkpoint restores to index %d, want %d (hash equal: %v)", dst.f.AppliedIndex(), wantIdx, dst.hash() == wantHash)
	}
}

func TestPersistStreamsWhenTheSinkCannotKeepTheCheckpoint(t *testing.T) {
	h := newHarness(t)
	for _, cmd := range scenario() {
		h.apply(cmd)
	}
	want := persist(t, h.f)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &keepingSink{refuse: true}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || !bytes.Equal(sink.buf.Bytes(), want) {
		t.Fatalf("sink closed=%v with %d bytes; want closed with the %d-byte stream", sink.closed, sink.buf.Len(), len(want))
	}
	if _, err := os.Stat(sink.offered); err != nil {
		t.Fatalf("checkpoint gone before Release: %v", err)
	}
	snap.Release()
	if _, err := os.Stat(sink.offered); !os.IsNotExist(err) {
		t.Fatalf("Release left the checkpoint %s behind: %v", sink.offered, err)
	}
}

// An FSM over a store that was just restored by the store directly (e.g.
// from a backup) resumes from the restored index.
func TestNewFSMResumesFromRestoredStore(t *testing.T) {
	src := newHarness(t)
	for _, cmd := range scenario()[:10] {
		src.apply(cmd)
	}
	data := persist(t, src.f)
	dst := newHarness(t)
	if err := dst.st.Restore(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	f, err := fsm.New(dst.st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.AppliedIndex() != 10 {
		t.Fatalf("AppliedIndex = %d, want 10", f.AppliedIndex())
	}
}
