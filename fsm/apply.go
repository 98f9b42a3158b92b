package fsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// applier applies one command inside a batch, at the command's time.
type applier struct {
	b    *store.Batch
	head *auditHead // the audit chain's head, shared by the batch's commands
	now  int64      // the command's time, Unix nanoseconds
}

func (a *applier) ts() *timestamppb.Timestamp { return timestamppb.New(time.Unix(0, a.now)) }

func (a *applier) dispatch(cmd *fsmpb.Command) *Result {
	var resp proto.Message
	var err error
	switch op := cmd.GetOp().(type) {
	case *fsmpb.Command_CreateProject:
		resp, err = a.createProject(op.CreateProject)
	case *fsmpb.Command_DeleteProject:
		resp, err = a.deleteProject(op.DeleteProject)
	case *fsmpb.Command_CreateSecret:
		resp, err = a.createSecret(op.CreateSecret)
	case *fsmpb.Command_UpdateSecret:
		resp, err = a.updateSecret(op.UpdateSecret)
	case *fsmpb.Command_DeleteSecret:
		resp, err = a.deleteSecret(op.DeleteSecret)
	case *fsmpb.Command_UndeleteSecret:
		resp, err = a.undeleteSecret(op.UndeleteSecret)
	case *fsmpb.Command_CreateVersion:
		resp, err = a.createVersion(op.CreateVersion)
	case *fsmpb.Command_DeleteVersion:
		resp, err = a.deleteVersion(op.DeleteVersion)
	case *fsmpb.Command_UndeleteVersion:
		resp, err = a.undeleteVersion(op.UndeleteVersion)
	case *fsmpb.Command_Purge:
		err = a.purge(op.Purge)
	case *fsmpb.Command_PruneIdempotency:
		err = a.pruneIdempotency(op.PruneIdempotency)
	case *fsmpb.Command_RegisterNode:
		err = a.b.PutNode(op.RegisterNode.GetNode())
	case *fsmpb.Command_DeregisterNode:
		if op.DeregisterNode.GetTombstone() {
			err = a.b.PutNode(&fsmpb.NodeRecord{NodeId: op.DeregisterNode.GetNodeId(), Removed: true})
		} else {
			err = a.b.DeleteNode(op.DeregisterNode.GetNodeId())
		}
	case *fsmpb.Command_RewrapVersions:
		resp, err = a.rewrap(op.RewrapVersions)
	case *fsmpb.Command_CreateAccount:
		resp, err = a.createAccount(op.CreateAccount)
	case *fsmpb.Command_DeleteAccount:
		resp, err = a.deleteAccount(op.DeleteAccount)
	case *fsmpb.Command_CreateToken:
		resp, err = a.createToken(op.CreateToken)
	case *fsmpb.Command_RevokeToken:
		resp, err = a.revokeToken(op.RevokeToken)
	case *fsmpb.Command_CreateBinding:
		resp, err = a.createBinding(op.CreateBinding)
	case *fsmpb.Command_DeleteBinding:
		resp, err = a.deleteBinding(op.DeleteBinding)
	case *fsmpb.Command_BootstrapAdmin:
		resp, err = a.bootstrapAdmin(op.BootstrapAdmin)
	case *fsmpb.Command_AuditAppend:
		err = a.auditAppend(op.AuditAppend)
	case *fsmpb.Command_AuditPrune:
		err = a.auditPrune(op.AuditPrune)
	default:
		panic(fmt.Sprintf("fsm: unknown operation %T", op))
	}
	if err != nil {
		return &Result{Err: err}
	}
	return &Result{Response: resp}
}

// checkVersion enforces an optional resource_version precondition.
func checkVersion(kind, id string, want, have int64) error {
	if want != 0 && want != have {
		return errorf(ErrConflict, "%s %s is at resource_version %d, not %d", kind, id, have, want)
	}
	return nil
}

func notFound(kind, id string) error {
	return errorf(store.ErrNotFound, "%s %s not found", kind, id)
}

// touch bumps a resource's version and update time.
func (a *applier) touch(md *pb.Metadata) {
	md.ResourceVersion++
	md.UpdatedAt = a.ts()
}

// ---------------------------------------------------------------- projects

func (a *applier) createProject(op *fsmpb.CreateProject) (proto.Message, error) {
	p := proto.Clone(op.GetProject()).(*pb.Project)
	md := p.GetMetadata()
	if _, err := a.b.ProjectIDByName(md.GetName()); err == nil {
		return nil, errorf(ErrAlreadyExists, "project name %q is taken", md.GetName())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if _, err := a.b.Project(md.GetId()); err == nil {
		return nil, errorf(ErrAlreadyExists, "project id %s", md.GetId())
	}
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	if p.Status == nil {
		p.Status = &pb.ProjectStatus{}
	}
	p.Status.SecretCount = 0
	return p, a.b.PutProject(p)
}

func (a *applier) deleteProject(op *fsmpb.DeleteProject) (proto.Message, error) {
	p, err := a.b.Project(op.GetId())
	if err != nil {
		return nil, notFoundOr(err, "project", op.GetId())
	}
	if err := checkVersion("project", op.GetId(), op.GetResourceVersion(), p.GetMetadata().GetResourceVersion()); err != nil {
		return nil, err
	}
	has, err := a.b.ProjectHasSecrets(op.GetId())
	if err != nil {
		return nil, err
	}
	if has {
		return nil, errorf(ErrFailedPrecondition, "project %s still has secrets (including ones scheduled for deletion); delete and purge them first", op.GetId())
	}
	if err := a.deleteBindingsOn(op.GetId()); err != nil {
		return nil, err
	}
	return &pb.DeleteProjectResponse{}, a.b.DeleteProject(p)
}

func notFoundOr(err error, kind, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound(kind, id)
	}
	return err
}

// ---------------------------------------------------------------- secrets

// liveSecret returns an ACTIVE secret; one scheduled for deletion is hidden.
func (a *applier) liveSecret(id string) (*fsmpb.SecretRecord, error) {
	rec, err := a.b.Secret(id)
	if err != nil {
		return nil, notFoundOr(err, "secret", id)
	}
	if rec.GetSecret().GetStatus().GetState() != pb.State_ACTIVE {
		return nil, notFound("secret", id)
	}
	return rec, nil
}

func (a *applier) createSecret(op *fsmpb.CreateSecret) (proto.Message, error) {
	s := proto.Clone(op.GetSecret()).(*pb.Secret)
	md := s.GetMetadata()
	project, err := a.b.Project(md.GetParentId())
	if err != nil {
		return nil, notFoundOr(err, "project", md.GetParentId())
	}
	if _, err := a.b.SecretIDByName(md.GetParentId(), md.GetName()); err == nil {
		return nil, errorf(ErrAlreadyExists, "secret name %q is taken in project %s", md.GetName(), md.GetParentId())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if _, err := a.b.Secret(md.GetId()); err == nil {
		return nil, errorf(ErrAlreadyExists, "secret id %s", md.GetId())
	}
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	if s.Spec == nil {
		s.Spec = &pb.SecretSpec{}
	}
	s.Spec.SecretVersion = nil
	s.Spec.PrimaryVersionId = ""
	s.Status = &pb.SecretStatus{State: pb.State_ACTIVE}
	rec := &fsmpb.SecretRecord{Secret: s, NextVersionNumber: 1}
	if fv := op.GetFirstVersion(); fv != nil {
		if _, err := a.addVersion(rec, fv); err != nil {
			return nil, err
		}
		md.ResourceVersion = 1 // the first version is part of the creation
	}
	project.Status.SecretCount++
	if err := a.b.PutProject(project); err != nil {
		return nil, err
	}
	if err := a.b.PutSecretName(md.GetParentId(), md.GetName(), md.GetId()); err != nil {
		return nil, err
	}
	return s, a.b.PutSecret(rec)
}

func (a *applier) updateSecret(op *fsmpb.UpdateSecret) (proto.Message, error) {
	rec, err := a.liveSecret(op.GetId())
	if err != nil {
		return nil, err
	}
	s := rec.GetSecret()
	md := s.GetMetadata()
	if err := checkVersion("secret", op.GetId(), op.GetResourceVersion(), md.GetResourceVersion()); err != nil {
		return nil, err
	}
	// Every path is checked before anything is written: a command that
	// fails must leave no partial writes in the batch.
	oldName := ""
	for _, path := range op.GetPaths() {
		switch path {
		case "metadata.name":
			if op.GetName() == md.GetName() {
				continue
			}
			if _, err := a.b.SecretIDByName(md.GetParentId(), op.GetName()); err == nil {
				return nil, errorf(ErrAlreadyExists, "secret name %q is taken in project %s", op.GetName(), md.GetParentId())
			} else if !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
			oldName = md.GetName()
			md.Name = op.GetName()
		case "metadata.labels":
			md.Labels = op.GetLabels()
		case "spec.description":
			s.Spec.Description = op.GetDescription()
		case "spec.primary_version_id":
			if err := a.setPrimary(rec, op.GetPrimaryVersionId()); err != nil {
				return nil, err
			}
		default:
			return nil, errorf(ErrInvalidArgument, "update_mask path %q cannot be updated", path)
		}
	}
	if oldName != "" {
		if err := a.b.DeleteSecretName(md.GetParentId(), oldName); err != nil {
			return nil, err
		}
		if err := a.b.PutSecretName(md.GetParentId(), md.GetName(), md.GetId()); err != nil {
			return nil, err
		}
	}
	a.touch(md)
	return s, a.b.PutSecret(rec)
}

// setPrimary pins versionID as the primary, or unpins it when versionID is
// empty.
func (a *applier) setPrimary(rec *fsmpb.SecretRecord, versionID string) error {
	s := rec.GetSecret()
	if versionID == "" {
		s.Spec.PrimaryVersionId = ""
		s.Status.PrimaryPinned = false
		return a.recomputePrimary(rec)
	}
	v, err := a.b.Version(versionID)
	if err != nil || v.GetVersion().GetMetadata().GetParentId() != s.GetMetadata().GetId() {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return notFound("version", versionID+" of secret "+s.GetMetadata().GetId())
	}
	if v.GetVersion().GetStatus().GetState() != pb.State_ACTIVE {
		return errorf(ErrFailedPrecondition, "version %s is scheduled for deletion and cannot become primary", versionID)
	}
	s.Spec.PrimaryVersionId = versionID
	s.Status.PrimaryVersionId = versionID
	s.Status.PrimaryPinned = true
	return nil
}

// recomputePrimary makes the latest ACTIVE version primary unless pinned.
func (a *applier) recomputePrimary(rec *fsmpb.SecretRecord) error {
	s := rec.GetSecret()
	if s.GetStatus().GetPrimaryPinned() {
		return nil
	}
	latest := ""
	err := a.b.ScanVersions(s.GetMetadata().GetId(), 0, true, func(v *fsmpb.VersionRecord) (bool, error) {
		if v.GetVersion().GetStatus().GetState() == pb.State_ACTIVE {
			latest = v.GetVersion().GetMetadata().GetId()
			return false, nil
		}
		return true, nil
	})
	s.Status.PrimaryVersionId = latest
	return err
}

func (a *applier) deleteSecret(op *fsmpb.DeleteSecret) (proto.Message, error) {
	rec, err := a.liveSecret(op.GetId())
	if err != nil {
		return nil, err
	}
	s := rec.GetSecret()
	md := s.GetMetadata()
	if err := checkVersion("secret", op.GetId(), op.GetResourceVersion(), md.GetResourceVersion()); err != nil {
		return nil, err
	}
	purgeAt := a.now + op.GetPurgeAfterNanos()
	s.Status.State = pb.State_SCHEDULED_FOR_DELETION
	s.Status.DeletedAt = a.ts()
	s.Status.PurgeAt = timestamppb.New(time.Unix(0, purgeAt))
	if err := a.b.DeleteSecretName(md.GetParentId(), md.GetName()); err != nil {
		return nil, err
	}
	if err := a.b.SchedulePurge(purgeAt, md.GetId()); err != nil {
		return nil, err
	}
	a.touch(md)
	return s, a.b.PutSecret(rec)
}

func (a *applier) undeleteSecret(op *fsmpb.UndeleteSecret) (proto.Message, error) {
	rec, err := a.b.Secret(op.GetId())
	if err != nil {
		return nil, notFoundOr(err, "secret", op.GetId())
	}
	s := rec.GetSecret()
	md := s.GetMetadata()
	if s.GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION {
		return nil, errorf(ErrFailedPrecondition, "secret %s is not scheduled for deletion", op.GetId())
	}
	if err := checkVersion("secret", op.GetId(), op.GetResourceVersion(), md.GetResourceVersion()); err != nil {
		return nil, err
	}
	name := md.GetName()
	if op.GetName() != "" {
		name = op.GetName()
	}
	if _, err := a.b.SecretIDByName(md.GetParentId(), name); err == nil {
		if op.GetName() == "" {
			return nil, errorf(ErrAlreadyExists, "secret name %q was taken while %s was deleted; undelete it with a new name", name, op.GetId())
		}
		return nil, errorf(ErrAlreadyExists, "secret name %q is taken in project %s", name, md.GetParentId())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err := a.b.UnschedulePurge(s.GetStatus().GetPurgeAt().AsTime().UnixNano(), md.GetId()); err != nil {
		return nil, err
	}
	md.Name = name
	s.Status.State = pb.State_ACTIVE
	s.Status.DeletedAt, s.Status.PurgeAt = nil, nil
	if err := a.b.PutSecretName(md.GetParentId(), name, md.GetId()); err != nil {
		return nil, err
	}
	a.touch(md)
	return s, a.b.PutSecret(rec)
}

// ---------------------------------------------------------------- versions

// addVersion stores a new version of rec's secret and updates rec (not yet
// written) for the primary pointer and count.
func (a *applier) addVersion(rec *fsmpb.SecretRecord, op *fsmpb.CreateVersion) (*pb.SecretVersion, error) {
	v := proto.Clone(op.GetVersion()).(*pb.SecretVersion)
	md := v.GetMetadata()
	if _, err := a.b.Version(md.GetId()); err == nil {
		return nil, errorf(ErrAlreadyExists, "version id %s", md.GetId())
	}
	s := rec.GetSecret()
	md.ParentId = s.GetMetadata().GetId()
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	if v.Spec == nil {
		v.Spec = &pb.SecretVersionSpec{}
	}
	v.Spec.Payload, v.Spec.SetPrimary = nil, false
	v.Status = &pb.SecretVersionStatus{State: pb.State_ACTIVE, Number: rec.GetNextVersionNumber()}
	rec.NextVersionNumber++
	sealed := op.GetPayload()
	vrec := &fsmpb.VersionRecord{Version: v, KekId: sealed.GetKekId(), WrappedDek: sealed.GetWrappedDek()}
	for _, e := range sealed.GetEntries() {
		vrec.EntryKeys = append(vrec.EntryKeys, e.GetKey())
		if err := a.b.PutEntry(md.GetId(), e); err != nil {
			return nil, err
		}
	}
	if err := a.b.PutVersion(vrec); err != nil {
		return nil, err
	}
	if err := a.b.PutKeyCheck(sealed.GetKekId(), sealed.GetKekCheck()); err != nil {
		return nil, err
	}
	s.Status.VersionCount++
	if op.GetSetPrimary() {
		s.Spec.PrimaryVersionId = md.GetId()
		s.Status.PrimaryVersionId = md.GetId()
		s.Status.PrimaryPinned = true
	} else if !s.GetStatus().GetPrimaryPinned() {
		s.Status.PrimaryVersionId = md.GetId()
	}
	return v, nil
}

func (a *applier) createVersion(op *fsmpb.CreateVersion) (proto.Message, error) {
	secretID := op.GetVersion().GetMetadata().GetParentId()
	rec, err := a.liveSecret(secretID)
	if err != nil {
		return nil, err
	}
	v, err := a.addVersion(rec, op)
	if err != nil {
		return nil, err
	}
	a.touch(rec.GetSecret().GetMetadata())
	return v, a.b.PutSecret(rec)
}

// versionAndSecret returns a version and its live secret.
func (a *applier) versionAndSecret(id string) (*fsmpb.VersionRecord, *fsmpb.SecretRecord, error) {
	vrec, err := a.b.Version(id)
	if err != nil {
		return nil, nil, notFoundOr(err, "version", id)
	}
	rec, err := a.b.Secret(vrec.GetVersion().GetMetadata().GetParentId())
	if err != nil || rec.GetSecret().GetStatus().GetState() != pb.State_ACTIVE {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, nil, err
		}
		return nil, nil, notFound("version", id)
	}
	return vrec, rec, nil
}

func (a *applier) deleteVersion(op *fsmpb.DeleteVersion) (proto.Message, error) {
	vrec, rec, err := a.versionAndSecret(op.GetId())
	if err != nil {
		return nil, err
	}
	v := vrec.GetVersion()
	if v.GetStatus().GetState() != pb.State_ACTIVE {
		return nil, notFound("version", op.GetId())
	}
	if err := checkVersion("version", op.GetId(), op.GetResourceVersion(), v.GetMetadata().GetResourceVersion()); err != nil {
		return nil, err
	}
	purgeAt := a.now + op.GetPurgeAfterNanos()
	v.Status.State = pb.State_SCHEDULED_FOR_DELETION
	v.Status.DeletedAt = a.ts()
	v.Status.PurgeAt = timestamppb.New(time.Unix(0, purgeAt))
	a.touch(v.GetMetadata())
	if err := a.b.PutVersion(vrec); err != nil {
		return nil, err
	}
	if err := a.b.SchedulePurge(purgeAt, op.GetId()); err != nil {
		return nil, err
	}
	rec.Secret.Status.VersionCount--
	if err := a.recomputePrimary(rec); err != nil {
		return nil, err
	}
	a.touch(rec.GetSecret().GetMetadata())
	return v, a.b.PutSecret(rec)
}

func (a *applier) undeleteVersion(op *fsmpb.UndeleteVersion) (proto.Message, error) {
	vrec, rec, err := a.versionAndSecret(op.GetId())
	if err != nil {
		return nil, err
	}
	v := vrec.GetVersion()
	if v.GetStatus().GetState() != pb.State_SCHEDULED_FOR_DELETION {
		return nil, errorf(ErrFailedPrecondition, "version %s is not scheduled for deletion", op.GetId())
	}
	if err := checkVersion("version", op.GetId(), op.GetResourceVersion(), v.GetMetadata().GetResourceVersion()); err != nil {
		return nil, err
	}
	if err := a.b.UnschedulePurge(v.GetStatus().GetPurgeAt().AsTime().UnixNano(), op.GetId()); err != nil {
		return nil, err
	}
	v.Status.State = pb.State_ACTIVE
	v.Status.DeletedAt, v.Status.PurgeAt = nil, nil
	a.touch(v.GetMetadata())
	if err := a.b.PutVersion(vrec); err != nil {
		return nil, err
	}
	rec.Secret.Status.VersionCount++
	if err := a.recomputePrimary(rec); err != nil {
		return nil, err
	}
	a.touch(rec.GetSecret().GetMetadata())
	return v, a.b.PutSecret(rec)
}

// ---------------------------------------------------------------- purge

func (a *applier) due(st *timestamppb.Timestamp) bool {
	return st != nil && st.AsTime().UnixNano() <= a.now
}

func (a *applier) purge(op *fsmpb.Purge) error {
	for _, id := range op.GetSecretIds() {
		rec, err := a.b.Secret(id)
		if errors.Is(err, store.ErrNotFound) {
			continue // already purged by an earlier command
		}
		if err != nil {
			return err
		}
		st := rec.GetSecret().GetStatus()
		if st.GetState() != pb.State_SCHEDULED_FOR_DELETION || !a.due(st.GetPurgeAt()) {
			continue // undeleted, or not due at this command's time
		}
		if err := a.purgeSecret(rec); err != nil {
			return err
		}
	}
	for _, id := range op.GetVersionIds() {
		vrec, err := a.b.Version(id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		st := vrec.GetVersion().GetStatus()
		if st.GetState() != pb.State_SCHEDULED_FOR_DELETION || !a.due(st.GetPurgeAt()) {
			continue
		}
		if err := a.purgeVersion(vrec); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) purgeSecret(rec *fsmpb.SecretRecord) error {
	s := rec.GetSecret()
	var versions []*fsmpb.VersionRecord
	err := a.b.ScanVersions(s.GetMetadata().GetId(), 0, false, func(v *fsmpb.VersionRecord) (bool, error) {
		versions = append(versions, v)
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, v := range versions {
		if pa := v.GetVersion().GetStatus().GetPurgeAt(); pa != nil {
			if err := a.b.UnschedulePurge(pa.AsTime().UnixNano(), v.GetVersion().GetMetadata().GetId()); err != nil {
				return err
			}
		}
		if err := a.b.DeleteVersion(v); err != nil {
			return err
		}
	}
	if err := a.b.UnschedulePurge(s.GetStatus().GetPurgeAt().AsTime().UnixNano(), s.GetMetadata().GetId()); err != nil {
		return err
	}
	if err := a.b.DeleteSecret(rec); err != nil {
		return err
	}
	if err := a.deleteBindingsOn(s.GetMetadata().GetId()); err != nil {
		return err
	}
	project, err := a.b.Project(s.GetMetadata().GetParentId())
	if err != nil {
		return fmt.Errorf("purge secret %s: its project: %v", s.GetMetadata().GetId(), err)
	}
	project.Status.SecretCount--
	return a.b.PutProject(project)
}

func (a *applier) purgeVersion(vrec *fsmpb.VersionRecord) error {
	v := vrec.GetVersion()
	id := v.GetMetadata().GetId()
	if err := a.b.UnschedulePurge(v.GetStatus().GetPurgeAt().AsTime().UnixNano(), id); err != nil {
		return err
	}
	if err := a.b.DeleteVersion(vrec); err != nil {
		return err
	}
	rec, err := a.b.Secret(v.GetMetadata().GetParentId())
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	s := rec.GetSecret()
	if s.GetStatus().GetPrimaryPinned() && s.GetStatus().GetPrimaryVersionId() == id {
		// The pinned primary is gone for good: fall back to the latest.
		s.Spec.PrimaryVersionId = ""
		s.Status.PrimaryPinned = false
		if err := a.recomputePrimary(rec); err != nil {
			return err
		}
		a.touch(s.GetMetadata())
	}
	return a.b.PutSecret(rec)
}

func (a *applier) pruneIdempotency(op *fsmpb.PruneIdempotency) error {
	for _, key := range op.GetKeys() {
		rec, err := a.b.Idempotency(key)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if rec.GetExpiresUnixNano() > a.now {
			continue
		}
		if err := a.b.DeleteIdempotency(key, rec); err != nil {
			return err
		}
	}
	return nil
}

// rewrap installs re-wrapped data keys; an item whose version is gone or no
// longer wrapped by from_kek_id is skipped (rewrap is safe to run twice).
func (a *applier) rewrap(op *fsmpb.RewrapVersions) (proto.Message, error) {
	done := 0
	for _, it := range op.GetItems() {
		vrec, err := a.b.Version(it.GetVersionId())
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if vrec.GetKekId() != it.GetFromKekId() {
			continue
		}
		if err := a.b.PutKeyCheck(it.GetToKekId(), it.GetToKekCheck()); err != nil {
			return nil, err
		}
		if err := a.b.RewrapVersion(vrec, it.GetToKekId(), it.GetWrappedDek()); err != nil {
			return nil, err
		}
		done++
	}
	return &fsmpb.RewrapResult{Rewrapped: int64(done)}, nil
}
