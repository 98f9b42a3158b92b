package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// withSecret sets up project-1 with secret mbsec-1 ("s1") and its first
// version mbsecver-1.
func withSecret(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.ok(cmdCreateProject("project-1", "p1"))
	h.ok(cmdCreateSecret("mbsec-1", "project-1", "s1", newVersion("mbsecver-1", "mbsec-1", false)))
	return h
}

// primary returns the secret's (status primary, pinned, spec primary).
func (h *harness) primary(secretID string) string {
	h.t.Helper()
	s := h.secret(secretID)
	return fmt.Sprintf("%s pinned=%v spec=%q", s.GetStatus().GetPrimaryVersionId(), s.GetStatus().GetPrimaryPinned(), s.GetSpec().GetPrimaryVersionId())
}

func (h *harness) wantPrimary(secretID, want string) {
	h.t.Helper()
	if got := h.primary(secretID); got != want {
		h.t.Fatalf("primary of %s = %s, want %s", secretID, got, want)
	}
}

// ---------------------------------------------------------------- projects

func TestCreateProject(t *testing.T) {
	h := newHarness(t)
	h.now = t0 + 123
	p := h.ok(cmdCreateProject("project-1", "p1")).(*pb.Project)
	md := p.GetMetadata()
	if md.GetResourceVersion() != 1 || md.GetCreatedAt().AsTime().UnixNano() != t0+123 || md.GetUpdatedAt().AsTime().UnixNano() != t0+123 {
		t.Fatalf("stamped metadata: %v", md)
	}
	if p.GetStatus().GetRegion() != "local1" || p.GetStatus().GetSecretCount() != 0 || md.GetLabels()["team"] != "a" {
		t.Fatalf("project: %v", p)
	}
	if stored := h.project("project-1"); !proto.Equal(stored, p) {
		t.Fatalf("stored %v, returned %v", stored, p)
	}
	err := h.fail(cmdCreateProject("project-2", "p1"), fsm.ErrAlreadyExists)
	if !strings.Contains(err.Error(), "p1") {
		t.Errorf("error does not name the project: %v", err)
	}
	h.fail(cmdCreateProject("project-1", "other"), fsm.ErrAlreadyExists) // id reuse
	h.notFound("project-2", func(v *store.View) error { _, err := v.Project("project-2"); return err })
	h.ok(cmdCreateProject("project-2", "p2"))
}

func TestDeleteProject(t *testing.T) {
	h := withSecret(t)
	h.fail(cmdDeleteProject("project-404", 0), store.ErrNotFound)
	h.fail(cmdDeleteProject("project-1", 2), fsm.ErrConflict)
	h.fail(cmdDeleteProject("project-1", 0), fsm.ErrFailedPrecondition)
	// A secret scheduled for deletion still holds the project.
	h.ok(cmdDeleteSecret("mbsec-1", 0, time.Second))
	h.fail(cmdDeleteProject("project-1", 1), fsm.ErrFailedPrecondition)
	h.ok(at(cmdPurge([]string{"mbsec-1"}, nil), t0+int64(time.Second)))
	if _, ok := h.ok(cmdDeleteProject("project-1", 1)).(*pb.DeleteProjectResponse); !ok {
		t.Fatal("DeleteProject response type")
	}
	h.notFound("deleted project", func(v *store.View) error { _, err := v.Project("project-1"); return err })
	h.notFound("deleted project name", func(v *store.View) error { _, err := v.ProjectIDByName("p1"); return err })
	h.fail(cmdDeleteProject("project-1", 0), store.ErrNotFound)
	// The name is free again; the id is a new one.
	h.ok(cmdCreateProject("project-2", "p1"))
}

// ---------------------------------------------------------------- secrets

func TestCreateSecret(t *testing.T) {
	h := newHarness(t)
	h.fail(cmdCreateSecret("mbsec-1", "project-404", "s1", nil), store.ErrNotFound)
	h.ok(cmdCreateProject("project-1", "p1"))
	h.ok(cmdCreateProject("project-2", "p2"))
	h.now = t0 + 5
	s := h.ok(cmdCreateSecret("mbsec-1", "project-1", "s1", newVersion("mbsecver-1", "mbsec-1", false))).(*pb.Secret)
	if s.GetMetadata().GetResourceVersion() != 1 || s.GetMetadata().GetCreatedAt().AsTime().UnixNano() != t0+5 {
		t.Fatalf("metadata: %v", s.GetMetadata())
	}
	st := s.GetStatus()
	if st.GetState() != pb.State_ACTIVE || st.GetPrimaryVersionId() != "mbsecver-1" || st.GetPrimaryPinned() || st.GetVersionCount() != 1 {
		t.Fatalf("status: %v", st)
	}
	if !proto.Equal(h.secret("mbsec-1"), s) {
		t.Fatal("stored secret differs from the response")
	}
	ver := h.version("mbsecver-1")
	if ver.GetStatus().GetNumber() != 1 || ver.GetStatus().GetState() != pb.State_ACTIVE || ver.GetMetadata().GetParentId() != "mbsec-1" {
		t.Fatalf("first version: %v", ver)
	}
	if n := h.project("project-1").GetStatus().GetSecretCount(); n != 1 {
		t.Fatalf("secret_count = %d", n)
	}
	// Name unique among the project's live secrets, not across projects.
	h.fail(cmdCreateSecret("mbsec-2", "project-1", "s1", nil), fsm.ErrAlreadyExists)
	h.fail(cmdCreateSecret("mbsec-1", "project-1", "other", nil), fsm.ErrAlreadyExists) // id reuse
	h.ok(cmdCreateSecret("mbsec-3", "project-2", "s1", nil))
	// A secret without a version has no primary.
	h.wantPrimary("mbsec-3", ` pinned=false spec=""`)
	// A first version with set_primary is pinned from the start.
	h.ok(cmdCreateSecret("mbsec-4", "project-1", "s4", newVersion("mbsecver-4", "mbsec-4", true)))
	h.wantPrimary("mbsec-4", `mbsecver-4 pinned=true spec="mbsecver-4"`)
}

func TestUpdateSecret(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateSecret("mbsec-2", "project-1", "s2", nil))
	h.fail(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-404", Paths: []string{"spec.description"}}), store.ErrNotFound)
	h.fail(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", ResourceVersion: 7, Paths: []string{"spec.description"}, Description: "x"}), fsm.ErrConflict)
	h.fail(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"metadata.name"}, Name: "s2"}), fsm.ErrAlreadyExists)
	h.fail(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"status.state"}}), fsm.ErrInvalidArgument)
	if s := h.secret("mbsec-1"); s.GetMetadata().GetResourceVersion() != 1 || s.GetMetadata().GetName() != "s1" {
		t.Fatalf("failed updates changed the secret: %v", s)
	}

	h.now = t0 + 77
	s := h.ok(cmdUpdateSecret(&fsmpb.UpdateSecret{
		Id: "mbsec-1", ResourceVersion: 1,
		Paths: []string{"metadata.name", "metadata.labels", "spec.description"},
		Name:  "renamed", Labels: map[string]string{"env": "prod"}, Description: "new description",
	})).(*pb.Secret)
	md := s.GetMetadata()
	if md.GetName() != "renamed" || md.GetLabels()["env"] != "prod" || s.GetSpec().GetDescription() != "new description" ||
		md.GetResourceVersion() != 2 || md.GetUpdatedAt().AsTime().UnixNano() != t0+77 || md.GetCreatedAt().AsTime().UnixNano() != t0 {
		t.Fatalf("updated secret: %v", s)
	}
	if id, err := h.secretIDByName("project-1", "renamed"); err != nil || id != "mbsec-1" {
		t.Fatalf("new name -> %q, %v", id, err)
	}
	if _, err := h.secretIDByName("project-1", "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old name still claimed: %v", err)
	}
	// Renaming to its own name is a no-op; resource_version 0 means any.
	s = h.ok(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"metadata.name"}, Name: "renamed"})).(*pb.Secret)
	if s.GetMetadata().GetResourceVersion() != 3 {
		t.Fatalf("resource_version = %d", s.GetMetadata().GetResourceVersion())
	}
	// Fields outside the mask are untouched.
	s = h.ok(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"spec.description"}, Description: "d2", Name: "ignored"})).(*pb.Secret)
	if s.GetMetadata().GetName() != "renamed" || s.GetMetadata().GetLabels()["env"] != "prod" {
		t.Fatalf("fields outside the mask changed: %v", s)
	}
	// The old name can be taken by another secret.
	h.ok(cmdCreateSecret("mbsec-5", "project-1", "s1", nil))
}

// A command that fails must leave no trace: all replicas agree on the
// result, but a half-applied update would leave the name index pointing at
// a secret whose record still carries the old name.
func TestFailedUpdateLeavesNoPartialWrites(t *testing.T) {
	for name, op := range map[string]*fsmpb.UpdateSecret{
		"rename then bad path": {Id: "mbsec-1", Paths: []string{"metadata.name", "bogus"}, Name: "new-name"},
		"rename then pin a deleted version": {Id: "mbsec-1", Paths: []string{"metadata.name", "spec.primary_version_id"},
			Name: "new-name", PrimaryVersionId: "mbsecver-2"},
		"rename then pin a missing version": {Id: "mbsec-1", Paths: []string{"metadata.name", "spec.primary_version_id"},
			Name: "new-name", PrimaryVersionId: "mbsecver-404"},
	} {
		t.Run(name, func(t *testing.T) {
			h := withSecret(t)
			h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
			h.ok(cmdDeleteVersion("mbsecver-2", 0, time.Hour))
			before := h.content()
			if res := h.apply(cmdUpdateSecret(op)); res.Err == nil {
				t.Fatal("update succeeded")
			}
			if _, err := h.secretIDByName("project-1", "new-name"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("failed update claimed the new name (err %v)", err)
			}
			if id, err := h.secretIDByName("project-1", "s1"); err != nil || id != "mbsec-1" {
				t.Errorf("failed update released the old name: %q, %v", id, err)
			}
			if got := h.content(); got != before {
				t.Errorf("failed update changed the store")
			}
		})
	}
}

func TestDeleteSecretIsSoft(t *testing.T) {
	h := withSecret(t)
	h.fail(cmdDeleteSecret("mbsec-404", 0, time.Minute), store.ErrNotFound)
	h.fail(cmdDeleteSecret("mbsec-1", 5, time.Minute), fsm.ErrConflict)
	h.now = t0 + 1000
	purgeAfter := 30 * 24 * time.Hour
	s := h.ok(cmdDeleteSecret("mbsec-1", 1, purgeAfter)).(*pb.Secret)
	st := s.GetStatus()
	if st.GetState() != pb.State_SCHEDULED_FOR_DELETION ||
		st.GetDeletedAt().AsTime().UnixNano() != t0+1000 ||
		st.GetPurgeAt().AsTime().UnixNano() != t0+1000+int64(purgeAfter) ||
		s.GetMetadata().GetResourceVersion() != 2 {
		t.Fatalf("deleted secret: %v", s)
	}
	if !proto.Equal(h.secret("mbsec-1"), s) {
		t.Fatal("stored secret differs from the response")
	}
	// The name is released; the record stays, listed under its project.
	if _, err := h.secretIDByName("project-1", "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("name still claimed: %v", err)
	}
	h.read(func(v *store.View) error {
		n := 0
		if err := v.ScanSecrets("project-1", "", func(*fsmpb.SecretRecord) (bool, error) { n++; return true, nil }); err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("ScanSecrets sees %d secrets, want 1", n)
		}
		if _, err := v.Entry("mbsecver-1", "password"); err != nil {
			t.Errorf("payload gone before purge: %v", err)
		}
		return nil
	})
	purgeAt := t0 + 1000 + int64(purgeAfter)
	if got := fmt.Sprint(h.duePurges(purgeAt)); got != "[mbsec-1]" {
		t.Fatalf("DuePurges at purge_at = %s", got)
	}
	if got := h.duePurges(purgeAt - 1); len(got) != 0 {
		t.Fatalf("DuePurges before purge_at = %v", got)
	}
	// A deleted secret is hidden from mutations.
	h.fail(cmdDeleteSecret("mbsec-1", 0, time.Minute), store.ErrNotFound)
	h.fail(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"spec.description"}}), store.ErrNotFound)
	h.fail(cmdCreateVersion("mbsecver-2", "mbsec-1", false), store.ErrNotFound)
	h.fail(cmdDeleteVersion("mbsecver-1", 0, time.Minute), store.ErrNotFound)
	// Its name can be reused at once.
	h.ok(cmdCreateSecret("mbsec-2", "project-1", "s1", nil))
}

func TestUndeleteSecret(t *testing.T) {
	h := withSecret(t)
	h.fail(cmdUndeleteSecret("mbsec-404", "", 0), store.ErrNotFound)
	h.fail(cmdUndeleteSecret("mbsec-1", "", 0), fsm.ErrFailedPrecondition) // not deleted
	h.ok(cmdDeleteSecret("mbsec-1", 0, time.Hour))
	h.fail(cmdUndeleteSecret("mbsec-1", "", 1), fsm.ErrConflict)

	// Undelete with the name still free: back under its old name.
	s := h.ok(cmdUndeleteSecret("mbsec-1", "", 2)).(*pb.Secret)
	if s.GetStatus().GetState() != pb.State_ACTIVE || s.GetStatus().GetDeletedAt() != nil || s.GetStatus().GetPurgeAt() != nil ||
		s.GetMetadata().GetName() != "s1" || s.GetMetadata().GetResourceVersion() != 3 {
		t.Fatalf("undeleted secret: %v", s)
	}
	if id, err := h.secretIDByName("project-1", "s1"); err != nil || id != "mbsec-1" {
		t.Fatalf("name -> %q, %v", id, err)
	}
	if due := h.duePurges(t0 + int64(100*time.Hour)); len(due) != 0 {
		t.Fatalf("undeleted secret still queued for purge: %v", due)
	}

	// Delete again, and let another secret take the name meanwhile.
	h.ok(cmdDeleteSecret("mbsec-1", 0, time.Hour))
	h.ok(cmdCreateSecret("mbsec-2", "project-1", "s1", nil))
	h.ok(cmdCreateSecret("mbsec-3", "project-1", "s3", nil))
	err := h.fail(cmdUndeleteSecret("mbsec-1", "", 0), fsm.ErrAlreadyExists)
	if !strings.Contains(err.Error(), "new name") {
		t.Errorf("error does not say a new name is needed: %v", err)
	}
	h.fail(cmdUndeleteSecret("mbsec-1", "s3", 0), fsm.ErrAlreadyExists) // the new name is taken too
	if h.secret("mbsec-1").GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION {
		t.Fatal("failed undelete changed the state")
	}
	s = h.ok(cmdUndeleteSecret("mbsec-1", "s1-restored", 0)).(*pb.Secret)
	if s.GetMetadata().GetName() != "s1-restored" || s.GetStatus().GetState() != pb.State_ACTIVE {
		t.Fatalf("undeleted with a new name: %v", s)
	}
	for name, want := range map[string]string{"s1": "mbsec-2", "s3": "mbsec-3", "s1-restored": "mbsec-1"} {
		if id, err := h.secretIDByName("project-1", name); err != nil || id != want {
			t.Errorf("name %s -> %q, %v; want %s", name, id, err, want)
		}
	}
	if due := h.duePurges(t0 + int64(100*time.Hour)); len(due) != 0 {
		t.Fatalf("undeleted secret still queued for purge: %v", due)
	}
	// Its versions and primary are intact.
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=false spec=""`)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
}

// ---------------------------------------------------------------- versions

func TestCreateVersion(t *testing.T) {
	h := withSecret(t)
	h.fail(cmdCreateVersion("mbsecver-2", "mbsec-404", false), store.ErrNotFound)
	h.fail(cmdCreateVersion("mbsecver-1", "mbsec-1", false), fsm.ErrAlreadyExists) // id reuse
	h.now = t0 + 9
	cv := newVersion("mbsecver-2", "mbsec-1", false)
	cv.Version.Spec.Payload = &pb.Payload{Entries: []*pb.PayloadEntry{{Key: "leak", Value: &pb.PayloadEntry_StringValue{StringValue: "plaintext"}}}}
	cv.Version.Spec.SetPrimary = true // input only; set_primary of the command rules
	v := h.ok(&fsmpb.Command{Op: &fsmpb.Command_CreateVersion{CreateVersion: cv}}).(*pb.SecretVersion)
	if v.GetStatus().GetNumber() != 2 || v.GetStatus().GetState() != pb.State_ACTIVE || v.GetMetadata().GetResourceVersion() != 1 ||
		v.GetMetadata().GetCreatedAt().AsTime().UnixNano() != t0+9 || v.GetSpec().GetDescription() != "version mbsecver-2" {
		t.Fatalf("version: %v", v)
	}
	if v.GetSpec().GetPayload() != nil || v.GetSpec().GetSetPrimary() {
		t.Fatalf("input-only fields stored: %v", v.GetSpec())
	}
	h.read(func(view *store.View) error {
		rec, err := view.Version("mbsecver-2")
		if err != nil {
			return err
		}
		if rec.GetKekId() != "k1" || string(rec.GetWrappedDek()) != "wrapped-dek-of-mbsecver-2" || fmt.Sprint(rec.GetEntryKeys()) != "[user password]" {
			t.Errorf("version record: %v", rec)
		}
		if !proto.Equal(rec.GetVersion(), v) {
			t.Error("stored version differs from the response")
		}
		for _, want := range sealed("mbsecver-2", "user", "password").GetEntries() {
			got, err := view.Entry("mbsecver-2", want.GetKey())
			if err != nil {
				return err
			}
			if !proto.Equal(got, want) {
				t.Errorf("entry %s = %v, want %v", want.GetKey(), got, want)
			}
		}
		return nil
	})
	s := h.secret("mbsec-1")
	if s.GetStatus().GetVersionCount() != 2 || s.GetMetadata().GetResourceVersion() != 2 || s.GetMetadata().GetUpdatedAt().AsTime().UnixNano() != t0+9 {
		t.Fatalf("secret after new version: %v", s)
	}
}

func TestDeleteAndUndeleteVersion(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.fail(cmdDeleteVersion("mbsecver-404", 0, time.Minute), store.ErrNotFound)
	h.fail(cmdDeleteVersion("mbsecver-2", 3, time.Minute), fsm.ErrConflict)
	h.fail(cmdUndeleteVersion("mbsecver-2", 0), fsm.ErrFailedPrecondition) // not deleted
	h.now = t0 + 50
	v := h.ok(cmdDeleteVersion("mbsecver-2", 1, time.Minute)).(*pb.SecretVersion)
	if v.GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION || v.GetStatus().GetDeletedAt().AsTime().UnixNano() != t0+50 ||
		v.GetStatus().GetPurgeAt().AsTime().UnixNano() != t0+50+int64(time.Minute) || v.GetMetadata().GetResourceVersion() != 2 {
		t.Fatalf("deleted version: %v", v)
	}
	if got := fmt.Sprint(h.duePurges(t0 + 50 + int64(time.Minute))); got != "[mbsecver-2]" {
		t.Fatalf("DuePurges = %s", got)
	}
	if s := h.secret("mbsec-1"); s.GetStatus().GetVersionCount() != 1 {
		t.Fatalf("version_count after delete = %d", s.GetStatus().GetVersionCount())
	}
	h.fail(cmdDeleteVersion("mbsecver-2", 0, time.Minute), store.ErrNotFound) // already deleted
	h.fail(cmdUndeleteVersion("mbsecver-2", 1), fsm.ErrConflict)
	v = h.ok(cmdUndeleteVersion("mbsecver-2", 2)).(*pb.SecretVersion)
	if v.GetStatus().GetState() != pb.State_ACTIVE || v.GetStatus().GetDeletedAt() != nil || v.GetStatus().GetPurgeAt() != nil {
		t.Fatalf("undeleted version: %v", v)
	}
	if due := h.duePurges(t0 + int64(time.Hour)); len(due) != 0 {
		t.Fatalf("undeleted version still queued: %v", due)
	}
	if s := h.secret("mbsec-1"); s.GetStatus().GetVersionCount() != 2 {
		t.Fatalf("version_count after undelete = %d", s.GetStatus().GetVersionCount())
	}
}

// ---------------------------------------------------------------- primary version (SPEC 2)

func TestPrimaryVersionSemantics(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateProject("project-2", "p2"))
	h.ok(cmdCreateSecret("mbsec-other", "project-2", "o", newVersion("mbsecver-other", "mbsec-other", false)))

	// Latest ACTIVE by default; a new version becomes primary.
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=false spec=""`)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-2 pinned=false spec=""`)
	h.ok(cmdCreateVersion("mbsecver-3", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-3 pinned=false spec=""`)

	// Deleting the latest falls back to the newest version still ACTIVE.
	h.ok(cmdDeleteVersion("mbsecver-3", 0, time.Hour))
	h.wantPrimary("mbsec-1", `mbsecver-2 pinned=false spec=""`)
	h.ok(cmdDeleteVersion("mbsecver-2", 0, time.Hour))
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=false spec=""`)
	// Deleting an older version does not move the primary.
	h.ok(cmdUndeleteVersion("mbsecver-3", 0))
	h.wantPrimary("mbsec-1", `mbsecver-3 pinned=false spec=""`)
	h.ok(cmdUndeleteVersion("mbsecver-2", 0))
	h.wantPrimary("mbsec-1", `mbsecver-3 pinned=false spec=""`)
	h.ok(cmdDeleteVersion("mbsecver-1", 0, time.Hour))
	h.wantPrimary("mbsec-1", `mbsecver-3 pinned=false spec=""`)
	h.ok(cmdUndeleteVersion("mbsecver-1", 0))

	// set_primary on create pins; later versions do not move it.
	h.ok(cmdCreateVersion("mbsecver-4", "mbsec-1", true))
	h.wantPrimary("mbsec-1", `mbsecver-4 pinned=true spec="mbsecver-4"`)
	h.ok(cmdCreateVersion("mbsecver-5", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-4 pinned=true spec="mbsecver-4"`)

	// Update with spec.primary_version_id pins another one, even an old one.
	s := h.ok(cmdSetPrimary("mbsec-1", "mbsecver-1")).(*pb.Secret)
	if s.GetStatus().GetPrimaryVersionId() != "mbsecver-1" || !s.GetStatus().GetPrimaryPinned() {
		t.Fatalf("response after pin: %v", s.GetStatus())
	}
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=true spec="mbsecver-1"`)
	h.ok(cmdCreateVersion("mbsecver-6", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=true spec="mbsecver-1"`)
	h.ok(cmdDeleteVersion("mbsecver-6", 0, time.Hour))
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=true spec="mbsecver-1"`)

	// A pinned primary stays pinned when deleted (reads then fail with
	// FAILED_PRECONDITION naming it), and cannot be pinned again.
	h.ok(cmdDeleteVersion("mbsecver-1", 0, time.Hour))
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=true spec="mbsecver-1"`)
	err := h.fail(cmdSetPrimary("mbsec-1", "mbsecver-1"), fsm.ErrFailedPrecondition)
	if !strings.Contains(err.Error(), "mbsecver-1") {
		t.Errorf("error does not name the version: %v", err)
	}
	h.fail(cmdSetPrimary("mbsec-1", "mbsecver-6"), fsm.ErrFailedPrecondition)
	// Pinning a missing version, or a version of another secret.
	h.fail(cmdSetPrimary("mbsec-1", "mbsecver-404"), store.ErrNotFound)
	h.fail(cmdSetPrimary("mbsec-1", "mbsecver-other"), store.ErrNotFound)
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=true spec="mbsecver-1"`)

	// "" unpins: back to the latest ACTIVE (mbsecver-6 is deleted).
	h.ok(cmdSetPrimary("mbsec-1", ""))
	h.wantPrimary("mbsec-1", `mbsecver-5 pinned=false spec=""`)
	h.ok(cmdCreateVersion("mbsecver-7", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-7 pinned=false spec=""`)
	// Pinning the latest is still a pin.
	h.ok(cmdSetPrimary("mbsec-1", "mbsecver-7"))
	h.ok(cmdCreateVersion("mbsecver-8", "mbsec-1", false))
	h.wantPrimary("mbsec-1", `mbsecver-7 pinned=true spec="mbsecver-7"`)
	h.ok(cmdSetPrimary("mbsec-1", ""))
	h.wantPrimary("mbsec-1", `mbsecver-8 pinned=false spec=""`)

	// No ACTIVE version left: no primary.
	h.ok(cmdCreateSecret("mbsec-9", "project-1", "s9", newVersion("mbsecver-9", "mbsec-9", false)))
	h.ok(cmdDeleteVersion("mbsecver-9", 0, time.Hour))
	h.wantPrimary("mbsec-9", ` pinned=false spec=""`)
	h.ok(cmdUndeleteVersion("mbsecver-9", 0))
	h.wantPrimary("mbsec-9", `mbsecver-9 pinned=false spec=""`)
}

func TestPurgeOfPinnedPrimaryUnpins(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.ok(cmdCreateVersion("mbsecver-3", "mbsec-1", false))
	h.ok(cmdSetPrimary("mbsec-1", "mbsecver-2"))
	h.ok(cmdDeleteVersion("mbsecver-2", 0, time.Minute))
	h.ok(cmdDeleteVersion("mbsecver-3", 0, 2*time.Minute))
	h.wantPrimary("mbsec-1", `mbsecver-2 pinned=true spec="mbsecver-2"`)
	rv := h.secret("mbsec-1").GetMetadata().GetResourceVersion()

	h.ok(at(cmdPurge(nil, []string{"mbsecver-2", "mbsecver-3"}), t0+int64(time.Minute)))
	h.notFound("purged pinned version", func(v *store.View) error { _, err := v.Version("mbsecver-2"); return err })
	// Back to the latest ACTIVE; mbsecver-3 is deleted but not yet due.
	h.wantPrimary("mbsec-1", `mbsecver-1 pinned=false spec=""`)
	s := h.secret("mbsec-1")
	if s.GetMetadata().GetResourceVersion() != rv+1 || s.GetMetadata().GetUpdatedAt().AsTime().UnixNano() != t0+int64(time.Minute) {
		t.Fatalf("unpinning by purge not recorded: %v", s.GetMetadata())
	}
	if _, err := h.secretIDByName("project-1", "s1"); err != nil {
		t.Fatal(err)
	}
	// Purging a version that is not the pinned primary leaves the pin.
	h.ok(cmdCreateVersion("mbsecver-4", "mbsec-1", true))
	h.ok(at(cmdPurge(nil, []string{"mbsecver-3"}), t0+int64(2*time.Minute)))
	h.notFound("purged version", func(v *store.View) error { _, err := v.Version("mbsecver-3"); return err })
	h.wantPrimary("mbsec-1", `mbsecver-4 pinned=true spec="mbsecver-4"`)
}

// ---------------------------------------------------------------- purge

func TestPurgeRechecksDueTime(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.ok(cmdCreateSecret("mbsec-2", "project-1", "s2", newVersion("mbsecver-3", "mbsec-2", false)))
	h.ok(cmdCreateVersion("mbsecver-4", "mbsec-2", false))
	h.ok(cmdDeleteVersion("mbsecver-4", 0, time.Hour)) // version of mbsec-2, due later than mbsec-2
	h.now = t0 + 100
	h.ok(cmdDeleteSecret("mbsec-2", 0, time.Minute))
	h.ok(cmdDeleteVersion("mbsecver-2", 0, time.Minute))
	due := t0 + 100 + int64(time.Minute)

	// Not due at the command's time, whatever the leader thought: nothing
	// changes but the applied index.
	before := h.content()
	h.ok(at(cmdPurge([]string{"mbsec-2"}, []string{"mbsecver-2"}), due-1))
	if h.content() != before {
		t.Fatal("purge before purge_at removed something")
	}
	// Not scheduled for deletion at all; or unknown ids: ignored.
	h.ok(at(cmdPurge([]string{"mbsec-1", "mbsec-404"}, []string{"mbsecver-1", "mbsecver-404"}), due+int64(time.Hour)))
	if h.content() != before {
		t.Fatal("purge of live or unknown resources changed the store")
	}

	// Due: the secret goes with all its versions, entries and queue entries.
	h.ok(at(cmdPurge([]string{"mbsec-2"}, []string{"mbsecver-2"}), due))
	h.notFound("purged secret", func(v *store.View) error { _, err := v.Secret("mbsec-2"); return err })
	for _, vid := range []string{"mbsecver-2", "mbsecver-3", "mbsecver-4"} {
		h.notFound("purged version "+vid, func(v *store.View) error { _, err := v.Version(vid); return err })
		for _, k := range []string{"user", "password"} {
			h.notFound("entry of purged version "+vid, func(v *store.View) error { _, err := v.Entry(vid, k); return err })
		}
	}
	h.read(func(v *store.View) error {
		return v.ScanVersions("mbsec-2", 0, false, func(r *fsmpb.VersionRecord) (bool, error) {
			t.Errorf("version index of purged secret still lists %v", r.GetVersion().GetMetadata().GetId())
			return true, nil
		})
	})
	if q := h.duePurges(due + int64(24*time.Hour)); len(q) != 0 {
		t.Fatalf("purge queue after purge: %v", q)
	}
	if n := h.project("project-1").GetStatus().GetSecretCount(); n != 1 {
		t.Fatalf("secret_count after purge = %d, want 1", n)
	}
	// The other secret is untouched, and its version 1 entries remain.
	if s := h.secret("mbsec-1"); s.GetStatus().GetState() != pb.State_ACTIVE || s.GetStatus().GetPrimaryVersionId() != "mbsecver-1" {
		t.Fatalf("surviving secret: %v", s.GetStatus())
	}
	h.read(func(v *store.View) error {
		_, err := v.Entry("mbsecver-1", "password")
		return err
	})
	// Purging again is a no-op.
	before = h.content()
	h.ok(at(cmdPurge([]string{"mbsec-2"}, []string{"mbsecver-2"}), due+int64(time.Hour)))
	if h.content() != before {
		t.Fatal("second purge changed the store")
	}
}

// An undeleted secret whose old purge time has passed must not be purged.
func TestPurgeSkipsUndeleted(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.ok(cmdDeleteSecret("mbsec-1", 0, time.Minute))
	h.ok(cmdUndeleteSecret("mbsec-1", "", 0))
	h.ok(cmdDeleteVersion("mbsecver-2", 0, time.Minute))
	h.ok(cmdUndeleteVersion("mbsecver-2", 0))
	before := h.content()
	h.ok(at(cmdPurge([]string{"mbsec-1"}, []string{"mbsecver-2"}), t0+int64(time.Hour)))
	if h.content() != before {
		t.Fatal("purge removed an undeleted resource")
	}
}

// ---------------------------------------------------------------- idempotency

func (h *harness) idem(key string) (*fsmpb.IdempotencyRecord, error) {
	var rec *fsmpb.IdempotencyRecord
	err := h.st.Read(func(v *store.View) error {
		var err error
		rec, err = v.Idempotency(key)
		return err
	})
	return rec, err
}

func TestIdempotentRetryReturnsFirstResult(t *testing.T) {
	h := newHarness(t)
	first := h.ok(withKey(cmdCreateProject("project-1", "p1"), "key-1", "req-A"))
	rec, err := h.idem("key-1")
	if err != nil || rec.GetExpiresUnixNano() != t0+int64(fsm.IdempotencyTTL) || string(rec.GetRequestHash()) != "sha256:req-A" {
		t.Fatalf("remembered record = %v, %v", rec, err)
	}
	before := h.content()

	// The retry went through a new leader, which stamped a new id and time;
	// the first result comes back and nothing is applied.
	h.now = t0 + int64(time.Hour)
	second := h.ok(withKey(cmdCreateProject("project-2", "p1"), "key-1", "req-A"))
	if !proto.Equal(first, second) {
		t.Fatalf("retry returned %v, first call %v", second, first)
	}
	if h.content() != before {
		t.Fatal("retry changed the store")
	}
	h.notFound("project-2", func(v *store.View) error { _, err := v.Project("project-2"); return err })

	// Same key, different request: INVALID_ARGUMENT, not applied.
	err = h.fail(withKey(cmdCreateProject("project-3", "p3"), "key-1", "req-B"), fsm.ErrInvalidArgument)
	if !strings.Contains(err.Error(), "idempotency") {
		t.Errorf("error message: %v", err)
	}
	if h.content() != before {
		t.Fatal("mismatched retry changed the store")
	}
	// The original is still remembered after the mismatch.
	if again := h.ok(withKey(cmdCreateProject("project-4", "p1"), "key-1", "req-A")); !proto.Equal(first, again) {
		t.Fatal("mismatch made the key forget its result")
	}

	// A different key is a different call.
	h.fail(withKey(cmdCreateProject("project-5", "p1"), "key-2", "req-A"), fsm.ErrAlreadyExists)
}

func TestIdempotentRetryOfErrorResult(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateProject("project-9", "p9"))
	h.ok(cmdCreateProject("project-8", "p8"))
	h.ok(cmdCreateSecret("mbsec-8", "project-8", "s8", nil))
	kinds := []struct {
		key  string
		cmd  *fsmpb.Command
		kind error
	}{
		{"k-exists", cmdCreateProject("project-2", "p9"), fsm.ErrAlreadyExists},
		{"k-conflict", cmdDeleteSecret("mbsec-1", 9, time.Minute), fsm.ErrConflict},
		{"k-notfound", cmdDeleteVersion("mbsecver-404", 0, time.Minute), store.ErrNotFound},
		{"k-precond", cmdDeleteProject("project-8", 0), fsm.ErrFailedPrecondition},
		{"k-invalid", cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"nope"}}), fsm.ErrInvalidArgument},
	}
	msgs := map[string]string{}
	for _, k := range kinds {
		msgs[k.key] = h.fail(withKey(k.cmd, k.key, k.key), k.kind).Error()
	}
	// Change the world so that each call but the last would now succeed.
	h.ok(cmdDeleteProject("project-9", 0))
	h.ok(cmdCreateVersion("mbsecver-404", "mbsec-1", false)) // resource_version 2
	for rv := 3; rv <= 9; rv++ {
		h.ok(cmdUpdateSecret(&fsmpb.UpdateSecret{Id: "mbsec-1", Paths: []string{"spec.description"}, Description: fmt.Sprint(rv)}))
	}
	if rv := h.secret("mbsec-1").GetMetadata().GetResourceVersion(); rv != 9 {
		t.Fatalf("setup: resource_version %d, want 9", rv)
	}
	h.ok(cmdDeleteSecret("mbsec-8", 0, time.Minute))
	h.ok(at(cmdPurge([]string{"mbsec-8"}, nil), t0+int64(time.Minute)))

	before := h.content()
	for _, k := range kinds {
		err := h.fail(withKey(k.cmd, k.key, k.key), k.kind)
		if err.Error() != msgs[k.key] {
			t.Errorf("%s: replayed message %q, first %q", k.key, err, msgs[k.key])
		}
	}
	if h.content() != before {
		t.Fatal("replaying error results applied something")
	}
	if h.secret("mbsec-1").GetStatus().GetState() != pb.State_ACTIVE {
		t.Fatal("replayed conflict deleted the secret")
	}
}

func TestIdempotentRetryOfResultWithoutResponse(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdDeleteSecret("mbsec-1", 0, time.Minute))
	res := h.apply(at(withKey(cmdPurge([]string{"mbsec-1"}, nil), "k-purge", "p"), t0+int64(time.Minute)))
	if res.Err != nil || res.Response != nil {
		t.Fatalf("purge result %v", res)
	}
	res = h.apply(at(withKey(cmdPurge([]string{"mbsec-1"}, nil), "k-purge", "p"), t0+int64(2*time.Minute)))
	if res.Err != nil || res.Response != nil {
		t.Fatalf("replayed purge result %v", res)
	}
	// DeleteProject's response is an empty message: replayed as such.
	first := h.ok(withKey(cmdDeleteProject("project-1", 0), "k-del", "d"))
	second := h.ok(withKey(cmdDeleteProject("project-1", 0), "k-del", "d"))
	if _, ok := second.(*pb.DeleteProjectResponse); !ok || !proto.Equal(first, second) {
		t.Fatalf("replayed delete = %T %v", second, second)
	}
}

func TestExpiredIdempotencyKeyIsForgotten(t *testing.T) {
	h := newHarness(t)
	h.ok(withKey(cmdCreateProject("project-1", "p1"), "key-1", "req-A"))
	expires := t0 + int64(fsm.IdempotencyTTL)

	// Just before expiry the key still holds.
	h.fail(at(withKey(cmdCreateProject("project-2", "p2"), "key-1", "req-B"), expires-1), fsm.ErrInvalidArgument)
	// At expiry it is forgotten: the same key applies a new request.
	p := h.ok(at(withKey(cmdCreateProject("project-2", "p2"), "key-1", "req-B"), expires)).(*pb.Project)
	if p.GetMetadata().GetId() != "project-2" {
		t.Fatalf("created %v", p)
	}
	rec, err := h.idem("key-1")
	if err != nil || string(rec.GetRequestHash()) != "sha256:req-B" || rec.GetExpiresUnixNano() != expires+int64(fsm.IdempotencyTTL) {
		t.Fatalf("record after reuse = %v, %v", rec, err)
	}
	// Only the new expiry is indexed.
	h.read(func(v *store.View) error {
		keys, err := v.ExpiredIdempotency(expires+int64(fsm.IdempotencyTTL)-1, 10)
		if err != nil {
			return err
		}
		if len(keys) != 0 {
			t.Errorf("stale expiry entry left: %v", keys)
		}
		keys, err = v.ExpiredIdempotency(expires+int64(fsm.IdempotencyTTL), 10)
		if err == nil && fmt.Sprint(keys) != "[key-1]" {
			t.Errorf("ExpiredIdempotency = %v", keys)
		}
		return err
	})
	// And the new result is what a retry gets.
	if again := h.ok(at(withKey(cmdCreateProject("project-3", "p2"), "key-1", "req-B"), expires+1)); !proto.Equal(again, p) {
		t.Fatalf("retry after reuse = %v", again)
	}
}

func byCaller(cmd *fsmpb.Command, account string) *fsmpb.Command {
	cmd.Caller = account
	return cmd
}

func replayOnly(cmd *fsmpb.Command) *fsmpb.Command {
	cmd.ReplayOnly = true
	return cmd
}

// TestIdempotencyRecordBelongsToItsCaller: the record names the account
// whose call it is the outcome of; another account's call with the same
// key is refused and sees nothing of it, the same account's retry gets it.
// Records from before command version 5 name nobody and replay as before.
func TestIdempotencyRecordBelongsToItsCaller(t *testing.T) {
	h := newHarness(t)
	first := h.ok(byCaller(withKey(cmdCreateProject("project-1", "p1"), "key-1", "req-A"), "useraccount-1"))
	rec, err := h.idem("key-1")
	if err != nil || rec.GetCaller() != "useraccount-1" {
		t.Fatalf("record = %v, %v; want it to name useraccount-1", rec, err)
	}
	before := h.content()
	err = h.fail(byCaller(withKey(cmdCreateProject("project-2", "p1"), "key-1", "req-A"), "useraccount-2"), fsm.ErrInvalidArgument)
	if !strings.Contains(err.Error(), "another account") {
		t.Errorf("another account's retry: %v", err)
	}
	if h.content() != before {
		t.Fatal("another account's retry changed the store")
	}
	if again := h.ok(byCaller(withKey(cmdCreateProject("project-3", "p1"), "key-1", "req-A"), "useraccount-1")); !proto.Equal(first, again) {
		t.Fatalf("the caller's retry = %v, first call %v", again, first)
	}
	// An older record (no caller) replays to any caller, as it did.
	old := h.ok(withKey(cmdCreateProject("project-4", "p4"), "key-old", "req-O"))
	if again := h.ok(byCaller(withKey(cmdCreateProject("project-5", "p4"), "key-old", "req-O"), "useraccount-2")); !proto.Equal(old, again) {
		t.Fatalf("retry of a record without a caller = %v, first call %v", again, old)
	}
	if fsm.RequiredVersion(byCaller(cmdCreateProject("project-6", "p6"), "useraccount-1")) != 1 {
		t.Error("naming the caller is not a reason to refuse a command")
	}
}

// TestReplayOnlyCommandAppliesNothingWithoutItsRecord: a retry the leader
// let through without a permission check (its record was there) replays
// the record, and when the record has expired by the time it applies, is
// neither applied, nor remembered, nor audited: ErrReplayGone sends the
// leader back to check the call as a new one.
func TestReplayOnlyCommandAppliesNothingWithoutItsRecord(t *testing.T) {
	h := newHarness(t)
	first := h.ok(byCaller(withKey(cmdCreateProject("project-1", "p1"), "key-1", "req-A"), "useraccount-1"))
	again := h.ok(replayOnly(byCaller(withKey(cmdCreateProject("project-2", "p1"), "key-1", "req-A"), "useraccount-1")))
	if !proto.Equal(first, again) {
		t.Fatalf("replay-only retry = %v, first call %v", again, first)
	}
	// No record at all.
	before := h.content()
	res := h.apply(withAudit(replayOnly(byCaller(withKey(cmdCreateProject("project-3", "p3"), "key-404", "req-B"), "useraccount-1")), "CreateProject"))
	if !errors.Is(res.Err, fsm.ErrReplayGone) || res.Response != nil {
		t.Fatalf("replay-only without a record: %v", res)
	}
	if h.content() != before {
		t.Fatal("a replay-only command without a record changed the store")
	}
	h.notFound("project-3", func(v *store.View) error { _, err := v.Project("project-3"); return err })
	if _, err := h.idem("key-404"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused replay was remembered: %v", err)
	}
	// The record expired between the leader's look and the apply: it is
	// dropped as any expired record is, and nothing else happens.
	expired := t0 + int64(fsm.IdempotencyTTL)
	res = h.apply(at(replayOnly(byCaller(withKey(cmdCreateProject("project-3", "p3"), "key-1", "req-A"), "useraccount-1")), expired))
	if !errors.Is(res.Err, fsm.ErrReplayGone) {
		t.Fatalf("replay-only after expiry: %v", res)
	}
	if _, err := h.idem("key-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired record kept: %v", err)
	}
	h.notFound("project-3", func(v *store.View) error { _, err := v.Project("project-3"); return err })
	if n := len(h.audit()); n != 0 {
		t.Fatalf("%d audit records; a refused replay is not a call", n)
	}
	if fsm.RequiredVersion(replayOnly(cmdCreateProject("project-6", "p6"))) != fsm.CallerVersion {
		t.Error("a replay-only command must need the version that knows the flag")
	}
}

func TestPruneIdempotency(t *testing.T) {
	h := newHarness(t)
	h.ok(at(withKey(cmdCreateProject("project-1", "p1"), "key-a", "a"), t0))
	h.ok(at(withKey(cmdCreateProject("project-2", "p2"), "key-b", "b"), t0+int64(time.Hour)))
	h.fail(at(withKey(cmdCreateProject("project-3", "p1"), "key-c", "c"), t0+int64(2*time.Hour)), fsm.ErrAlreadyExists)
	now := t0 + int64(fsm.IdempotencyTTL) + int64(time.Hour) // key-a and key-b expired, key-c not

	var expired []string
	h.read(func(v *store.View) error {
		var err error
		expired, err = v.ExpiredIdempotency(now, 100)
		return err
	})
	if fmt.Sprint(expired) != "[key-a key-b]" {
		t.Fatalf("ExpiredIdempotency = %v", expired)
	}
	// The leader proposes all three (and an unknown one); only the expired go.
	h.ok(at(cmdPrune("key-a", "key-b", "key-c", "key-404"), now))
	for _, k := range []string{"key-a", "key-b"} {
		if _, err := h.idem(k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s not pruned: %v", k, err)
		}
	}
	if _, err := h.idem("key-c"); err != nil {
		t.Fatalf("key-c pruned before expiry: %v", err)
	}
	h.read(func(v *store.View) error {
		keys, err := v.ExpiredIdempotency(now+int64(fsm.IdempotencyTTL), 100)
		if err == nil && fmt.Sprint(keys) != "[key-c]" {
			t.Errorf("expiry index after prune = %v", keys)
		}
		return err
	})
	// key-c still replays its error.
	h.fail(at(withKey(cmdCreateProject("project-3", "p1"), "key-c", "c"), now), fsm.ErrAlreadyExists)
	// Pruning the projects' data is not touched.
	if h.project("project-1") == nil || h.project("project-2") == nil {
		t.Fatal("prune removed data")
	}
	h.ok(at(cmdPrune("key-c"), t0+int64(2*time.Hour)+int64(fsm.IdempotencyTTL)))
	if _, err := h.idem("key-c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("key-c not pruned at expiry: %v", err)
	}
}

// ---------------------------------------------------------------- nodes

func TestRegisterAndDeregisterNodes(t *testing.T) {
	h := newHarness(t)
	h.ok(cmdRegisterNode("node-2"))
	h.ok(cmdRegisterNode("node-1"))
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_RegisterNode{RegisterNode: &fsmpb.RegisterNode{Node: &fsmpb.NodeRecord{
		NodeId: "node-2", RaftAddress: "10.0.0.2:7701", GrpcAddress: "10.0.0.2:7700",
	}}}}) // re-registration updates the addresses
	h.ok(cmdDeregisterNode("node-404"))
	nodes := func() string {
		var out []string
		h.read(func(v *store.View) error {
			ns, err := v.Nodes()
			for _, n := range ns {
				out = append(out, n.GetNodeId()+"@"+n.GetRaftAddress())
			}
			return err
		})
		return fmt.Sprint(out)
	}
	if got := nodes(); got != "[node-1@node-1:7701 node-2@10.0.0.2:7701]" {
		t.Fatalf("nodes = %s", got)
	}
	h.ok(cmdDeregisterNode("node-1"))
	if got := nodes(); got != "[node-2@10.0.0.2:7701]" {
		t.Fatalf("nodes = %s", got)
	}
}

// ---------------------------------------------------------------- key-encryption keys

func (h *harness) keyCheck(id string) string {
	h.t.Helper()
	var c []byte
	err := h.st.Read(func(v *store.View) error {
		var err error
		c, err = v.KeyCheck(id)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return "<none>"
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return string(c)
}

func (h *harness) kekUse() string {
	h.t.Helper()
	var parts []string
	h.read(func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		for _, id := range ids {
			vs, _, err := v.VersionsWrappedBy(id, 100)
			if err != nil {
				return err
			}
			parts = append(parts, fmt.Sprintf("%s:%v", id, vs))
		}
		return nil
	})
	return strings.Join(parts, " ")
}

func TestCreateVersionRecordsFirstKeyCheck(t *testing.T) {
	h := withSecret(t)
	if got := h.keyCheck("k1"); got != "<none>" {
		t.Fatalf("check recorded from a payload without one: %q", got)
	}
	cv := newVersion("mbsecver-2", "mbsec-1", false)
	cv.Payload.KekCheck = []byte("check-1")
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_CreateVersion{CreateVersion: cv}})
	cv = newVersion("mbsecver-3", "mbsec-1", false)
	cv.Payload.KekCheck = []byte("check-other")
	h.ok(&fsmpb.Command{Op: &fsmpb.Command_CreateVersion{CreateVersion: cv}})
	if got := h.keyCheck("k1"); got != "check-1" {
		t.Fatalf("key check of k1 = %q, want the first one", got)
	}
	// A first version in CreateSecret records it too.
	first := newVersion("mbsecver-4", "mbsec-4", false)
	first.Payload.KekId, first.Payload.KekCheck = "k2", []byte("check-2")
	h.ok(cmdCreateSecret("mbsec-4", "project-1", "s4", first))
	if got := h.keyCheck("k2"); got != "check-2" {
		t.Fatalf("key check of k2 = %q", got)
	}
	if got := h.kekUse(); got != "k1:[mbsecver-1 mbsecver-2 mbsecver-3] k2:[mbsecver-4]" {
		t.Fatalf("keys in use: %s", got)
	}
}

func TestRewrapVersions(t *testing.T) {
	h := withSecret(t)
	h.ok(cmdCreateVersion("mbsecver-2", "mbsec-1", false))
	h.ok(cmdCreateVersion("mbsecver-3", "mbsec-1", false))
	h.ok(cmdDeleteVersion("mbsecver-3", 0, time.Minute))
	sec := h.secret("mbsec-1")

	res := h.ok(cmdRewrap(
		&fsmpb.Rewrap{VersionId: "mbsecver-1", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("new-1"), ToKekCheck: []byte("check-2")},
		&fsmpb.Rewrap{VersionId: "mbsecver-2", FromKekId: "k9", ToKekId: "k2", WrappedDek: []byte("new-2")}, // not wrapped by k9
		&fsmpb.Rewrap{VersionId: "mbsecver-404", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("x")},   // gone
		&fsmpb.Rewrap{VersionId: "mbsecver-3", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("new-3"), ToKekCheck: []byte("check-ignored")},
	)).(*fsmpb.RewrapResult)
	if res.GetRewrapped() != 2 {
		t.Fatalf("rewrapped %d, want 2", res.GetRewrapped())
	}
	h.read(func(v *store.View) error {
		for id, want := range map[string]string{"mbsecver-1": "k2/new-1", "mbsecver-2": "k1/wrapped-dek-of-mbsecver-2", "mbsecver-3": "k2/new-3"} {
			rec, err := v.Version(id)
			if err != nil {
				return err
			}
			if got := rec.GetKekId() + "/" + string(rec.GetWrappedDek()); got != want {
				t.Errorf("%s wrapped as %s, want %s", id, got, want)
			}
		}
		// Entries are untouched.
		e, err := v.Entry("mbsecver-1", "password")
		if err == nil && string(e.GetCiphertext()) != "ct-mbsecver-1-password" {
			t.Errorf("entry changed by rewrap: %v", e)
		}
		return err
	})
	if got := h.kekUse(); got != "k1:[mbsecver-2] k2:[mbsecver-1 mbsecver-3]" {
		t.Fatalf("keys in use: %s", got)
	}
	if got := h.keyCheck("k2"); got != "check-2" {
		t.Fatalf("key check of k2 = %q", got)
	}
	// The secret and the versions' metadata are not touched.
	if !proto.Equal(h.secret("mbsec-1"), sec) {
		t.Fatal("rewrap changed the secret")
	}
	if v := h.version("mbsecver-3"); v.GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION {
		t.Fatalf("rewrap changed the version state: %v", v.GetStatus())
	}

	// Running the same rewrap again (a retry, or a race with another
	// leader) changes nothing.
	before := h.content()
	res = h.ok(cmdRewrap(&fsmpb.Rewrap{VersionId: "mbsecver-1", FromKekId: "k1", ToKekId: "k2", WrappedDek: []byte("newer")})).(*fsmpb.RewrapResult)
	if res.GetRewrapped() != 0 || h.content() != before {
		t.Fatalf("second rewrap: %d rewrapped, store changed=%v", res.GetRewrapped(), h.content() != before)
	}
	// Purge of a rewrapped version removes it from its new key's list.
	h.ok(at(cmdPurge(nil, []string{"mbsecver-3"}), t0+int64(time.Minute)))
	if got := h.kekUse(); got != "k1:[mbsecver-2] k2:[mbsecver-1]" {
		t.Fatalf("keys in use after purge: %s", got)
	}
}

// A retry that lands in the same Raft batch as the original sees it.
func TestIdempotentRetryInTheSameBatch(t *testing.T) {
	h := newHarness(t)
	out := h.f.ApplyBatch([]*raft.Log{
		h.log(withKey(cmdCreateProject("project-1", "p1"), "key-1", "A")),
		h.log(withKey(cmdCreateProject("project-2", "p1"), "key-1", "A")),
		h.log(withKey(cmdCreateProject("project-3", "p3"), "key-1", "B")),
	})
	first, second, third := asResult(t, out[0]), asResult(t, out[1]), asResult(t, out[2])
	if first.Err != nil || second.Err != nil || !proto.Equal(first.Response, second.Response) {
		t.Fatalf("results %v / %v", first, second)
	}
	if !errors.Is(third.Err, fsm.ErrInvalidArgument) {
		t.Fatalf("reuse with another request: %v", third.Err)
	}
	for _, id := range []string{"project-2", "project-3"} {
		h.notFound(id, func(v *store.View) error { _, err := v.Project(id); return err })
	}
}

// A retry must find its key after the node restarts and after a new node
// installs a snapshot: both rebuild the store's in-memory set of
// idempotency keys (store/idemkeys.go), which may only skip lookups of
// keys that are not there. Retries run right after the restart (while the
// set is being built) and again many times after it.
func TestIdempotentRetryAfterRestartAndRestore(t *testing.T) {
	h := newHarness(t)
	first := h.ok(withKey(cmdCreateProject("project-1", "p1"), "key-1", "req-A"))
	retry := func(h *harness, when string) {
		t.Helper()
		before := h.content()
		for i := 0; i < 50; i++ {
			got := h.ok(withKey(cmdCreateProject(fmt.Sprintf("project-retry-%d", i), "p1"), "key-1", "req-A"))
			if !proto.Equal(first, got) {
				t.Fatalf("%s, retry %d returned %v, first call %v", when, i, got, first)
			}
		}
		if h.content() != before {
			t.Fatalf("%s, a retry changed the store", when)
		}
	}
	h.reopen()
	retry(h, "after a restart")

	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(persist(t, h.f)))); err != nil {
		t.Fatal(err)
	}
	fresh.idx = h.idx
	retry(fresh, "after a snapshot install")
	// A new key is still applied once.
	fresh.ok(withKey(cmdCreateProject("project-2", "p2"), "key-2", "req-C"))
	fresh.fail(withKey(cmdCreateProject("project-3", "p2"), "key-3", "req-D"), fsm.ErrAlreadyExists)
}
