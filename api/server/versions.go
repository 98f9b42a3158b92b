package server

import (
	"context"
	"encoding/binary"
	"errors"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

type versionService struct {
	pb.UnimplementedSecretVersionServiceServer
	s *Server
}

func (x *versionService) Create(ctx context.Context, req *pb.CreateSecretVersionRequest) (*pb.SecretVersion, error) {
	if err := validateCreateVersion(req); err != nil {
		return nil, err
	}
	return mutate[*pb.SecretVersion](ctx, x.s, req, x.s.secretChain(permWrite, req.GetVersion().GetMetadata().GetParentId()), func() (*fsmpb.Command, error) {
		cv, err := x.s.stampVersion(req.GetVersion().GetMetadata().GetParentId(), req.GetVersion().GetSpec())
		if err != nil {
			return nil, err
		}
		cv.Version.Metadata.Labels = req.GetVersion().GetMetadata().GetLabels()
		return &fsmpb.Command{Op: &fsmpb.Command_CreateVersion{CreateVersion: cv}}, nil
	})
}

// visibleVersion returns a version whose secret is live, hiding a version
// scheduled for deletion unless asked.
func visibleVersion(v *store.View, id string, showDeleted bool) (*pb.SecretVersion, error) {
	rec, err := v.Version(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("version", id)
	}
	if err != nil {
		return nil, err
	}
	ver := rec.GetVersion()
	if _, err := visibleSecret(v, ver.GetMetadata().GetParentId(), showDeleted); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("version", id)
		}
		return nil, err
	}
	if ver.GetStatus().GetState() != pb.State_ACTIVE && !showDeleted {
		return nil, notFound("version", id)
	}
	return ver, nil
}

func (x *versionService) Get(ctx context.Context, req *pb.GetSecretVersionRequest) (*pb.SecretVersion, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return query(ctx, x.s, req, x.s.versionChain(permView, req.GetId()), func(v *store.View, _ *caller) (*pb.SecretVersion, error) {
		return visibleVersion(v, req.GetId(), req.GetShowScheduledForDeletion())
	})
}

func (x *versionService) List(ctx context.Context, req *pb.ListSecretVersionsRequest) (*pb.ListSecretVersionsResponse, error) {
	if err := validateID("parent_id", req.GetParentId()); err != nil {
		return nil, err
	}
	pg, err := parsePage(req.GetPageSize(), req.GetPageToken(), "versions/"+req.GetParentId())
	if err != nil {
		return nil, err
	}
	var after int64
	if pg.after != "" {
		if len(pg.after) != 8 {
			return nil, invalid("page_token", "is not a token from a previous page")
		}
		after = int64(beUint64(pg.after))
	}
	return query(ctx, x.s, req, x.s.secretChain(permView, req.GetParentId()), func(v *store.View, _ *caller) (*pb.ListSecretVersionsResponse, error) {
		if _, err := visibleSecret(v, req.GetParentId(), req.GetShowScheduledForDeletion()); err != nil {
			return nil, err
		}
		out := &pb.ListSecretVersionsResponse{}
		var last int64
		err := v.ScanVersions(req.GetParentId(), after, false, func(rec *fsmpb.VersionRecord) (bool, error) {
			ver := rec.GetVersion()
			if ver.GetStatus().GetState() != pb.State_ACTIVE && !req.GetShowScheduledForDeletion() {
				return true, nil
			}
			if len(out.Versions) == pg.size {
				out.NextPageToken = pg.next(be8(uint64(last)))
				return false, nil
			}
			out.Versions = append(out.Versions, ver)
			last = ver.GetStatus().GetNumber()
			return true, nil
		})
		return out, err
	})
}

// Page tokens of numbered lists carry the last number, 8 bytes big endian.
func beUint64(s string) uint64 { return binary.BigEndian.Uint64([]byte(s)) }

func be8(n uint64) string { return string(binary.BigEndian.AppendUint64(nil, n)) }

func (x *versionService) Delete(ctx context.Context, req *pb.DeleteSecretVersionRequest) (*pb.SecretVersion, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.SecretVersion](ctx, x.s, req, x.s.versionChain(permWrite, req.GetId()), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_DeleteVersion{DeleteVersion: &fsmpb.DeleteVersion{
			Id: req.GetId(), ResourceVersion: req.GetResourceVersion(), PurgeAfterNanos: int64(x.s.cfg.PurgeAfter),
		}}}, nil
	})
}

func (x *versionService) Undelete(ctx context.Context, req *pb.UndeleteSecretVersionRequest) (*pb.SecretVersion, error) {
	if err := validateID("id", req.GetId()); err != nil {
		return nil, err
	}
	return mutate[*pb.SecretVersion](ctx, x.s, req, x.s.versionChain(permWrite, req.GetId()), func() (*fsmpb.Command, error) {
		return &fsmpb.Command{Op: &fsmpb.Command_UndeleteVersion{UndeleteVersion: &fsmpb.UndeleteVersion{
			Id: req.GetId(), ResourceVersion: req.GetResourceVersion(),
		}}}, nil
	})
}
