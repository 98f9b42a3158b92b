package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// identityService serves projects, accounts, tokens and access bindings.
type identityService struct {
	pb.UnimplementedIdentityServiceServer
	s *Server
}

// ---------------------------------------------------------------- projects

func (x *identityService) CreateProject(ctx context.Context, req *pb.CreateProjectRequest) (*pb.Project, error) {
	if err := validateCreateProject(req); err != nil {
		return nil, err
	}
	return mutate[*pb.Project](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		in := req.GetProject()
		p := &pb.Project{
			Metadata: &pb.Metadata{
				Id:       newID(prefixProject),
				ParentId: x.s.cfg.Region,
				Name:     in.GetMetadata().GetName(),
				Labels:   in.GetMetadata().GetLabels(),
			},
			Spec:   &pb.ProjectSpec{Description: in.GetSpec().GetDescription()},
			Status: &pb.ProjectStatus{Region: x.s.cfg.Region},
		}
		return &fsmpb.Command{Op: &fsmpb.Command_CreateProject{CreateProject: &fsmpb.CreateProject{Project: p}}}, nil
	})
}

func (x *identityService) GetProject(ctx context.Context, req *pb.GetProjectRequest) (*pb.Project, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.projectChain(permView, req.GetId()), func(v *store.View, _ *caller) (*pb.Project, error) {
		p, err := v.Project(req.GetId())
		if err != nil {
			return nil, notFoundOr(err, "project", req.GetId())
		}
		return p, nil
	})
}

// ListProjects lists the projects the caller may view.
func (x *identityService) ListProjects(ctx context.Context, req *pb.ListProjectsRequest) (*pb.ListProjectsResponse, error) {
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "projects")
	if err != nil {
		return nil, err
	}
	region := x.s.cfg.Region
	return query(ctx, x.s, req, access{}, func(v *store.View, c *caller) (*pb.ListProjectsResponse, error) {
		out := &pb.ListProjectsResponse{}
		after := pg.after
		for {
			batch, more, err := v.ListProjects(after, maxPageSize)
			if err != nil {
				return nil, err
			}
			for _, p := range batch {
				id := p.GetMetadata().GetId()
				after = id
				if !c.has(permView, []string{id, region}) {
					continue
				}
				if len(out.Projects) == pg.size {
					out.NextPageToken = pg.next(out.Projects[len(out.Projects)-1].GetMetadata().GetId())
					return out, nil
				}
				out.Projects = append(out.Projects, p)
			}
			if !more {
				return out, nil
			}
		}
	})
}

func (x *identityService) DeleteProject(ctx context.Context, req *pb.DeleteProjectRequest) (*pb.DeleteProjectResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.DeleteProjectResponse](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteProject{DeleteProject: &fsmpb.DeleteProject{
			Id: req.GetId(), ResourceVersion: req.GetResourceVersion(),
		}}}, nil
	})
}

// ---------------------------------------------------------------- accounts

func (x *identityService) CreateAccount(ctx context.Context, req *pb.CreateAccountRequest) (*pb.Account, error) {
	in := req.GetAccount()
	if err := validateName("account.metadata.name", in.GetMetadata().GetName()); err != nil {
		return nil, err
	}
	if err := validateLabels("account.metadata.labels", in.GetMetadata().GetLabels()); err != nil {
		return nil, err
	}
	if err := validateDescription("account.spec.description", in.GetSpec().GetDescription()); err != nil {
		return nil, err
	}
	typ := in.GetSpec().GetType()
	prefix := prefixAccountService
	switch typ {
	case pb.AccountType_ACCOUNT_TYPE_UNSPECIFIED:
		typ = pb.AccountType_SERVICE
	case pb.AccountType_SERVICE:
	case pb.AccountType_USER:
		prefix = prefixAccountUser
	default:
		return nil, invalid("account.spec.type", "must be SERVICE or USER")
	}
	return mutate[*pb.Account](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		a := &pb.Account{
			Metadata: &pb.Metadata{Id: newID(prefix), ParentId: x.s.cfg.Region, Name: in.GetMetadata().GetName(), Labels: in.GetMetadata().GetLabels()},
			Spec:     &pb.AccountSpec{Type: typ, Description: in.GetSpec().GetDescription()},
			Status:   &pb.AccountStatus{Region: x.s.cfg.Region},
		}
		return &fsmpb.Command{Op: &fsmpb.Command_CreateAccount{CreateAccount: &fsmpb.CreateAccount{Account: a}}}, nil
	})
}

func (x *identityService) GetAccount(ctx context.Context, req *pb.GetAccountRequest) (*pb.Account, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.Account, error) {
		a, err := v.Account(req.GetId())
		if err != nil {
			return nil, notFoundOr(err, "account", req.GetId())
		}
		return a, nil
	})
}

func (x *identityService) ListAccounts(ctx context.Context, req *pb.ListAccountsRequest) (*pb.ListAccountsResponse, error) {
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "accounts")
	if err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.ListAccountsResponse, error) {
		accts, more, err := v.ListAccounts(pg.after, pg.size)
		if err != nil {
			return nil, err
		}
		out := &pb.ListAccountsResponse{Accounts: accts}
		if more && len(accts) > 0 {
			out.NextPageToken = pg.next(accts[len(accts)-1].GetMetadata().GetId())
		}
		return out, nil
	})
}

func (x *identityService) DeleteAccount(ctx context.Context, req *pb.DeleteAccountRequest) (*pb.DeleteAccountResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.DeleteAccountResponse](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteAccount{DeleteAccount: &fsmpb.DeleteAccount{Id: req.GetId(), ResourceVersion: req.GetResourceVersion()}}}, nil
	})
}

// ---------------------------------------------------------------- tokens

const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (x *identityService) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	if err := validateID("account_id", req.GetAccountId()); err != nil {
		return nil, err
	}
	if err := validateDescription("description", req.GetDescription()); err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.GetTtl() != nil {
		if err := req.GetTtl().CheckValid(); err != nil {
			return nil, invalid("ttl", "%v", err)
		}
		ttl = req.GetTtl().AsDuration()
		if ttl < 0 || ttl > maxTokenTTL {
			return nil, invalid("ttl", "must be between 0 (no expiry) and %v", maxTokenTTL)
		}
	}
	s := x.s
	if !s.raft.AcceptsWrites() {
		out := &pb.CreateTokenResponse{}
		if err := s.fwd.forward(ctx, req, out); err != nil {
			return nil, err
		}
		return out, nil
	}
	resp, err := s.proposeAuthorized(ctx, req, s.regionChain(), func() (*fsmpb.Command, error) {
		full := NewToken(s.cfg.Region)
		parts := strings.Split(full, ".")
		tokenID, secret := parts[2], parts[3]
		sum := sha256.Sum256([]byte(secret))
		kekID, sealed, err := s.keyring().SealValue(tokenID, []byte(full))
		if err != nil {
			return nil, err
		}
		tok := &pb.Token{
			Metadata: &pb.Metadata{Id: tokenID, ParentId: req.GetAccountId()},
			Spec:     &pb.TokenSpec{Description: req.GetDescription()},
			Status:   &pb.TokenStatus{Region: s.cfg.Region},
		}
		if ttl > 0 {
			tok.Spec.ExpiresAt = timestamppb.New(time.Now().Add(ttl))
		}
		return &fsmpb.Command{Op: &fsmpb.Command_CreateToken{CreateToken: &fsmpb.CreateToken{
			Token: &fsmpb.TokenRecord{Token: tok, SecretHash: sum[:]}, SealedSecretKekId: kekID, SealedSecret: sealed,
		}}}, nil
	})
	if err != nil {
		return nil, err
	}
	r, ok := resp.(*fsmpb.CreateTokenResult)
	if !ok {
		return nil, status.Errorf(codes.Internal, "unexpected response %T", resp)
	}
	// A retried call gets the first attempt's token back: open its secret.
	plain, err := s.keyring().OpenValue(r.GetSealedSecretKekId(), r.GetToken().GetMetadata().GetId(), r.GetSealedSecret())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CreateTokenResponse{Token: r.GetToken(), Secret: string(plain)}, nil
}

func (x *identityService) GetToken(ctx context.Context, req *pb.GetTokenRequest) (*pb.Token, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.Token, error) {
		t, err := v.Token(req.GetId())
		if err != nil {
			return nil, notFoundOr(err, "token", req.GetId())
		}
		return t.GetToken(), nil
	})
}

func (x *identityService) ListTokens(ctx context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	if err := validateID("account_id", req.GetAccountId()); err != nil {
		return nil, err
	}
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "tokens/"+req.GetAccountId())
	if err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.regionChain(), func(v *store.View, _ *caller) (*pb.ListTokensResponse, error) {
		if _, err := v.Account(req.GetAccountId()); err != nil {
			return nil, notFoundOr(err, "account", req.GetAccountId())
		}
		ids, err := v.TokenIDsOfAccount(req.GetAccountId(), pg.after, pg.size+1)
		if err != nil {
			return nil, err
		}
		out := &pb.ListTokensResponse{}
		if len(ids) > pg.size {
			ids = ids[:pg.size]
			out.NextPageToken = pg.next(ids[len(ids)-1])
		}
		for _, id := range ids {
			t, err := v.Token(id)
			if err != nil {
				return nil, err
			}
			out.Tokens = append(out.Tokens, t.GetToken())
		}
		return out, nil
	})
}

func (x *identityService) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.RevokeTokenResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.RevokeTokenResponse](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_RevokeToken{RevokeToken: &fsmpb.RevokeToken{Id: req.GetId()}}}, nil
	})
}

// DeleteToken is RevokeToken under the name SPEC gives every resource's
// removal (IdentityService: Create/Get/List/Delete each).
func (x *identityService) DeleteToken(ctx context.Context, req *pb.DeleteTokenRequest) (*pb.DeleteTokenResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	if _, err := mutate[*pb.RevokeTokenResponse](ctx, x.s, req, x.s.regionChain(), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_RevokeToken{RevokeToken: &fsmpb.RevokeToken{Id: req.GetId()}}}, nil
	}); err != nil {
		return nil, err
	}
	return &pb.DeleteTokenResponse{}, nil
}

// ---------------------------------------------------------------- bindings

// bindingAccess is what managing bindings on a resource requires; granting
// the region admin role takes a region admin.
func (s *Server) bindingAccess(resourceID, role string) access {
	p := permBindings
	if role == RoleRegionAdmin {
		p = permRegionAdmin
	}
	return access{perm: p, chain: func(v *store.View) ([]string, error) { return s.resourceChain(v, resourceID) }}
}

func (s *Server) validateResourceID(field, id string) error {
	if err := validateID(field, id); err != nil {
		return err
	}
	switch fsm.ResourceKind(id) {
	case "project", "secret":
		return nil
	case "version":
		return invalid(field, "roles are granted on the region, a project or a secret, not on a version")
	}
	if id != s.cfg.Region {
		return invalid(field, "%q is neither a project id, a secret id nor this region (%s)", id, s.cfg.Region)
	}
	return nil
}

func (x *identityService) CreateAccessBinding(ctx context.Context, req *pb.CreateAccessBindingRequest) (*pb.AccessBinding, error) {
	spec := req.GetBinding().GetSpec()
	if err := x.s.validateResourceID("binding.spec.resource_id", spec.GetResourceId()); err != nil {
		return nil, err
	}
	if err := validateID("binding.spec.account_id", spec.GetAccountId()); err != nil {
		return nil, err
	}
	if !validRole(spec.GetRole()) {
		return nil, invalid("binding.spec.role", "%q is not a role (mysterybox.viewer, mysterybox.payload-viewer, mysterybox.editor, mysterybox.admin, admin)", spec.GetRole())
	}
	if spec.GetRole() == RoleRegionAdmin && spec.GetResourceId() != x.s.cfg.Region {
		return nil, invalid("binding.spec.role", "admin is granted on the region (%s) only", x.s.cfg.Region)
	}
	return mutate[*pb.AccessBinding](ctx, x.s, req, x.s.bindingAccess(spec.GetResourceId(), spec.GetRole()), func() (*fsmpb.Command, error) {
		ab := &pb.AccessBinding{
			Metadata: &pb.Metadata{Id: newID(prefixBinding), ParentId: spec.GetResourceId(), Labels: req.GetBinding().GetMetadata().GetLabels()},
			Spec:     &pb.AccessBindingSpec{ResourceId: spec.GetResourceId(), AccountId: spec.GetAccountId(), Role: spec.GetRole()},
		}
		return &fsmpb.Command{Op: &fsmpb.Command_CreateBinding{CreateBinding: &fsmpb.CreateBinding{Binding: ab}}}, nil
	})
}

// bindingByID is the access to a binding known by id: manage bindings on
// its resource (region admin for the region admin role).
func (s *Server) bindingByID(id string) access {
	return access{perm: permBindings, chain: func(v *store.View) ([]string, error) {
		ab, err := v.Binding(id)
		if errors.Is(err, store.ErrNotFound) {
			return []string{s.cfg.Region}, nil
		}
		if err != nil {
			return nil, err
		}
		if ab.GetSpec().GetRole() == RoleRegionAdmin {
			return []string{s.cfg.Region}, nil
		}
		return s.resourceChain(v, ab.GetSpec().GetResourceId())
	}}
}

func (x *identityService) GetAccessBinding(ctx context.Context, req *pb.GetAccessBindingRequest) (*pb.AccessBinding, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.bindingByID(req.GetId()), func(v *store.View, _ *caller) (*pb.AccessBinding, error) {
		ab, err := v.Binding(req.GetId())
		if err != nil {
			return nil, notFoundOr(err, "access binding", req.GetId())
		}
		return ab, nil
	})
}

func (x *identityService) ListAccessBindings(ctx context.Context, req *pb.ListAccessBindingsRequest) (*pb.ListAccessBindingsResponse, error) {
	if err := x.s.validateResourceID("resource_id", req.GetResourceId()); err != nil {
		return nil, err
	}
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "bindings/"+req.GetResourceId())
	if err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.bindingAccess(req.GetResourceId(), ""), func(v *store.View, _ *caller) (*pb.ListAccessBindingsResponse, error) {
		ids, err := v.BindingIDsOnResource(req.GetResourceId(), pg.after, pg.size+1)
		if err != nil {
			return nil, err
		}
		out := &pb.ListAccessBindingsResponse{}
		if len(ids) > pg.size {
			ids = ids[:pg.size]
			out.NextPageToken = pg.next(ids[len(ids)-1])
		}
		for _, id := range ids {
			ab, err := v.Binding(id)
			if err != nil {
				return nil, err
			}
			out.Bindings = append(out.Bindings, ab)
		}
		return out, nil
	})
}

func (x *identityService) DeleteAccessBinding(ctx context.Context, req *pb.DeleteAccessBindingRequest) (*pb.DeleteAccessBindingResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.DeleteAccessBindingResponse](ctx, x.s, req, x.s.bindingByID(req.GetId()), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteBinding{DeleteBinding: &fsmpb.DeleteBinding{Id: req.GetId()}}}, nil
	})
}
