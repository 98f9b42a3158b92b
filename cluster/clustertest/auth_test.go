package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// identity is an account with a token, as the region admin made it.
type identity struct {
	accountID string
	token     string
}

// newIdentity creates an account, grants it roles and mints a token.
func newIdentity(t *testing.T, c *Cluster, n *Node, name string, ttl time.Duration, grants ...[2]string) identity {
	t.Helper()
	ids := pb.NewIdentityServiceClient(c.Conn(n))
	acct, err := ids.CreateAccount(ctxT(t), &pb.CreateAccountRequest{Account: &pb.Account{Metadata: &pb.Metadata{Name: name}}})
	if err != nil {
		t.Fatalf("create account %s: %v", name, err)
	}
	for _, g := range grants { // {resource, role}
		if _, err := ids.CreateAccessBinding(ctxT(t), &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{
			Spec: &pb.AccessBindingSpec{ResourceId: g[0], AccountId: acct.GetMetadata().GetId(), Role: g[1]},
		}}); err != nil {
			t.Fatalf("grant %v to %s: %v", g, name, err)
		}
	}
	req := &pb.CreateTokenRequest{AccountId: acct.GetMetadata().GetId()}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	tok, err := ids.CreateToken(ctxT(t), req)
	if err != nil {
		t.Fatalf("token for %s: %v", name, err)
	}
	return identity{accountID: acct.GetMetadata().GetId(), token: tok.GetSecret()}
}

func denied(err error) bool {
	c := status.Code(err)
	return c == codes.PermissionDenied || c == codes.Unauthenticated
}

// TestAuthorizationMatrix runs every RPC as every kind of caller against a
// real server and compares allow/deny with one table. "Allowed" means the
// call got past authorization: calls that would destroy the fixture carry a
// stale resource_version, so an allowed one fails ABORTED instead.
func TestAuthorizationMatrix(t *testing.T) {
	c := New(t, Options{Nodes: 1})
	n := c.WaitLeader()
	region := c.Region
	ctx := ctxT(t)
	ids := pb.NewIdentityServiceClient(c.Conn(n))
	mkProject := func(name string) string {
		p, err := ids.CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: name}}})
		if err != nil {
			t.Fatal(err)
		}
		return p.GetMetadata().GetId()
	}
	mkSecret := func(project, name string) (string, string) {
		s, err := pb.NewSecretServiceClient(c.Conn(n)).Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{
			Metadata: &pb.Metadata{ParentId: project, Name: name},
			Spec:     &pb.SecretSpec{SecretVersion: &pb.SecretVersionSpec{Payload: payload("k", "v")}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return s.GetMetadata().GetId(), s.GetStatus().GetPrimaryVersionId()
	}
	P, Q := mkProject("p"), mkProject("q")
	S, V := mkSecret(P, "s")
	T, _ := mkSecret(Q, "t")
	dummy := newIdentity(t, c, n, "dummy", 0, [2]string{P, "mysterybox.viewer"})
	dummyTokens, err := ids.ListTokens(ctx, &pb.ListTokensRequest{AccountId: dummy.accountID})
	if err != nil {
		t.Fatal(err)
	}
	bindingOnP, err := ids.ListAccessBindings(ctx, &pb.ListAccessBindingsRequest{ResourceId: P})
	if err != nil || len(bindingOnP.GetBindings()) != 1 {
		t.Fatalf("bindings on P: %v %v", bindingOnP, err)
	}
	bP := bindingOnP.GetBindings()[0].GetMetadata().GetId()

	callers := map[string]identity{
		"none":            newIdentity(t, c, n, "none", 0),
		"viewer@P":        newIdentity(t, c, n, "viewer-p", 0, [2]string{P, "mysterybox.viewer"}),
		"payload@P":       newIdentity(t, c, n, "payload-p", 0, [2]string{P, "mysterybox.payload-viewer"}),
		"editor@P":        newIdentity(t, c, n, "editor-p", 0, [2]string{P, "mysterybox.editor"}),
		"admin@P":         newIdentity(t, c, n, "admin-p", 0, [2]string{P, "mysterybox.admin"}),
		"viewer@S":        newIdentity(t, c, n, "viewer-s", 0, [2]string{S, "mysterybox.viewer"}),
		"payload@S":       newIdentity(t, c, n, "payload-s", 0, [2]string{S, "mysterybox.payload-viewer"}),
		"editor@S":        newIdentity(t, c, n, "editor-s", 0, [2]string{S, "mysterybox.editor"}),
		"admin@S":         newIdentity(t, c, n, "admin-s", 0, [2]string{S, "mysterybox.admin"}),
		"region-admin":    newIdentity(t, c, n, "region-admin", 0, [2]string{region, "admin"}),
		"unauthenticated": {},
	}
	var (
		auth      = []string{"none", "viewer@P", "payload@P", "editor@P", "admin@P", "viewer@S", "payload@S", "editor@S", "admin@S", "region-admin"}
		viewS     = []string{"viewer@P", "payload@P", "editor@P", "admin@P", "viewer@S", "payload@S", "editor@S", "admin@S", "region-admin"}
		viewP     = []string{"viewer@P", "payload@P", "editor@P", "admin@P", "region-admin"}
		payloadS  = []string{"payload@P", "admin@P", "payload@S", "admin@S", "region-admin"}
		writeS    = []string{"editor@P", "admin@P", "editor@S", "admin@S", "region-admin"}
		writeP    = []string{"editor@P", "admin@P", "region-admin"}
		bindP     = []string{"admin@P", "region-admin"}
		bindS     = []string{"admin@P", "admin@S", "region-admin"}
		regionOps = []string{"region-admin"}
	)
	type call func(ctx context.Context, conn *grpc.ClientConn, i int) error
	rows := []struct {
		rpc     string
		allowed []string
		call    call
	}{
		{"SecretService.Create", writeP, func(ctx context.Context, cc *grpc.ClientConn, i int) error {
			_, err := pb.NewSecretServiceClient(cc).Create(ctx, &pb.CreateSecretRequest{Secret: &pb.Secret{Metadata: &pb.Metadata{ParentId: P, Name: fmt.Sprintf("new-%d", i)}}})
			return err
		}},
		{"SecretService.Get", viewS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).Get(ctx, &pb.GetSecretRequest{Id: S})
			return err
		}},
		{"SecretService.Get (other project)", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).Get(ctx, &pb.GetSecretRequest{Id: T})
			return err
		}},
		{"SecretService.GetByName", viewP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).GetByName(ctx, &pb.GetSecretByNameRequest{ParentId: P, Name: "s"})
			return err
		}},
		{"SecretService.List", viewP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).List(ctx, &pb.ListSecretsRequest{ParentId: P})
			return err
		}},
		{"SecretService.Update", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).Update(ctx, &pb.UpdateSecretRequest{
				Secret:     &pb.Secret{Metadata: &pb.Metadata{Id: S, ResourceVersion: 1 << 40}, Spec: &pb.SecretSpec{Description: "x"}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.description"}},
			})
			return err
		}},
		{"SecretService.Delete", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).Delete(ctx, &pb.DeleteSecretRequest{Id: S, ResourceVersion: 1 << 40})
			return err
		}},
		{"SecretService.Undelete", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretServiceClient(cc).Undelete(ctx, &pb.UndeleteSecretRequest{Id: S})
			return err
		}},
		{"SecretVersionService.Create", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretVersionServiceClient(cc).Create(ctx, &pb.CreateSecretVersionRequest{Version: &pb.SecretVersion{
				Metadata: &pb.Metadata{ParentId: S}, Spec: &pb.SecretVersionSpec{Payload: payload("k", "v2")}}})
			return err
		}},
		{"SecretVersionService.Get", viewS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretVersionServiceClient(cc).Get(ctx, &pb.GetSecretVersionRequest{Id: V})
			return err
		}},
		{"SecretVersionService.List", viewS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretVersionServiceClient(cc).List(ctx, &pb.ListSecretVersionsRequest{ParentId: S})
			return err
		}},
		{"SecretVersionService.Delete", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretVersionServiceClient(cc).Delete(ctx, &pb.DeleteSecretVersionRequest{Id: V, ResourceVersion: 1 << 40})
			return err
		}},
		{"SecretVersionService.Undelete", writeS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewSecretVersionServiceClient(cc).Undelete(ctx, &pb.UndeleteSecretVersionRequest{Id: V})
			return err
		}},
		{"PayloadService.Get", payloadS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewPayloadServiceClient(cc).Get(ctx, &pb.GetPayloadRequest{SecretId: S})
			return err
		}},
		{"PayloadService.GetByKey", payloadS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewPayloadServiceClient(cc).GetByKey(ctx, &pb.GetPayloadByKeyRequest{SecretId: S, Key: "k"})
			return err
		}},
		{"PayloadService.Get (other project)", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewPayloadServiceClient(cc).Get(ctx, &pb.GetPayloadRequest{SecretId: T})
			return err
		}},
		{"IdentityService.CreateProject", regionOps, func(ctx context.Context, cc *grpc.ClientConn, i int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateProject(ctx, &pb.CreateProjectRequest{Project: &pb.Project{Metadata: &pb.Metadata{Name: fmt.Sprintf("proj-%d", i)}}})
			return err
		}},
		{"IdentityService.GetProject", viewP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).GetProject(ctx, &pb.GetProjectRequest{Id: P})
			return err
		}},
		{"IdentityService.ListProjects", auth, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).ListProjects(ctx, &pb.ListProjectsRequest{})
			return err
		}},
		{"IdentityService.DeleteProject", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).DeleteProject(ctx, &pb.DeleteProjectRequest{Id: P, ResourceVersion: 1 << 40})
			return err
		}},
		{"IdentityService.CreateAccount", regionOps, func(ctx context.Context, cc *grpc.ClientConn, i int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateAccount(ctx, &pb.CreateAccountRequest{Account: &pb.Account{Metadata: &pb.Metadata{Name: fmt.Sprintf("acct-%d", i)}}})
			return err
		}},
		{"IdentityService.GetAccount", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).GetAccount(ctx, &pb.GetAccountRequest{Id: dummy.accountID})
			return err
		}},
		{"IdentityService.ListAccounts", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).ListAccounts(ctx, &pb.ListAccountsRequest{})
			return err
		}},
		{"IdentityService.DeleteAccount", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).DeleteAccount(ctx, &pb.DeleteAccountRequest{Id: dummy.accountID, ResourceVersion: 1 << 40})
			return err
		}},
		{"IdentityService.CreateToken", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateToken(ctx, &pb.CreateTokenRequest{AccountId: dummy.accountID})
			return err
		}},
		{"IdentityService.GetToken", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).GetToken(ctx, &pb.GetTokenRequest{Id: dummyTokens.GetTokens()[0].GetMetadata().GetId()})
			return err
		}},
		{"IdentityService.ListTokens", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).ListTokens(ctx, &pb.ListTokensRequest{AccountId: dummy.accountID})
			return err
		}},
		{"IdentityService.RevokeToken", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).RevokeToken(ctx, &pb.RevokeTokenRequest{Id: "token-doesnotexist"})
			return err
		}},
		{"IdentityService.DeleteToken", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).DeleteToken(ctx, &pb.DeleteTokenRequest{Id: "token-doesnotexist"})
			return err
		}},
		{"IdentityService.CreateAccessBinding on P", bindP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateAccessBinding(ctx, &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{Spec: &pb.AccessBindingSpec{ResourceId: P, AccountId: dummy.accountID, Role: "mysterybox.editor"}}})
			return err
		}},
		{"IdentityService.CreateAccessBinding on S", bindS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateAccessBinding(ctx, &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{Spec: &pb.AccessBindingSpec{ResourceId: S, AccountId: dummy.accountID, Role: "mysterybox.viewer"}}})
			return err
		}},
		{"IdentityService.CreateAccessBinding admin on region", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).CreateAccessBinding(ctx, &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{Spec: &pb.AccessBindingSpec{ResourceId: region, AccountId: dummy.accountID, Role: "admin"}}})
			return err
		}},
		{"IdentityService.GetAccessBinding", bindP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).GetAccessBinding(ctx, &pb.GetAccessBindingRequest{Id: bP})
			return err
		}},
		{"IdentityService.ListAccessBindings on P", bindP, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).ListAccessBindings(ctx, &pb.ListAccessBindingsRequest{ResourceId: P})
			return err
		}},
		{"IdentityService.ListAccessBindings on S", bindS, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).ListAccessBindings(ctx, &pb.ListAccessBindingsRequest{ResourceId: S})
			return err
		}},
		{"IdentityService.DeleteAccessBinding (missing)", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewIdentityServiceClient(cc).DeleteAccessBinding(ctx, &pb.DeleteAccessBindingRequest{Id: "accessbinding-missing"})
			return err
		}},
		// Any account finds the nodes and the leader (a client fails over
		// with what it learns); Raft details are for region admins (below).
		{"ClusterService.Status", auth, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewClusterServiceClient(cc).Status(ctx, &pb.ClusterStatusRequest{})
			return err
		}},
		{"ClusterService.Members", auth, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewClusterServiceClient(cc).Members(ctx, &pb.ListMembersRequest{})
			return err
		}},
		{"ClusterService.RemoveNode", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewClusterServiceClient(cc).RemoveNode(ctx, &pb.RemoveNodeRequest{NodeId: "no-such-node"})
			return err
		}},
		{"ClusterService.TransferLeadership", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewClusterServiceClient(cc).TransferLeadership(ctx, &pb.TransferLeadershipRequest{NodeId: "no-such-node"})
			return err
		}},
		{"AdminService.Rewrap", regionOps, func(ctx context.Context, cc *grpc.ClientConn, _ int) error {
			_, err := pb.NewAdminServiceClient(cc).Rewrap(ctx, &pb.RewrapRequest{})
			return err
		}},
	}
	i, allowedCount, deniedCount := 0, 0, 0
	for name, who := range callers {
		conn := c.Dial(n, who.token)
		for _, row := range rows {
			i++
			want := false
			for _, a := range row.allowed {
				want = want || a == name
			}
			err := row.call(ctxT(t), conn, i)
			if want {
				allowedCount++
			} else {
				deniedCount++
			}
			if got := !denied(err); got != want {
				t.Errorf("%s as %s: allowed=%v (err %v), want allowed=%v", row.rpc, name, got, err, want)
			}
			if name == "unauthenticated" && status.Code(err) != codes.Unauthenticated {
				t.Errorf("%s without a token: %v, want UNAUTHENTICATED", row.rpc, err)
			}
		}
	}
	t.Logf("%d calls expected allowed, %d denied", allowedCount, deniedCount)
	// Status and Members: the nodes and the leader for any account, the
	// Raft details for region admins only.
	for _, who := range []string{"none", "region-admin"} {
		cl := pb.NewClusterServiceClient(c.Dial(n, callers[who].token))
		st, err := cl.Status(ctxT(t), &pb.ClusterStatusRequest{})
		if err != nil || st.GetLeaderId() == "" || st.GetLeaderGrpcAddress() == "" {
			t.Fatalf("status as %s: %v %v, want the leader", who, st, err)
		}
		ms, err := cl.Members(ctxT(t), &pb.ListMembersRequest{})
		if err != nil || len(ms.GetMembers()) != 1 || ms.GetMembers()[0].GetGrpcAddress() == "" || ms.GetMembers()[0].GetRaftRole() != "leader" {
			t.Fatalf("members as %s: %v %v, want the node's gRPC address and role", who, ms, err)
		}
		details := st.GetTerm() != 0 && st.GetAppliedIndex() != 0 && ms.GetMembers()[0].GetRaftAddress() != "" && ms.GetMembers()[0].GetAppliedIndex() != 0
		if details != (who == "region-admin") {
			t.Errorf("as %s: Raft details shown = %v (status %v, members %v)", who, details, st, ms)
		}
	}
	// ListProjects shows only what the caller may view.
	got, err := pb.NewIdentityServiceClient(c.Dial(n, callers["viewer@P"].token)).ListProjects(ctxT(t), &pb.ListProjectsRequest{})
	if err != nil || len(got.GetProjects()) != 1 || got.GetProjects()[0].GetMetadata().GetId() != P {
		t.Errorf("viewer@P lists %v (%v), want only %s", got.GetProjects(), err, P)
	}
}

func TestTokenOfAnotherRegionIsRefusedEverywhere(t *testing.T) {
	a := New(t, Options{Nodes: 1, Region: "eu-north1"})
	b := New(t, Options{Nodes: 3, Region: "us-central1"})
	// a's admin token, presented to b's leader and to a follower (which
	// forwards writes and linearizable reads to the leader): the same
	// account name, roles and all, but of another region.
	for _, nb := range []*Node{b.WaitLeader(), b.Followers()[0]} {
		refusedEverywhere(t, b.Dial(nb, a.AdminToken), nb.ID)
	}
}

func refusedEverywhere(t *testing.T, conn *grpc.ClientConn, node string) {
	t.Helper()
	ctx := ctxT(t)
	methods := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("mysterybox.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			svc := fd.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				in, _ := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
				out, _ := protoregistry.GlobalTypes.FindMessageByName(m.Output().FullName())
				full := fmt.Sprintf("/%s/%s", svc.FullName(), m.Name())
				err := conn.Invoke(ctx, full, in.New().Interface(), out.New().Interface())
				methods++
				if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "eu-north1") || !strings.Contains(err.Error(), "us-central1") {
					t.Errorf("%s with a token of eu-north1 on us-central1 (%s): %v, want PERMISSION_DENIED naming both regions", full, node, err)
				}
			}
		}
		return true
	})
	if methods < 30 {
		t.Fatalf("only %d methods checked", methods)
	}
	// Health needs no token, from anyone.
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
}

func TestRevocationExpiryAndAccountDeletion(t *testing.T) {
	logs := &syncBuffer{}
	c := New(t, Options{Nodes: 3, LogLevel: hclog.Debug, LogSink: logs})
	leader := c.WaitLeader()
	projectID, secret := setup(t, c, leader)
	f := c.Followers()
	ci := newIdentity(t, c, f[0], "ci", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	short := newIdentity(t, c, f[0], "short", 1500*time.Millisecond, [2]string{projectID, "mysterybox.viewer"})
	read := func(n *Node, tok string) error {
		_, err := pb.NewPayloadServiceClient(c.Dial(n, tok)).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: secret.GetMetadata().GetId(), Key: "password"})
		return err
	}
	for _, n := range c.Running() {
		if err := read(n, ci.token); err != nil {
			t.Fatalf("ci reads via %s: %v", n.ID, err)
		}
	}
	// Expiry: the short token works, then stops working by itself.
	if _, err := pb.NewSecretServiceClient(c.Dial(f[1], short.token)).Get(ctxT(t), &pb.GetSecretRequest{Id: secret.GetMetadata().GetId()}); err != nil {
		t.Fatalf("short-lived token before expiry: %v", err)
	}
	Eventually(t, 10*time.Second, "the token to expire", func() error {
		_, err := pb.NewSecretServiceClient(c.Dial(f[1], short.token)).Get(ctxT(t), &pb.GetSecretRequest{Id: secret.GetMetadata().GetId()})
		if status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "expired") {
			return nil
		}
		return fmt.Errorf("still %v", err)
	})

	// Revocation through one node is seen at once through every other.
	parts := strings.Split(ci.token, ".")
	if _, err := pb.NewIdentityServiceClient(c.Conn(f[0])).RevokeToken(ctxT(t), &pb.RevokeTokenRequest{Id: parts[2]}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Running() {
		if err := read(n, ci.token); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("revoked token via %s right after the revoke: %v, want UNAUTHENTICATED", n.ID, err)
		}
	}

	// DeleteToken (SPEC's name: Create/Get/List/Delete each) revokes too.
	other := newIdentity(t, c, leader, "ci-2", 0, [2]string{projectID, "mysterybox.payload-viewer"})
	if err := read(f[1], other.token); err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewIdentityServiceClient(c.Conn(f[1])).DeleteToken(ctxT(t), &pb.DeleteTokenRequest{Id: strings.Split(other.token, ".")[2]}); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Running() {
		if err := read(n, other.token); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("deleted token via %s right after the delete: %v, want UNAUTHENTICATED", n.ID, err)
		}
	}
	if _, err := pb.NewIdentityServiceClient(c.Conn(f[1])).DeleteToken(ctxT(t), &pb.DeleteTokenRequest{Id: strings.Split(other.token, ".")[2]}); status.Code(err) != codes.NotFound {
		t.Fatalf("deleting it again: %v, want NOT_FOUND", err)
	}

	// Deleting an account revokes its tokens and removes its bindings.
	ops := newIdentity(t, c, leader, "ops", 0, [2]string{projectID, "mysterybox.editor"}, [2]string{secret.GetMetadata().GetId(), "mysterybox.payload-viewer"})
	if err := read(f[1], ops.token); err != nil {
		t.Fatal(err)
	}
	del, err := pb.NewIdentityServiceClient(c.Conn(f[1])).DeleteAccount(ctxT(t), &pb.DeleteAccountRequest{Id: ops.accountID})
	if err != nil || del.GetRevokedTokens() != 1 || del.GetRemovedBindings() != 2 {
		t.Fatalf("delete account: %v %v, want 1 token and 2 bindings removed", del, err)
	}
	if err := read(f[0], ops.token); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("token of a deleted account: %v", err)
	}
	for _, res := range []string{projectID, secret.GetMetadata().GetId()} {
		bs, err := pb.NewIdentityServiceClient(c.Conn(leader)).ListAccessBindings(ctxT(t), &pb.ListAccessBindingsRequest{ResourceId: res})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs.GetBindings() {
			if b.GetSpec().GetAccountId() == ops.accountID {
				t.Fatalf("binding %s of the deleted account survived", b.GetMetadata().GetId())
			}
		}
	}
	// A binding for an account that does not exist (or of another region)
	// cannot be created.
	_, err = pb.NewIdentityServiceClient(c.Conn(leader)).CreateAccessBinding(ctxT(t), &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{
		Spec: &pb.AccessBindingSpec{ResourceId: projectID, AccountId: ops.accountID, Role: "mysterybox.viewer"}}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("binding for a deleted account: %v, want NOT_FOUND", err)
	}
	_, err = pb.NewIdentityServiceClient(c.Conn(leader)).CreateAccessBinding(ctxT(t), &pb.CreateAccessBindingRequest{Binding: &pb.AccessBinding{
		Spec: &pb.AccessBindingSpec{ResourceId: "us-central1", AccountId: ci.accountID, Role: "admin"}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("binding on another region: %v, want INVALID_ARGUMENT", err)
	}

	// No token secret ever reaches the logs, though every refusal above
	// was logged.
	logData := logs.Bytes()
	if !bytes.Contains(logData, []byte("call refused")) {
		t.Fatal("refused calls were not logged")
	}
	for _, tok := range []string{ci.token, short.token, ops.token, c.AdminToken} {
		secretPart := tok[strings.LastIndex(tok, ".")+1:]
		if bytes.Contains(logData, []byte(secretPart)) {
			t.Errorf("a token secret appears in the logs")
		}
	}
}
