package store

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
)

// ---------------------------------------------------------------- accounts

// Account returns the account with id.
func (v *View) Account(id string) (*pb.Account, error) {
	a := &pb.Account{}
	return a, v.getProto(prefixAccount+id, a)
}

// AccountIDByName returns the id of the account called name.
func (v *View) AccountIDByName(name string) (string, error) {
	raw, err := v.get(prefixAccountName + name)
	return string(raw), err
}

// ListAccounts returns up to limit accounts in id order after afterID, and
// whether more follow.
func (v *View) ListAccounts(afterID string, limit int) ([]*pb.Account, bool, error) {
	var out []*pb.Account
	more := false
	err := v.scan(prefixAccount, afterID, false, func(_, val []byte) (bool, error) {
		if len(out) == limit {
			more = true
			return false, nil
		}
		a := &pb.Account{}
		if err := proto.Unmarshal(val, a); err != nil {
			return false, fmt.Errorf("store: corrupt account: %w", err)
		}
		out = append(out, a)
		return true, nil
	})
	return out, more, err
}

// PutAccount writes an account and its name index.
func (b *Batch) PutAccount(a *pb.Account) error {
	if err := b.putProto(prefixAccount+a.GetMetadata().GetId(), a); err != nil {
		return err
	}
	return b.set(prefixAccountName+a.GetMetadata().GetName(), []byte(a.GetMetadata().GetId()))
}

// DeleteAccount removes an account and its name index (not its tokens or
// bindings: the FSM removes those in the same batch).
func (b *Batch) DeleteAccount(a *pb.Account) error {
	if err := b.del(prefixAccount + a.GetMetadata().GetId()); err != nil {
		return err
	}
	return b.del(prefixAccountName + a.GetMetadata().GetName())
}

// ---------------------------------------------------------------- tokens

// Token returns the token record with id.
func (v *View) Token(id string) (*fsmpb.TokenRecord, error) {
	t := &fsmpb.TokenRecord{}
	return t, v.getProto(prefixToken+id, t)
}

// TokenIDsOfAccount returns the ids of an account's tokens, in id order,
// after afterID, up to limit (0: all).
func (v *View) TokenIDsOfAccount(accountID, afterID string, limit int) ([]string, error) {
	return v.childIDs(prefixAcctTokens+accountID+"/", afterID, limit)
}

// PutToken writes a token record and its account index.
func (b *Batch) PutToken(t *fsmpb.TokenRecord) error {
	md := t.GetToken().GetMetadata()
	if err := b.putProto(prefixToken+md.GetId(), t); err != nil {
		return err
	}
	return b.set(prefixAcctTokens+md.GetParentId()+"/"+md.GetId(), nil)
}

// DeleteToken removes a token record and its account index.
func (b *Batch) DeleteToken(t *fsmpb.TokenRecord) error {
	md := t.GetToken().GetMetadata()
	if err := b.del(prefixToken + md.GetId()); err != nil {
		return err
	}
	return b.del(prefixAcctTokens + md.GetParentId() + "/" + md.GetId())
}

// ---------------------------------------------------------------- bindings

// Binding returns the access binding with id.
func (v *View) Binding(id string) (*pb.AccessBinding, error) {
	ab := &pb.AccessBinding{}
	return ab, v.getProto(prefixBinding+id, ab)
}

// BindingIDsOnResource returns the ids of the bindings on a resource.
func (v *View) BindingIDsOnResource(resourceID, afterID string, limit int) ([]string, error) {
	return v.childIDs(prefixResBindings+resourceID+"/", afterID, limit)
}

// BindingsOfAccount returns every binding that grants a role to accountID.
func (v *View) BindingsOfAccount(accountID string) ([]*pb.AccessBinding, error) {
	ids, err := v.childIDs(prefixAcctBindings+accountID+"/", "", 0)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.AccessBinding, 0, len(ids))
	for _, id := range ids {
		ab, err := v.Binding(id)
		if err != nil {
			return nil, fmt.Errorf("store: binding index points at %s: %w", id, err)
		}
		out = append(out, ab)
	}
	return out, nil
}

// PutBinding writes a binding and its two indexes.
func (b *Batch) PutBinding(ab *pb.AccessBinding) error {
	id := ab.GetMetadata().GetId()
	if err := b.putProto(prefixBinding+id, ab); err != nil {
		return err
	}
	if err := b.set(prefixResBindings+ab.GetSpec().GetResourceId()+"/"+id, nil); err != nil {
		return err
	}
	return b.set(prefixAcctBindings+ab.GetSpec().GetAccountId()+"/"+id, nil)
}

// DeleteBinding removes a binding and its indexes.
func (b *Batch) DeleteBinding(ab *pb.AccessBinding) error {
	id := ab.GetMetadata().GetId()
	if err := b.del(prefixBinding + id); err != nil {
		return err
	}
	if err := b.del(prefixResBindings + ab.GetSpec().GetResourceId() + "/" + id); err != nil {
		return err
	}
	return b.del(prefixAcctBindings + ab.GetSpec().GetAccountId() + "/" + id)
}

// childIDs lists the last path element of keys under prefix.
func (v *View) childIDs(prefix, afterID string, limit int) ([]string, error) {
	var ids []string
	err := v.scan(prefix, afterID, false, func(key, _ []byte) (bool, error) {
		if limit > 0 && len(ids) == limit {
			return false, nil
		}
		ids = append(ids, string(key[len(prefix):]))
		return true, nil
	})
	return ids, err
}

// ---------------------------------------------------------------- bootstrap

// Bootstrapped reports whether the region's first admin was created.
func (v *View) Bootstrapped() (bool, error) {
	_, err := v.get(keyBootstrapped)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// SetBootstrapped marks the region's first admin as created and records
// the cluster id.
func (b *Batch) SetBootstrapped(clusterID string) error {
	return b.set(keyBootstrapped, []byte(clusterID))
}

// ClusterID returns the id recorded when the region was bootstrapped.
func (v *View) ClusterID() (string, error) {
	raw, err := v.get(keyBootstrapped)
	if errors.Is(err, ErrNotFound) {
		return "", nil
	}
	return string(raw), err
}
