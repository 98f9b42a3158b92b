package server

import (
	"context"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

// identityService serves projects (accounts, tokens and access bindings
// come with the identity issue).
type identityService struct {
	pb.UnimplementedIdentityServiceServer
	s *Server
}

func (x *identityService) CreateProject(ctx context.Context, req *pb.CreateProjectRequest) (*pb.Project, error) {
	if err := validateCreateProject(req); err != nil {
		return nil, err
	}
	return mutate[*pb.Project](ctx, x.s, req, func() (*fsmpb.Command, error) {
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
	return query(ctx, x.s, req, func(v *store.View) (*pb.Project, error) {
		p, err := v.Project(req.GetId())
		if err != nil {
			return nil, notFoundOr(err, "project", req.GetId())
		}
		return p, nil
	})
}

func (x *identityService) ListProjects(ctx context.Context, req *pb.ListProjectsRequest) (*pb.ListProjectsResponse, error) {
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, func(v *store.View) (*pb.ListProjectsResponse, error) {
		projects, more, err := v.ListProjects(pg.after, pg.size)
		if err != nil {
			return nil, err
		}
		out := &pb.ListProjectsResponse{Projects: projects}
		if more && len(projects) > 0 {
			out.NextPageToken = pageToken(projects[len(projects)-1].GetMetadata().GetId())
		}
		return out, nil
	})
}

func (x *identityService) DeleteProject(ctx context.Context, req *pb.DeleteProjectRequest) (*pb.DeleteProjectResponse, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.DeleteProjectResponse](ctx, x.s, req, func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteProject{DeleteProject: &fsmpb.DeleteProject{
			Id: req.GetId(), ResourceVersion: req.GetResourceVersion(),
		}}}, nil
	})
}
