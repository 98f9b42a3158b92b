package fsm

import (
	"errors"

	"google.golang.org/protobuf/proto"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/fsm/fsmpb"
	"github.com/mysterybox/mysterybox/store"
)

func (a *applier) createAccount(op *fsmpb.CreateAccount) (proto.Message, error) {
	acct := proto.Clone(op.GetAccount()).(*pb.Account)
	md := acct.GetMetadata()
	if _, err := a.b.AccountIDByName(md.GetName()); err == nil {
		return nil, errorf(ErrAlreadyExists, "account name %q is taken", md.GetName())
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if _, err := a.b.Account(md.GetId()); err == nil {
		return nil, errorf(ErrAlreadyExists, "account id %s", md.GetId())
	}
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	return acct, a.b.PutAccount(acct)
}

// deleteAccount removes an account with its tokens and bindings, in one
// batch: no token of a deleted account can outlive it.
func (a *applier) deleteAccount(op *fsmpb.DeleteAccount) (proto.Message, error) {
	acct, err := a.b.Account(op.GetId())
	if err != nil {
		return nil, notFoundOr(err, "account", op.GetId())
	}
	if err := checkVersion("account", op.GetId(), op.GetResourceVersion(), acct.GetMetadata().GetResourceVersion()); err != nil {
		return nil, err
	}
	out := &pb.DeleteAccountResponse{}
	tokenIDs, err := a.b.TokenIDsOfAccount(op.GetId(), "", 0)
	if err != nil {
		return nil, err
	}
	for _, id := range tokenIDs {
		t, err := a.b.Token(id)
		if err != nil {
			return nil, err
		}
		if err := a.b.DeleteToken(t); err != nil {
			return nil, err
		}
		out.RevokedTokens++
	}
	bindings, err := a.b.BindingsOfAccount(op.GetId())
	if err != nil {
		return nil, err
	}
	for _, ab := range bindings {
		if err := a.b.DeleteBinding(ab); err != nil {
			return nil, err
		}
		out.RemovedBindings++
	}
	return out, a.b.DeleteAccount(acct)
}

func (a *applier) createToken(op *fsmpb.CreateToken) (proto.Message, error) {
	rec := proto.Clone(op.GetToken()).(*fsmpb.TokenRecord)
	md := rec.GetToken().GetMetadata()
	if _, err := a.b.Account(md.GetParentId()); err != nil {
		return nil, notFoundOr(err, "account", md.GetParentId())
	}
	if _, err := a.b.Token(md.GetId()); err == nil {
		return nil, errorf(ErrAlreadyExists, "token id %s", md.GetId())
	}
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	if err := a.b.PutToken(rec); err != nil {
		return nil, err
	}
	return &fsmpb.CreateTokenResult{Token: rec.GetToken(), SealedSecretKekId: op.GetSealedSecretKekId(), SealedSecret: op.GetSealedSecret()}, nil
}

func (a *applier) revokeToken(op *fsmpb.RevokeToken) (proto.Message, error) {
	t, err := a.b.Token(op.GetId())
	if err != nil {
		return nil, notFoundOr(err, "token", op.GetId())
	}
	return &pb.RevokeTokenResponse{}, a.b.DeleteToken(t)
}

// createBinding grants a role. The account must exist in this region's
// state, which holds only this region's accounts: a cross-region grant
// cannot be expressed. The API has checked that a resource id that is not a
// project or secret id is this region's name.
func (a *applier) createBinding(op *fsmpb.CreateBinding) (proto.Message, error) {
	ab := proto.Clone(op.GetBinding()).(*pb.AccessBinding)
	spec := ab.GetSpec()
	if _, err := a.b.Account(spec.GetAccountId()); err != nil {
		return nil, notFoundOr(err, "account", spec.GetAccountId())
	}
	if err := a.resourceExists(spec.GetResourceId()); err != nil {
		return nil, err
	}
	existing, err := a.b.BindingsOfAccount(spec.GetAccountId())
	if err != nil {
		return nil, err
	}
	for _, e := range existing {
		if e.GetSpec().GetResourceId() == spec.GetResourceId() && e.GetSpec().GetRole() == spec.GetRole() {
			return nil, errorf(ErrAlreadyExists, "account %s already has %s on %s (binding %s)", spec.GetAccountId(), spec.GetRole(), spec.GetResourceId(), e.GetMetadata().GetId())
		}
	}
	md := ab.GetMetadata()
	md.ParentId = spec.GetResourceId()
	md.ResourceVersion, md.CreatedAt, md.UpdatedAt = 1, a.ts(), a.ts()
	return ab, a.b.PutBinding(ab)
}

// ResourceKind tells what a resource id names, by its prefix.
func ResourceKind(id string) string {
	switch {
	case hasPrefix(id, "project-"):
		return "project"
	case hasPrefix(id, "mbsecver-"):
		return "version"
	case hasPrefix(id, "mbsec-"):
		return "secret"
	default:
		return "region"
	}
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

func (a *applier) resourceExists(id string) error {
	switch ResourceKind(id) {
	case "project":
		if _, err := a.b.Project(id); err != nil {
			return notFoundOr(err, "project", id)
		}
	case "secret":
		if _, err := a.liveSecret(id); err != nil {
			return err
		}
	case "version":
		return errorf(ErrInvalidArgument, "roles are granted on the region, a project or a secret, not on version %s", id)
	}
	return nil
}

func (a *applier) deleteBinding(op *fsmpb.DeleteBinding) (proto.Message, error) {
	ab, err := a.b.Binding(op.GetId())
	if err != nil {
		return nil, notFoundOr(err, "access binding", op.GetId())
	}
	return &pb.DeleteAccessBindingResponse{}, a.b.DeleteBinding(ab)
}

// deleteBindingsOn removes every binding on a resource that goes away.
func (a *applier) deleteBindingsOn(resourceID string) error {
	ids, err := a.b.BindingIDsOnResource(resourceID, "", 0)
	if err != nil {
		return err
	}
	for _, id := range ids {
		ab, err := a.b.Binding(id)
		if err != nil {
			return err
		}
		if err := a.b.DeleteBinding(ab); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) bootstrapAdmin(op *fsmpb.BootstrapAdmin) (proto.Message, error) {
	done, err := a.b.Bootstrapped()
	if err != nil {
		return nil, err
	}
	if done {
		return &fsmpb.BootstrapResult{Applied: false}, nil
	}
	acct := proto.Clone(op.GetAccount()).(*pb.Account)
	acct.Metadata.ResourceVersion, acct.Metadata.CreatedAt, acct.Metadata.UpdatedAt = 1, a.ts(), a.ts()
	tok := proto.Clone(op.GetToken()).(*fsmpb.TokenRecord)
	tok.Token.Metadata.ResourceVersion, tok.Token.Metadata.CreatedAt, tok.Token.Metadata.UpdatedAt = 1, a.ts(), a.ts()
	ab := proto.Clone(op.GetBinding()).(*pb.AccessBinding)
	ab.Metadata.ResourceVersion, ab.Metadata.CreatedAt, ab.Metadata.UpdatedAt = 1, a.ts(), a.ts()
	if _, err := a.b.AccountIDByName(acct.GetMetadata().GetName()); err == nil {
		return nil, errorf(ErrAlreadyExists, "account name %q is taken", acct.GetMetadata().GetName())
	}
	for _, put := range []func() error{
		func() error { return a.b.PutAccount(acct) },
		func() error { return a.b.PutToken(tok) },
		func() error { return a.b.PutBinding(ab) },
		func() error { return a.b.SetBootstrapped(op.GetClusterId()) },
	} {
		if err := put(); err != nil {
			return nil, err
		}
	}
	return &fsmpb.BootstrapResult{Applied: true}, nil
}
