package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/region"
	"github.com/mysterybox/mysterybox/store"
)

// keyring returns the keyring in force.
func (s *Server) keyring() *region.Keyring { return s.keys.Load() }

// SetKeyring installs a (re)loaded keyring after checking that it can open
// everything the store holds: every key id in use must be present, and be
// the same key that wrapped the data. On failure the old keyring stays.
func (s *Server) SetKeyring(kr *region.Keyring) error {
	if kr == nil {
		return errors.New("server: a keyring is required")
	}
	if err := CheckKeyring(s.store, kr); err != nil {
		return err
	}
	s.keys.Store(kr)
	s.logger.Info("keyring loaded", "active_key_id", kr.ActiveKeyID(), "key_ids", kr.KeyIDs())
	return nil
}

// CheckKeyring verifies that kr can open every payload in st.
func CheckKeyring(st *store.Store, kr *region.Keyring) error {
	return st.Read(func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		var missing []string
		for _, id := range ids {
			if !kr.Has(id) {
				missing = append(missing, id)
				continue
			}
			check, err := v.KeyCheck(id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if err := kr.VerifyKeyCheck(id, check); err != nil {
				return fmt.Errorf("keyring cannot open this node's data: %w", err)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("keyring cannot open this node's data: %w: missing key id(s) %v (the keyring holds %v); add them back to --master-key-file", region.ErrUnknownKey, missing, kr.KeyIDs())
		}
		return nil
	})
}

// fingerprint returns the HMAC under keyID that identifies req under an
// idempotency key. propose starts with the active key; a
// retry whose first call used another key is told so by the FSM
// (fsm.HashKeyMismatch) and hashed again with that key, so a rotation
// between the two does not turn it into a mismatch.
func (s *Server) fingerprint(ctx context.Context, keyID string, req proto.Message) ([]byte, error) {
	return s.keyring().RequestMAC(keyID, requestBytes(ctx, req))
}

type adminService struct {
	pb.UnimplementedAdminServiceServer
	s *Server
}

const defaultRewrapBatch, maxRewrapBatch = 100, 1000

// Rewrap re-wraps one batch of data keys under the active key.
func (x *adminService) Rewrap(ctx context.Context, req *pb.RewrapRequest) (*pb.RewrapResponse, error) {
	batch := int(req.GetBatchSize())
	if batch == 0 {
		batch = defaultRewrapBatch
	}
	if batch < 0 || batch > maxRewrapBatch {
		return nil, invalid("batch_size", "must be 1-%d, got %d", maxRewrapBatch, batch)
	}
	s := x.s
	if !s.raft.AcceptsWrites() {
		out := &pb.RewrapResponse{}
		if err := s.fwd.forward(ctx, req, out); err != nil {
			return nil, err
		}
		return out, nil
	}
	g, err := s.leaderCheck(ctx, s.regionChain())
	if err != nil {
		return nil, err
	}
	// Refuse up front, even with nothing to rewrap, while some node
	// cannot apply the command.
	if err := s.checkVersions(&fsmpb.Command{Op: &fsmpb.Command_RewrapVersions{RewrapVersions: &fsmpb.RewrapVersions{}}}); err != nil {
		return nil, err
	}
	kr := s.keyring()
	op := &fsmpb.RewrapVersions{}
	err = s.store.Read(func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		for _, kek := range ids {
			if kek == kr.ActiveKeyID() {
				continue
			}
			vids, _, err := v.VersionsWrappedBy(kek, batch-len(op.Items))
			if err != nil {
				return err
			}
			for _, vid := range vids {
				rec, err := v.Version(vid)
				if err != nil {
					return err
				}
				to, wrapped, err := kr.Rewrap(rec.GetVersion().GetMetadata().GetParentId(), vid, kek, rec.GetWrappedDek())
				if err != nil {
					return err
				}
				check, err := kr.KeyCheck(to)
				if err != nil {
					return err
				}
				op.Items = append(op.Items, &fsmpb.Rewrap{VersionId: vid, FromKekId: kek, ToKekId: to, WrappedDek: wrapped, ToKekCheck: check})
			}
			if len(op.Items) >= batch {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.RewrapResponse{ActiveKeyId: kr.ActiveKeyID()}
	if len(op.Items) > 0 {
		resp, err := s.propose(ctx, req, &fsmpb.Command{Op: &fsmpb.Command_RewrapVersions{RewrapVersions: op}}, g)
		if err != nil {
			return nil, err
		}
		if r, ok := resp.(*fsmpb.RewrapResult); ok {
			out.Rewrapped = r.GetRewrapped()
		}
	}
	err = s.store.Read(func(v *store.View) error {
		ids, err := v.KeyIDsInUse()
		if err != nil {
			return err
		}
		out.KeysInUse = ids
		for _, kek := range ids {
			if kek == kr.ActiveKeyID() {
				continue
			}
			_, n, err := v.VersionsWrappedBy(kek, 0)
			if err != nil {
				return err
			}
			out.Remaining += int64(n)
		}
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	if out.Rewrapped > 0 {
		s.logger.Info("re-wrapped data keys", "count", out.Rewrapped, "remaining", out.Remaining, "active_key_id", out.ActiveKeyId)
	}
	return out, nil
}
