package server

import (
	"context"
	"errors"
	"fmt"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type payloadService struct {
	pb.UnimplementedPayloadServiceServer
	s *Server
}

// readableVersion resolves which version a payload read reads: the given
// one, or the secret's primary. The record may be shared with other
// readers (store.View.SharedVersion): never modify it.
func readableVersion(v *store.View, secretID, versionID string) (*fsmpb.VersionRecord, error) {
	secret, err := visibleSecret(v, secretID, false)
	if err != nil {
		return nil, err
	}
	st := secret.GetStatus()
	explicit := versionID != ""
	if !explicit {
		versionID = st.GetPrimaryVersionId()
		if versionID == "" {
			return nil, status.Errorf(codes.NotFound, "secret %s has no active version", secretID)
		}
	}
	rec, err := v.SharedVersion(versionID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.GetVersion().GetMetadata().GetParentId() != secretID) {
		return nil, status.Errorf(codes.NotFound, "version %s of secret %s not found", versionID, secretID)
	}
	if err != nil {
		return nil, err
	}
	if rec.GetVersion().GetStatus().GetState() != pb.State_ACTIVE {
		if !explicit {
			return nil, status.Errorf(codes.FailedPrecondition, "the pinned primary version %s of secret %s is scheduled for deletion; pin another version or undelete it", versionID, secretID)
		}
		return nil, status.Errorf(codes.NotFound, "version %s of secret %s is scheduled for deletion", versionID, secretID)
	}
	return rec, nil
}

// auditedCtx decides where an audited payload read is served. A stale
// read (x-consistency: stale) is served from this node's state, as any
// stale read; a follower then ships its audit record to the leader and
// answers once it is committed. That needs every node of the region to
// take shipped records (fsm.ShippedAuditVersion): until then, and for
// linearizable reads, the leader serves it and writes the record.
func (x *payloadService) auditedCtx(ctx context.Context) context.Context {
	if x.s.audit != nil && !(isStale(ctx) && (x.s.raft.AcceptsWrites() || x.s.versions.supports(fsm.ShippedAuditVersion))) {
		return forceLinearizable(ctx)
	}
	return ctx
}

func (x *payloadService) Get(ctx context.Context, req *pb.GetPayloadRequest) (*pb.GetPayloadResponse, error) {
	ctx = x.auditedCtx(ctx)
	if err := validateID("secret_id", req.GetSecretId()); err != nil {
		return nil, err
	}
	if req.GetVersionId() != "" {
		if err := validateID("version_id", req.GetVersionId()); err != nil {
			return nil, err
		}
	}
	return query(ctx, x.s, req, x.s.secretChain(permPayload, req.GetSecretId()), func(v *store.View, _ *caller) (*pb.GetPayloadResponse, error) {
		rec, err := readableVersion(v, req.GetSecretId(), req.GetVersionId())
		if err != nil {
			return nil, err
		}
		id := rec.GetVersion().GetMetadata().GetId()
		sealed := make([]*fsmpb.SealedEntry, 0, len(rec.GetEntryKeys()))
		for _, k := range rec.GetEntryKeys() {
			e, err := v.SharedEntry(id, k)
			if err != nil {
				return nil, fmt.Errorf("version %s: entry %q: %v", id, k, err)
			}
			sealed = append(sealed, e)
		}
		entries, err := x.s.keyring().Open(req.GetSecretId(), id, rec.GetKekId(), rec.GetWrappedDek(), sealed)
		if err != nil {
			return nil, err
		}
		return &pb.GetPayloadResponse{SecretId: req.GetSecretId(), VersionId: id, Entries: entries}, nil
	})
}

func (x *payloadService) GetByKey(ctx context.Context, req *pb.GetPayloadByKeyRequest) (*pb.GetPayloadByKeyResponse, error) {
	ctx = x.auditedCtx(ctx)
	if err := validateID("secret_id", req.GetSecretId()); err != nil {
		return nil, err
	}
	if req.GetVersionId() != "" {
		if err := validateID("version_id", req.GetVersionId()); err != nil {
			return nil, err
		}
	}
	if k := req.GetKey(); k == "" || len(k) > maxEntryKeyChars || !entryKeyPattern.MatchString(k) {
		return nil, invalid("key", "must be 1-%d characters of [A-Za-z0-9_.-]", maxEntryKeyChars)
	}
	return query(ctx, x.s, req, x.s.secretChain(permPayload, req.GetSecretId()), func(v *store.View, _ *caller) (*pb.GetPayloadByKeyResponse, error) {
		rec, err := readableVersion(v, req.GetSecretId(), req.GetVersionId())
		if err != nil {
			return nil, err
		}
		id := rec.GetVersion().GetMetadata().GetId()
		e, err := v.SharedEntry(id, req.GetKey())
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "key %q not in version %s", req.GetKey(), id)
		}
		if err != nil {
			return nil, err
		}
		entries, err := x.s.keyring().Open(req.GetSecretId(), id, rec.GetKekId(), rec.GetWrappedDek(), []*fsmpb.SealedEntry{e})
		if err != nil {
			return nil, err
		}
		return &pb.GetPayloadByKeyResponse{SecretId: req.GetSecretId(), VersionId: id, Entry: entries[0]}, nil
	})
}
