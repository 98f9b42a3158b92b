package main

// Accounts, tokens, access bindings and admin rewrap against a real
// `mysteryboxd --dev` (see cli_test.go), which writes <data-dir>/admin.token
// and enforces authentication: the other tests run with that admin token.

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

// bearerRE is the shape of a bearer token of the dev region (SPEC 3).
var bearerRE = regexp.MustCompile(`^mbt1\.local1\.(token-[^.\s]+)\.[^.\s]+\n$`)

func mkAccount(t *testing.T, extra ...string) *mbv1.Account {
	t.Helper()
	acc := &mbv1.Account{}
	okJSON(t, acc, append([]string{"account", "create", "--name", uniq("acct")}, extra...)...)
	if !strings.HasPrefix(acc.GetMetadata().GetId(), "serviceaccount-") && !strings.HasPrefix(acc.GetMetadata().GetId(), "useraccount-") {
		t.Fatalf("account id %q lacks the serviceaccount-/useraccount- prefix", acc.GetMetadata().GetId())
	}
	return acc
}

// mkToken runs `token create` in text mode, as a script would, and returns
// the bearer string (stdout without its newline) and the token id.
func mkToken(t *testing.T, account string, extra ...string) (bearer, id string) {
	t.Helper()
	args := append([]string{"token", "create", "--account-id", account}, extra...)
	r := mb(t, args...)
	if r.code != 0 {
		t.Fatalf("mbox %q: %v", args, r)
	}
	m := bearerRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("token create stdout should be exactly the bearer token and a newline: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "shown only once") || strings.Contains(r.stderr, strings.TrimSpace(r.stdout)) {
		t.Errorf("token create stderr note: %q", r.stderr)
	}
	return strings.TrimSuffix(r.stdout, "\n"), m[1]
}

// asToken runs mbox against the dev server with tok instead of the admin token.
func asToken(t *testing.T, tok string, args ...string) result {
	t.Helper()
	env := []string{"MYSTERYBOX_ENDPOINTS=" + needServer(t).addr}
	if tok != "" {
		env = append(env, "MYSTERYBOX_TOKEN="+tok)
	}
	return execMbox(t, env, nil, args...)
}

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-time.After(100 * time.Millisecond)
	}
}

func TestIdentityAccountCommands(t *testing.T) {
	name := uniq("ci")
	acc := mkAccount(t, "--description", "deploys billing")
	id := acc.GetMetadata().GetId()
	if acc.GetSpec().GetType() != mbv1.AccountType_SERVICE || acc.GetSpec().GetDescription() != "deploys billing" || !strings.HasPrefix(id, "serviceaccount-") {
		t.Errorf("created %v", acc)
	}
	user := &mbv1.Account{}
	okJSON(t, user, "account", "create", "--name", name, "--type", "user")
	if user.GetSpec().GetType() != mbv1.AccountType_USER || !strings.HasPrefix(user.GetMetadata().GetId(), "useraccount-") || user.GetMetadata().GetName() != name {
		t.Errorf("created user account %v", user)
	}

	out := ok(t, "account", "get", id)
	if !strings.HasPrefix(out, "id:") || !strings.Contains(out, id) || !strings.Contains(out, "SERVICE") {
		t.Errorf("account get text:\n%s", out)
	}
	got := &mbv1.Account{}
	okJSON(t, got, "account", "get", id)
	if got.GetMetadata().GetId() != id || got.GetStatus().GetRegion() != "local1" {
		t.Errorf("account get json = %v", got)
	}
	lst := &mbv1.ListAccountsResponse{}
	okJSON(t, lst, "account", "list")
	seen := map[string]bool{}
	for _, a := range lst.GetAccounts() {
		seen[a.GetMetadata().GetId()] = true
	}
	if !seen[id] || !seen[user.GetMetadata().GetId()] {
		t.Errorf("account list lacks %s or %s: %v", id, user.GetMetadata().GetId(), lst)
	}
	if out := ok(t, "account", "list"); !strings.HasPrefix(out, "ID ") || !strings.Contains(out, id) {
		t.Errorf("account list text:\n%s", out)
	}

	fail(t, 2, "USAGE", "account", "create", "--name", uniq("x"), "--type", "robot")
	fail(t, 3, "NOT_FOUND", "account", "get", "serviceaccount-doesnotexist")

	// Delete reports what went with the account.
	mkToken(t, id)
	proj := mkProject(t)
	ok(t, "access-binding", "create", "--resource-id", proj, "--account-id", id, "--role", "mysterybox.viewer")
	r := mb(t, "account", "delete", id)
	if r.code != 0 || r.stdout != "deleted account "+id+": revoked 1 token, removed 1 access binding\n" {
		t.Errorf("account delete: %v", r)
	}
	fail(t, 3, "NOT_FOUND", "account", "get", id)
	del := &mbv1.DeleteAccountResponse{}
	okJSON(t, del, "account", "delete", user.GetMetadata().GetId())
	if del.GetRevokedTokens() != 0 || del.GetRemovedBindings() != 0 {
		t.Errorf("deleting an account without tokens or bindings: %v", del)
	}
	fail(t, 3, "NOT_FOUND", "account", "delete", user.GetMetadata().GetId())
}

func TestIdentityTokenCommands(t *testing.T) {
	acc := mkAccount(t).GetMetadata().GetId()
	before := time.Now()
	bearer, tid := mkToken(t, acc, "--ttl", "30d", "--description", "ci")
	secretPart := bearer[strings.LastIndex(bearer, ".")+1:]

	tok := &mbv1.Token{}
	okJSON(t, tok, "token", "get", tid)
	if tok.GetMetadata().GetId() != tid || tok.GetMetadata().GetParentId() != acc || tok.GetSpec().GetDescription() != "ci" {
		t.Errorf("token get = %v", tok)
	}
	if exp := tok.GetSpec().GetExpiresAt().AsTime(); exp.Before(before.Add(30*24*time.Hour-time.Minute)) || exp.After(time.Now().Add(30*24*time.Hour+time.Minute)) {
		t.Errorf("--ttl 30d: expires_at %v, want about %v", exp, before.Add(30*24*time.Hour))
	}
	_, forever := mkToken(t, acc)
	okJSON(t, tok, "token", "get", forever)
	if tok.GetSpec().GetExpiresAt() != nil {
		t.Errorf("token without --ttl expires at %v", tok.GetSpec().GetExpiresAt())
	}
	if out := ok(t, "token", "get", forever); !strings.Contains(out, "expires_at:       never\n") {
		t.Errorf("token get text:\n%s", out)
	}

	// json: the whole response, bearer string in "secret", shown once.
	resp := &mbv1.CreateTokenResponse{}
	okJSON(t, resp, "token", "create", "--account-id", acc)
	if !bearerRE.MatchString(resp.GetSecret()+"\n") || !strings.Contains(resp.GetSecret(), resp.GetToken().GetMetadata().GetId()) {
		t.Errorf("token create json = %v", resp)
	}

	lst := &mbv1.ListTokensResponse{}
	okJSON(t, lst, "token", "list", "--account-id", acc)
	if len(lst.GetTokens()) != 3 {
		t.Errorf("token list = %d tokens, want 3", len(lst.GetTokens()))
	}
	out := ok(t, "token", "list", "--account-id", acc)
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, tid) || !strings.Contains(out, forever) {
		t.Errorf("token list text:\n%s", out)
	}
	// The secret part is shown by create only.
	for _, args := range [][]string{{"token", "list", "--account-id", acc}, {"-o", "json", "token", "list", "--account-id", acc},
		{"-o", "yaml", "token", "get", tid}, {"token", "get", tid}} {
		if r := mb(t, args...); strings.Contains(r.stdout+r.stderr, secretPart) {
			t.Errorf("%q printed the token's secret part", args)
		}
	}

	ok(t, "token", "revoke", forever)
	okJSON(t, lst, "token", "list", "--account-id", acc)
	for _, tk := range lst.GetTokens() {
		if tk.GetMetadata().GetId() == forever {
			t.Errorf("revoked token %s still listed", forever)
		}
	}
	fail(t, 3, "NOT_FOUND", "token", "get", "token-doesnotexist")
	fail(t, 2, "USAGE", "token", "create", "--account-id", acc, "--ttl", "soon")
	fail(t, 3, "NOT_FOUND", "token", "create", "--account-id", "serviceaccount-doesnotexist")
}

func TestIdentityBindingCommands(t *testing.T) {
	acc := mkAccount(t).GetMetadata().GetId()
	proj := mkProject(t)
	b := &mbv1.AccessBinding{}
	okJSON(t, b, "access-binding", "create", "--resource-id", proj, "--account-id", acc, "--role", "mysterybox.editor")
	bid := b.GetMetadata().GetId()
	if !strings.HasPrefix(bid, "accessbinding-") || b.GetSpec().GetResourceId() != proj || b.GetSpec().GetAccountId() != acc || b.GetSpec().GetRole() != "mysterybox.editor" {
		t.Errorf("created binding %v", b)
	}
	out := ok(t, "access-binding", "get", bid)
	if !strings.HasPrefix(out, "id:") || !strings.Contains(out, "mysterybox.editor") {
		t.Errorf("access-binding get text:\n%s", out)
	}
	lst := &mbv1.ListAccessBindingsResponse{}
	okJSON(t, lst, "access-binding", "list", "--resource-id", proj)
	if len(lst.GetBindings()) != 1 || lst.GetBindings()[0].GetMetadata().GetId() != bid {
		t.Errorf("access-binding list = %v", lst)
	}
	if out := ok(t, "access-binding", "list", "--resource-id", proj); !strings.HasPrefix(out, "ID ") || !strings.Contains(out, bid) {
		t.Errorf("access-binding list text:\n%s", out)
	}
	r := fail(t, 2, "USAGE", "access-binding", "create", "--resource-id", proj, "--account-id", acc, "--role", "owner")
	if !strings.Contains(r.stderr, "mysterybox.payload-viewer") {
		t.Errorf("unknown role error does not list the roles: %q", r.stderr)
	}
	if out := ok(t, "access-binding", "delete", bid); out != "deleted access binding "+bid+"\n" {
		t.Errorf("access-binding delete: %q", out)
	}
	fail(t, 3, "NOT_FOUND", "access-binding", "get", bid)
	okJSON(t, lst, "access-binding", "list", "--resource-id", proj)
	if len(lst.GetBindings()) != 0 {
		t.Errorf("deleted binding still listed: %v", lst)
	}
}

// TestIdentityScopedToken is the CI-job story: a service account with a
// token that may read one project's payloads and nothing else.
func TestIdentityScopedToken(t *testing.T) {
	s := needServer(t)
	projA, projB := mkProject(t), mkProject(t)
	secA := mkSecret(t, projA, uniq("db"), "--payload", "password=from-a").GetMetadata().GetId()
	secB := mkSecret(t, projB, uniq("db"), "--payload", "password=from-b").GetMetadata().GetId()

	acc := mkAccount(t, "--description", "ci").GetMetadata().GetId()
	ok(t, "access-binding", "create", "--resource-id", projA, "--account-id", acc, "--role", "mysterybox.payload-viewer")
	bearer, tid := mkToken(t, acc, "--ttl", "1d")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(bearer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The token reads its project's payloads, from the environment or a file.
	if r := asToken(t, bearer, "payload", "get-by-key", "--secret-id", secA, "--key", "password"); r.code != 0 || r.stdout != "from-a" {
		t.Fatalf("payload-viewer token on its project: %v", r)
	}
	if r := asToken(t, "", "--token-file", tokenFile, "payload", "get-by-key", "--secret-id", secA, "--key", "password"); r.code != 0 || r.stdout != "from-a" {
		t.Errorf("--token-file: %v", r)
	}

	// SPEC 4: a dev server writes its admin token, and enforces auth.
	if s.token == "" {
		t.Fatalf("mysteryboxd --dev wrote no %s", filepath.Join(s.dataDir, "admin.token"))
	}
	// No token, an unknown one, another project, a role the binding does
	// not grant: all exit 4.
	args := []string{"project", "list"}
	checkFail(t, asToken(t, "", args...), 4, "UNAUTHENTICATED", args)
	args = []string{"secret", "get", secA}
	checkFail(t, asToken(t, "mbt1.local1.token-doesnotexist.nope", args...), 4, "UNAUTHENTICATED", args)
	if r := asToken(t, bearer, "secret", "list", "--parent-id", projA); r.code != 0 || !strings.Contains(r.stdout, secA) {
		t.Errorf("payload-viewer token lists its project's secrets: %v", r)
	}
	for _, args := range [][]string{
		{"payload", "get-by-key", "--secret-id", secB, "--key", "password"},
		{"payload", "get", "--secret-id", secB},
		{"secret", "get", secB},
		{"secret", "create", "--parent-id", projA, "--name", uniq("nope"), "--payload", "k=v"},
		{"access-binding", "create", "--resource-id", projB, "--account-id", acc, "--role", "mysterybox.admin"},
		{"account", "create", "--name", uniq("nope")},
		{"admin", "rewrap"},
	} {
		r := asToken(t, bearer, args...)
		checkFail(t, r, 4, "PERMISSION_DENIED", args)
		if strings.Contains(r.stderr, "from-b") {
			t.Errorf("%q leaked a payload in its error: %q", args, r.stderr)
		}
	}

	// Revoked: UNAUTHENTICATED (exit 4) from then on.
	ok(t, "token", "revoke", tid)
	args = []string{"payload", "get-by-key", "--secret-id", secA, "--key", "password"}
	var last result
	if !eventually(5*time.Second, func() bool { last = asToken(t, bearer, args...); return last.code == 4 }) {
		t.Fatalf("revoked token still accepted 5s after revoke: %v", last)
	}
	checkFail(t, last, 4, "UNAUTHENTICATED", args)

	// Deleting the account revokes its other tokens too.
	other, _ := mkToken(t, acc)
	if r := asToken(t, other, args...); r.code != 0 {
		t.Fatalf("second token before account delete: %v", r)
	}
	ok(t, "account", "delete", acc)
	if !eventually(5*time.Second, func() bool { last = asToken(t, other, args...); return last.code == 4 }) {
		t.Fatalf("token of a deleted account still accepted: %v", last)
	}
	checkFail(t, last, 4, "UNAUTHENTICATED", args)
}

func TestAdminRewrapDevServer(t *testing.T) {
	proj := mkProject(t)
	mkSecret(t, proj, uniq("rw"), "--payload", "k=v")
	r := mb(t, "admin", "rewrap", "--batch-size", "50")
	if r.code != 0 || r.stderr != "" || !regexp.MustCompile(`^rewrapped \d+ data keys; keys in use: \S.*\n$`).MatchString(r.stdout) {
		t.Fatalf("admin rewrap: %v", r)
	}
	sum := &mbv1.RewrapResponse{}
	okJSON(t, sum, "admin", "rewrap")
	// The dev keyring has one key: nothing to re-wrap, everything under it.
	if sum.GetRemaining() != 0 || sum.GetActiveKeyId() == "" || len(sum.GetKeysInUse()) != 1 || sum.GetKeysInUse()[0] != sum.GetActiveKeyId() {
		t.Errorf("admin rewrap json = %v", sum)
	}
	fail(t, 1, "INVALID_ARGUMENT", "admin", "rewrap", "--batch-size", "1001")
	fail(t, 2, "USAGE", "admin", "rewrap", "--batch-size", "0")
}
