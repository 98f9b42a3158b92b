package server

import (
	"context"
	"errors"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type secretService struct {
	pb.UnimplementedSecretServiceServer
	s *Server
}

func (x *secretService) Create(ctx context.Context, req *pb.CreateSecretRequest) (*pb.Secret, error) {
	if err := validateCreateSecret(req); err != nil {
		return nil, err
	}
	return mutate[*pb.Secret](ctx, x.s, req, x.s.projectChain(permWrite, req.GetSecret().GetMetadata().GetParentId()), func() (*fsmpb.Command, error) {
		in := req.GetSecret()
		secret := &pb.Secret{
			Metadata: &pb.Metadata{
				Id:       newID(prefixSecret),
				ParentId: in.GetMetadata().GetParentId(),
				Name:     in.GetMetadata().GetName(),
				Labels:   in.GetMetadata().GetLabels(),
			},
			Spec: &pb.SecretSpec{Description: in.GetSpec().GetDescription()},
		}
		op := &fsmpb.CreateSecret{Secret: secret}
		if v := in.GetSpec().GetSecretVersion(); v != nil {
			cv, err := x.s.stampVersion(secret.GetMetadata().GetId(), v)
			if err != nil {
				return nil, err
			}
			op.FirstVersion = cv
		}
		return &fsmpb.Command{Op: &fsmpb.Command_CreateSecret{CreateSecret: op}}, nil
	})
}

// stampVersion gives a new version its id and seals its payload.
func (s *Server) stampVersion(secretID string, spec *pb.SecretVersionSpec) (*fsmpb.CreateVersion, error) {
	id := newID(prefixVersion)
	sealed, err := s.keyring().Seal(secretID, id, spec.GetPayload().GetEntries())
	if err != nil {
		return nil, err
	}
	return &fsmpb.CreateVersion{
		Version: &pb.SecretVersion{
			Metadata: &pb.Metadata{Id: id, ParentId: secretID},
			Spec:     &pb.SecretVersionSpec{Description: spec.GetDescription()},
		},
		Payload:    sealed,
		SetPrimary: spec.GetSetPrimary(),
	}, nil
}

// visibleSecret returns the secret with id, hiding one scheduled for
// deletion unless asked. The message may be shared with other readers
// (store.View.SharedSecret): return it or read it, never modify it.
func visibleSecret(v *store.View, id string, showDeleted bool) (*pb.Secret, error) {
	rec, err := v.SharedSecret(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("secret", id)
	}
	if err != nil {
		return nil, err
	}
	if rec.GetSecret().GetStatus().GetState() != pb.State_ACTIVE && !showDeleted {
		return nil, notFound("secret", id)
	}
	return rec.GetSecret(), nil
}

func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "%s %s not found", kind, id)
}

func (x *secretService) Get(ctx context.Context, req *pb.GetSecretRequest) (*pb.Secret, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.secretChain(permView, req.GetId()), func(v *store.View, _ *caller) (*pb.Secret, error) {
		return visibleSecret(v, req.GetId(), req.GetShowScheduledForDeletion())
	})
}

func (x *secretService) GetByName(ctx context.Context, req *pb.GetSecretByNameRequest) (*pb.Secret, error) {
	if err := validateID("parent_id", req.GetParentId()); err != nil {
		return nil, err
	}
	if err := validateName("name", req.GetName()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.projectChain(permView, req.GetParentId()), func(v *store.View, _ *caller) (*pb.Secret, error) {
		id, err := v.SecretIDByName(req.GetParentId(), req.GetName())
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "no secret named %q in project %s", req.GetName(), req.GetParentId())
		}
		if err != nil {
			return nil, err
		}
		return visibleSecret(v, id, false)
	})
}

func (x *secretService) List(ctx context.Context, req *pb.ListSecretsRequest) (*pb.ListSecretsResponse, error) {
	if err := validateID("parent_id", req.GetParentId()); err != nil {
		return nil, err
	}
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "secrets/"+req.GetParentId())
	if err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.projectChain(permView, req.GetParentId()), func(v *store.View, _ *caller) (*pb.ListSecretsResponse, error) {
		if _, err := v.Project(req.GetParentId()); err != nil {
			return nil, notFoundOr(err, "project", req.GetParentId())
		}
		out := &pb.ListSecretsResponse{}
		last := ""
		err := v.ScanSecrets(req.GetParentId(), pg.after, func(rec *fsmpb.SecretRecord) (bool, error) {
			if rec.GetSecret().GetStatus().GetState() != pb.State_ACTIVE && !req.GetShowScheduledForDeletion() {
				return true, nil
			}
			if len(out.Secrets) == pg.size {
				out.NextPageToken = pg.next(last)
				return false, nil
			}
			out.Secrets = append(out.Secrets, rec.GetSecret())
			last = rec.GetSecret().GetMetadata().GetId()
			return true, nil
		})
		return out, err
	})
}

func notFoundOr(err error, kind, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound(kind, id)
	}
	return err
}

func (x *secretService) Update(ctx context.Context, req *pb.UpdateSecretRequest) (*pb.Secret, error) {
	paths, err := validateUpdateSecret(req)
	if err != nil {
		return nil, err
	}
	return mutate[*pb.Secret](ctx, x.s, req, x.s.secretChain(permWrite, req.GetSecret().GetMetadata().GetId()), func() (*fsmpb.Command, error) {
		in := req.GetSecret()
		return &fsmpb.Command{Op: &fsmpb.Command_UpdateSecret{UpdateSecret: &fsmpb.UpdateSecret{
			Id:               in.GetMetadata().GetId(),
			ResourceVersion:  in.GetMetadata().GetResourceVersion(),
			Paths:            paths,
			Name:             in.GetMetadata().GetName(),
			Labels:           in.GetMetadata().GetLabels(),
			Description:      in.GetSpec().GetDescription(),
			PrimaryVersionId: in.GetSpec().GetPrimaryVersionId(),
		}}}, nil
	})
}

func (x *secretService) Delete(ctx context.Context, req *pb.DeleteSecretRequest) (*pb.Secret, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.Secret](ctx, x.s, req, x.s.secretChain(permWrite, req.GetId()), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteSecret{DeleteSecret: &fsmpb.DeleteSecret{
			Id: req.GetId(), ResourceVersion: req.GetResourceVersion(), PurgeAfterNanos: int64(x.s.cfg.PurgeAfter),
		}}}, nil
	})
}

func (x *secretService) Undelete(ctx context.Context, req *pb.UndeleteSecretRequest) (*pb.Secret, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	if req.GetName() != "" {
		if err := validateName("name", req.GetName()); err != nil {
			return nil, err
		}
	}
	return mutate[*pb.Secret](ctx, x.s, req, x.s.secretChain(permWrite, req.GetId()), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_UndeleteSecret{UndeleteSecret: &fsmpb.UndeleteSecret{
			Id: req.GetId(), Name: req.GetName(), ResourceVersion: req.GetResourceVersion(),
		}}}, nil
	})
}
