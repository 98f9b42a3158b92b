package main

// Tests of every command against a real `mysteryboxd --dev` (see cli_test.go).

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/yaml.v3"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
)

func mkProject(t *testing.T) string {
	t.Helper()
	p := &mbv1.Project{}
	okJSON(t, p, "project", "create", "--name", uniq("proj"))
	if !strings.HasPrefix(p.GetMetadata().GetId(), "project-") {
		t.Fatalf("project id %q lacks the project- prefix", p.GetMetadata().GetId())
	}
	return p.GetMetadata().GetId()
}

func mkSecret(t *testing.T, project, name string, extra ...string) *mbv1.Secret {
	t.Helper()
	s := &mbv1.Secret{}
	okJSON(t, s, append([]string{"secret", "create", "--parent-id", project, "--name", name}, extra...)...)
	if !strings.HasPrefix(s.GetMetadata().GetId(), "mbsec-") {
		t.Fatalf("secret id %q lacks the mbsec- prefix", s.GetMetadata().GetId())
	}
	return s
}

func getSecret(t *testing.T, id string, extra ...string) *mbv1.Secret {
	t.Helper()
	s := &mbv1.Secret{}
	okJSON(t, s, append([]string{"secret", "get", id}, extra...)...)
	return s
}

func mkVersion(t *testing.T, secret string, extra ...string) *mbv1.SecretVersion {
	t.Helper()
	v := &mbv1.SecretVersion{}
	okJSON(t, v, append([]string{"version", "create", "--parent-id", secret}, extra...)...)
	if !strings.HasPrefix(v.GetMetadata().GetId(), "mbsecver-") {
		t.Fatalf("version id %q lacks the mbsecver- prefix", v.GetMetadata().GetId())
	}
	return v
}

// value reads one payload value exactly as a script would.
func value(t *testing.T, secret, key string, extra ...string) string {
	t.Helper()
	return ok(t, append([]string{"payload", "get-by-key", "--secret-id", secret, "--key", key}, extra...)...)
}

func TestProjectCommands(t *testing.T) {
	name := uniq("proj")
	p := &mbv1.Project{}
	okJSON(t, p, "project", "create", "--name", name, "--description", "team A")
	id := p.GetMetadata().GetId()
	if !strings.HasPrefix(id, "project-") || p.GetMetadata().GetName() != name || p.GetSpec().GetDescription() != "team A" {
		t.Fatalf("created %v", p)
	}

	out := ok(t, "project", "get", id)
	if !strings.HasPrefix(out, "id:") || !strings.Contains(out, id) || !strings.Contains(out, name) {
		t.Errorf("project get text:\n%s", out)
	}
	out = ok(t, "project", "list")
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, id) {
		t.Errorf("project list text:\n%s", out)
	}
	lst := &mbv1.ListProjectsResponse{}
	okJSON(t, lst, "project", "list")
	found := false
	for _, q := range lst.GetProjects() {
		found = found || q.GetMetadata().GetId() == id
	}
	if !found {
		t.Errorf("project list json lacks %s", id)
	}

	fail(t, 1, "ALREADY_EXISTS", "project", "create", "--name", name)

	// A project with a secret is not empty: delete refuses.
	mkSecret(t, id, "s")
	r := mb(t, "project", "delete", id)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "error: ") {
		t.Errorf("delete of a non-empty project: want exit 1, got %v", r)
	}

	empty := mkProject(t)
	ok(t, "project", "delete", empty)
	fail(t, 3, "NOT_FOUND", "project", "get", empty)
	fail(t, 3, "NOT_FOUND", "project", "get", "project-doesnotexist")
}

func TestSecretCreateGetList(t *testing.T) {
	proj := mkProject(t)
	name := uniq("db")
	s := mkSecret(t, proj, name, "--description", "main db", "--label", "env=prod", "--label", "team=core",
		"--payload", "user=admin", "--payload", "password=s3cr=t")
	id := s.GetMetadata().GetId()
	if s.GetStatus().GetState() != mbv1.State_ACTIVE || s.GetStatus().GetVersionCount() != 1 ||
		!strings.HasPrefix(s.GetStatus().GetPrimaryVersionId(), "mbsecver-") || s.GetStatus().GetPrimaryPinned() {
		t.Errorf("created secret status = %v", s.GetStatus())
	}
	if s.GetSpec().GetDescription() != "main db" || s.GetMetadata().GetLabels()["env"] != "prod" || s.GetMetadata().GetLabels()["team"] != "core" {
		t.Errorf("created secret = %v", s)
	}
	if value(t, id, "password") != "s3cr=t" || value(t, id, "user") != "admin" {
		t.Error("first version payload does not round-trip")
	}

	// Text: ids first, key: value lines; the payload is never shown.
	out := ok(t, "secret", "get", id)
	if !strings.HasPrefix(out, "id:") || !strings.Contains(out, "state:") || strings.Contains(out, "s3cr=t") {
		t.Errorf("secret get text:\n%s", out)
	}
	// YAML is the JSON form with proto field names.
	var doc map[string]map[string]any
	if err := yaml.Unmarshal([]byte(ok(t, "-o", "yaml", "secret", "get", id)), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["metadata"]["id"] != id || doc["metadata"]["parent_id"] != proj {
		t.Errorf("secret get yaml = %v", doc)
	}
	if js := ok(t, "-o", "json", "secret", "get", id); !strings.Contains(js, `"parent_id"`) || strings.Contains(js, "parentId") {
		t.Errorf("json does not use proto names:\n%s", js)
	}

	byName := &mbv1.Secret{}
	okJSON(t, byName, "secret", "get-by-name", "--parent-id", proj, "--name", name)
	if byName.GetMetadata().GetId() != id {
		t.Errorf("get-by-name = %s, want %s", byName.GetMetadata().GetId(), id)
	}
	// Stale reads are accepted too.
	okJSON(t, &mbv1.Secret{}, "--consistency", "stale", "secret", "get", id)

	// A secret without a payload has no version.
	bare := mkSecret(t, proj, uniq("bare"))
	if bare.GetStatus().GetVersionCount() != 0 || bare.GetStatus().GetPrimaryVersionId() != "" {
		t.Errorf("secret without payload: %v", bare.GetStatus())
	}

	// list follows every page; --page-size returns one page and a token.
	lst := &mbv1.ListSecretsResponse{}
	okJSON(t, lst, "secret", "list", "--parent-id", proj)
	if len(lst.GetSecrets()) != 2 || lst.GetNextPageToken() != "" {
		t.Errorf("list = %d secrets, token %q; want 2 and none", len(lst.GetSecrets()), lst.GetNextPageToken())
	}
	page := &mbv1.ListSecretsResponse{}
	okJSON(t, page, "secret", "list", "--parent-id", proj, "--page-size", "1")
	if len(page.GetSecrets()) != 1 || page.GetNextPageToken() == "" {
		t.Fatalf("page 1 = %d secrets, token %q; want 1 and a token", len(page.GetSecrets()), page.GetNextPageToken())
	}
	page2 := &mbv1.ListSecretsResponse{}
	okJSON(t, page2, "secret", "list", "--parent-id", proj, "--page-size", "1", "--page-token", page.GetNextPageToken())
	if len(page2.GetSecrets()) != 1 || page2.GetSecrets()[0].GetMetadata().GetId() == page.GetSecrets()[0].GetMetadata().GetId() {
		t.Errorf("page 2 = %v", page2)
	}
	out = ok(t, "secret", "list", "--parent-id", proj)
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, id) || !strings.Contains(out, bare.GetMetadata().GetId()) {
		t.Errorf("secret list text:\n%s", out)
	}

	fail(t, 1, "ALREADY_EXISTS", "secret", "create", "--parent-id", proj, "--name", name)
	fail(t, 3, "NOT_FOUND", "secret", "get-by-name", "--parent-id", proj, "--name", "nope")
}

func TestSecretUpdate(t *testing.T) {
	proj := mkProject(t)
	s := mkSecret(t, proj, uniq("app"), "--label", "a=1", "--description", "old")
	id := s.GetMetadata().GetId()
	rv := s.GetMetadata().GetResourceVersion()

	newName := uniq("app-renamed")
	u := &mbv1.Secret{}
	okJSON(t, u, "secret", "update", id, "--name", newName, "--description", "new", "--label", "b=2", "--resource-version", i64(rv))
	if u.GetMetadata().GetName() != newName || u.GetSpec().GetDescription() != "new" ||
		len(u.GetMetadata().GetLabels()) != 1 || u.GetMetadata().GetLabels()["b"] != "2" {
		t.Errorf("after update: %v", u)
	}
	if u.GetMetadata().GetResourceVersion() <= rv {
		t.Errorf("resource_version %d did not increase from %d", u.GetMetadata().GetResourceVersion(), rv)
	}

	// Only the masked field changes.
	okJSON(t, u, "secret", "update", id, "--description", "newer")
	if u.GetMetadata().GetName() != newName || u.GetMetadata().GetLabels()["b"] != "2" || u.GetSpec().GetDescription() != "newer" {
		t.Errorf("description-only update changed more: %v", u)
	}
	okJSON(t, u, "secret", "update", id, "--clear-labels")
	if len(u.GetMetadata().GetLabels()) != 0 {
		t.Errorf("labels after --clear-labels: %v", u.GetMetadata().GetLabels())
	}

	// resource_version mismatch: ABORTED, exit 1.
	stale := i64(rv)
	fail(t, 1, "ABORTED", "secret", "update", id, "--description", "x", "--resource-version", stale)
	fail(t, 1, "ABORTED", "secret", "delete", id, "--resource-version", stale)

	fail(t, 2, "USAGE", "secret", "update", id)
	fail(t, 2, "USAGE", "secret", "update", id, "--label", "novalue")
	fail(t, 3, "NOT_FOUND", "secret", "update", "mbsec-doesnotexist", "--description", "x")
	fail(t, 1, "INVALID_ARGUMENT", "secret", "update", id, "--name", "a/b")
}

func TestPrimaryPinUnpin(t *testing.T) {
	proj := mkProject(t)
	s := mkSecret(t, proj, uniq("pin"), "--payload", "k=1")
	id := s.GetMetadata().GetId()
	v1 := s.GetStatus().GetPrimaryVersionId()

	v2 := mkVersion(t, id, "--payload", "k=2").GetMetadata().GetId()
	if st := getSecret(t, id).GetStatus(); st.GetPrimaryVersionId() != v2 || st.GetPrimaryPinned() || st.GetVersionCount() != 2 {
		t.Fatalf("after v2: %v", st)
	}
	if got := value(t, id, "k"); got != "2" {
		t.Errorf("primary value = %q, want 2", got)
	}

	// Pin v1.
	u := &mbv1.Secret{}
	okJSON(t, u, "secret", "update", id, "--primary-version-id", v1)
	if u.GetStatus().GetPrimaryVersionId() != v1 || !u.GetStatus().GetPrimaryPinned() {
		t.Fatalf("after pin: %v", u.GetStatus())
	}
	v3 := mkVersion(t, id, "--payload", "k=3").GetMetadata().GetId()
	if st := getSecret(t, id).GetStatus(); st.GetPrimaryVersionId() != v1 || !st.GetPrimaryPinned() {
		t.Errorf("a new version moved the pinned primary: %v", st)
	}
	if got := value(t, id, "k"); got != "1" {
		t.Errorf("pinned primary value = %q, want 1", got)
	}
	if got := value(t, id, "k", "--version-id", v3); got != "3" {
		t.Errorf("v3 value = %q, want 3", got)
	}

	// Unpin: back to the latest ACTIVE version.
	okJSON(t, u, "secret", "update", id, "--primary-version-id", "latest")
	if u.GetStatus().GetPrimaryVersionId() != v3 || u.GetStatus().GetPrimaryPinned() {
		t.Errorf("after unpin: %v", u.GetStatus())
	}

	// --set-primary pins the new version.
	v4 := mkVersion(t, id, "--payload", "k=4", "--set-primary").GetMetadata().GetId()
	if st := getSecret(t, id).GetStatus(); st.GetPrimaryVersionId() != v4 || !st.GetPrimaryPinned() {
		t.Errorf("after --set-primary: %v", st)
	}
	// A pinned primary scheduled for deletion: the read fails naming it.
	ok(t, "version", "delete", v4)
	r := fail(t, 1, "FAILED_PRECONDITION", "payload", "get-by-key", "--secret-id", id, "--key", "k")
	if !strings.Contains(r.stderr, v4) {
		t.Errorf("FAILED_PRECONDITION should name %s: %q", v4, r.stderr)
	}
	fail(t, 1, "FAILED_PRECONDITION", "payload", "get", "--secret-id", id)

	// Unpinned, deleting the latest falls back to the newest ACTIVE one.
	okJSON(t, u, "secret", "update", id, "--primary-version-id", "latest")
	if u.GetStatus().GetPrimaryVersionId() != v3 {
		t.Errorf("unpinned with v4 deleted: primary %s, want %s", u.GetStatus().GetPrimaryVersionId(), v3)
	}
	// An unknown version cannot be pinned; the SPEC leaves the code open
	// between INVALID_ARGUMENT and NOT_FOUND.
	if r := mb(t, "secret", "update", id, "--primary-version-id", "mbsecver-doesnotexist"); r.code != 1 && r.code != 3 {
		t.Errorf("pinning an unknown version: want exit 1 or 3, got %v", r)
	}
	fail(t, 2, "USAGE", "secret", "update", id, "--primary-version-id", "")
}

func TestVersionCommands(t *testing.T) {
	proj := mkProject(t)
	id := mkSecret(t, proj, uniq("ver")).GetMetadata().GetId()

	v := mkVersion(t, id, "--payload", "a=1", "--description", "first")
	vid := v.GetMetadata().GetId()
	if v.GetMetadata().GetParentId() != id || v.GetStatus().GetState() != mbv1.State_ACTIVE || v.GetSpec().GetDescription() != "first" {
		t.Errorf("created version = %v", v)
	}
	if v.GetSpec().GetPayload() != nil {
		t.Error("version create echoed the payload")
	}
	out := ok(t, "version", "get", vid)
	if !strings.HasPrefix(out, "id:") || !strings.Contains(out, vid) || strings.Contains(out, "a=1") {
		t.Errorf("version get text:\n%s", out)
	}
	v2 := mkVersion(t, id, "--payload", "a=2").GetMetadata().GetId()

	lst := &mbv1.ListSecretVersionsResponse{}
	okJSON(t, lst, "version", "list", "--parent-id", id)
	if len(lst.GetVersions()) != 2 {
		t.Fatalf("version list = %d, want 2", len(lst.GetVersions()))
	}
	out = ok(t, "version", "list", "--parent-id", id)
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, vid) || !strings.Contains(out, v2) {
		t.Errorf("version list text:\n%s", out)
	}

	// Delete hides the version unless asked; undelete restores it.
	del := &mbv1.SecretVersion{}
	okJSON(t, del, "version", "delete", v2)
	if del.GetStatus().GetState() != mbv1.State_SCHEDULED_FOR_DELETION || del.GetStatus().GetPurgeAt() == nil {
		t.Errorf("deleted version status = %v", del.GetStatus())
	}
	fail(t, 3, "NOT_FOUND", "version", "get", v2)
	okJSON(t, del, "version", "get", v2, "--show-deleted")
	okJSON(t, lst, "version", "list", "--parent-id", id)
	if len(lst.GetVersions()) != 1 {
		t.Errorf("list without --show-deleted = %d, want 1", len(lst.GetVersions()))
	}
	okJSON(t, lst, "version", "list", "--parent-id", id, "--show-deleted")
	if len(lst.GetVersions()) != 2 {
		t.Errorf("list --show-deleted = %d, want 2", len(lst.GetVersions()))
	}
	if got := getSecret(t, id).GetStatus().GetPrimaryVersionId(); got != vid {
		t.Errorf("primary after deleting the latest = %s, want %s", got, vid)
	}
	okJSON(t, del, "version", "undelete", v2)
	if del.GetStatus().GetState() != mbv1.State_ACTIVE {
		t.Errorf("undeleted version state = %v", del.GetStatus().GetState())
	}
	if got := value(t, id, "a", "--version-id", v2); got != "2" {
		t.Errorf("undeleted version value = %q", got)
	}

	fail(t, 2, "USAGE", "version", "create", "--parent-id", id)
	fail(t, 3, "NOT_FOUND", "version", "get", "mbsecver-doesnotexist")
	fail(t, 3, "NOT_FOUND", "version", "delete", "mbsecver-doesnotexist")
	fail(t, 3, "NOT_FOUND", "version", "create", "--parent-id", "mbsec-doesnotexist", "--payload", "a=1")
}

func TestDeleteUndeleteWithRename(t *testing.T) {
	proj := mkProject(t)
	name := uniq("app")
	old := mkSecret(t, proj, name, "--payload", "k=old")
	oldID := old.GetMetadata().GetId()

	d := &mbv1.Secret{}
	okJSON(t, d, "secret", "delete", oldID)
	if d.GetStatus().GetState() != mbv1.State_SCHEDULED_FOR_DELETION || d.GetStatus().GetDeletedAt() == nil || d.GetStatus().GetPurgeAt() == nil {
		t.Errorf("deleted secret status = %v", d.GetStatus())
	}
	fail(t, 3, "NOT_FOUND", "secret", "get", oldID)
	fail(t, 3, "NOT_FOUND", "payload", "get", "--secret-id", oldID)
	if st := getSecret(t, oldID, "--show-deleted").GetStatus().GetState(); st != mbv1.State_SCHEDULED_FOR_DELETION {
		t.Errorf("get --show-deleted state = %v", st)
	}
	lst := &mbv1.ListSecretsResponse{}
	okJSON(t, lst, "secret", "list", "--parent-id", proj)
	if len(lst.GetSecrets()) != 0 {
		t.Errorf("list shows a deleted secret: %v", lst)
	}
	okJSON(t, lst, "secret", "list", "--parent-id", proj, "--show-deleted")
	if len(lst.GetSecrets()) != 1 {
		t.Errorf("list --show-deleted = %d, want 1", len(lst.GetSecrets()))
	}

	// The name is released; once taken, undelete needs a new one.
	mkSecret(t, proj, name, "--payload", "k=new")
	fail(t, 1, "ALREADY_EXISTS", "secret", "undelete", oldID)
	renamed := name + "-restored"
	u := &mbv1.Secret{}
	okJSON(t, u, "secret", "undelete", oldID, "--name", renamed)
	if u.GetMetadata().GetName() != renamed || u.GetStatus().GetState() != mbv1.State_ACTIVE {
		t.Errorf("undeleted = %v", u)
	}
	if got := value(t, oldID, "k"); got != "old" {
		t.Errorf("undeleted secret value = %q, want old", got)
	}
	fail(t, 3, "NOT_FOUND", "secret", "delete", "mbsec-doesnotexist")
	fail(t, 3, "NOT_FOUND", "secret", "undelete", "mbsec-doesnotexist")
}

func TestGetByKeyByteExact(t *testing.T) {
	proj := mkProject(t)
	values := map[string]string{
		"nl":      "with trailing newline\n",
		"nonl":    "no trailing newline",
		"twonl":   "two\n\n",
		"spaces":  "  padded  ",
		"unicode": "ünïcödé ✓",
		"eq":      "a=b=c",
	}
	args := []string{}
	for k, v := range values {
		args = append(args, "--payload", k+"="+v)
	}
	// The same values through --payload-file and stdin.
	dir := t.TempDir()
	f := filepath.Join(dir, "pem")
	pem := "-----BEGIN X-----\nabc\n-----END X-----\n"
	os.WriteFile(f, []byte(pem), 0o600)
	args = append(args, "--payload-file", "pem="+f, "--payload-file", "stdin=-")
	s := &mbv1.Secret{}
	r := mbIn(t, []byte("from stdin\n"), append([]string{"-o", "json", "secret", "create", "--parent-id", proj, "--name", uniq("exact")}, args...)...)
	if r.code != 0 {
		t.Fatalf("create: %v", r)
	}
	if err := protojson.Unmarshal([]byte(r.stdout), s); err != nil {
		t.Fatal(err)
	}
	id := s.GetMetadata().GetId()
	values["pem"] = pem
	values["stdin"] = "from stdin\n"
	for k, want := range values {
		if got := value(t, id, k); got != want {
			t.Errorf("get-by-key %s = %q, want %q", k, got, want)
		}
	}

	// payload get: text is one key=value per line, json the message.
	out := ok(t, "payload", "get", "--secret-id", id)
	for _, line := range []string{"nonl=no trailing newline\n", `nl="with trailing newline\n"` + "\n", "eq=a=b=c\n"} {
		if !strings.Contains(out, line) {
			t.Errorf("payload get text lacks %q:\n%s", line, out)
		}
	}
	pr := &mbv1.GetPayloadResponse{}
	okJSON(t, pr, "payload", "get", "--secret-id", id)
	if pr.GetSecretId() != id || pr.GetVersionId() != s.GetStatus().GetPrimaryVersionId() || len(pr.GetEntries()) != len(values) {
		t.Errorf("payload get json: %v", pr)
	}
	for _, e := range pr.GetEntries() {
		if e.GetStringValue() != values[e.GetKey()] {
			t.Errorf("payload get %s = %q", e.GetKey(), e.GetStringValue())
		}
	}
	kr := &mbv1.GetPayloadByKeyResponse{}
	okJSON(t, kr, "payload", "get-by-key", "--secret-id", id, "--key", "nl")
	if kr.GetEntry().GetStringValue() != values["nl"] {
		t.Errorf("get-by-key json = %v", kr)
	}
	fail(t, 3, "NOT_FOUND", "payload", "get-by-key", "--secret-id", id, "--key", "missing")
	fail(t, 3, "NOT_FOUND", "payload", "get-by-key", "--secret-id", "mbsec-doesnotexist", "--key", "nl")
	fail(t, 3, "NOT_FOUND", "payload", "get", "--secret-id", id, "--version-id", "mbsecver-doesnotexist")
}

func TestGenerate(t *testing.T) {
	proj := mkProject(t)
	r := mb(t, "secret", "create", "--parent-id", proj, "--name", uniq("gen"), "--generate", "password", "--generate", "pin=12")
	if r.code != 0 {
		t.Fatalf("create: %v", r)
	}
	id := ""
	for _, line := range strings.Split(r.stdout, "\n") {
		if v, found := strings.CutPrefix(line, "id:"); found {
			id = strings.TrimSpace(v)
		}
	}
	pw := value(t, id, "password")
	pin := value(t, id, "pin")
	if utf8.RuneCountInString(pw) != 32 || len(pin) != 12 {
		t.Errorf("generated lengths %d and %d, want 32 and 12", len(pw), len(pin))
	}
	if strings.Contains(r.stdout+r.stderr, pw) || strings.Contains(r.stdout+r.stderr, pin) {
		t.Error("secret create printed a generated password")
	}
	for _, c := range pw {
		if !strings.ContainsRune(passwordAlphabet, c) {
			t.Errorf("generated char %q outside the alphabet", c)
		}
	}
	v := mkVersion(t, id, "--generate", "password")
	if got := value(t, id, "password", "--version-id", v.GetMetadata().GetId()); len(got) != 32 || got == pw {
		t.Errorf("version --generate = %d chars, same as before: %v", len(got), got == pw)
	}
	fail(t, 2, "USAGE", "secret", "create", "--parent-id", proj, "--name", uniq("gen"), "--generate", "k=0")
	fail(t, 2, "USAGE", "secret", "create", "--parent-id", proj, "--name", uniq("gen"), "--generate", "k=many")
}

func TestBinaryPayloadFile(t *testing.T) {
	proj := mkProject(t)
	data := make([]byte, 4096)
	rand.Read(data)
	data = append([]byte{0xff, 0xfe, 0x00, '\n'}, data...)
	data = append(data, '\n')
	if utf8.Valid(data) {
		t.Fatal("test data should not be UTF-8")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "cert.der")
	os.WriteFile(in, data, 0o600)
	s := mkSecret(t, proj, uniq("bin"), "--payload-file", "cert="+in, "--payload", "note=text")
	id := s.GetMetadata().GetId()

	// --out-file: exact bytes, mode 0600 even over an existing 0644 file.
	out := filepath.Join(dir, "out.der")
	os.WriteFile(out, []byte("previous"), 0o644)
	if o := ok(t, "payload", "get-by-key", "--secret-id", id, "--key", "cert", "--out-file", out); o != "" {
		t.Errorf("--out-file also wrote to stdout: %q", o)
	}
	got, _ := os.ReadFile(out)
	fi, _ := os.Stat(out)
	if !bytes.Equal(got, data) || fi.Mode().Perm() != 0o600 {
		t.Errorf("--out-file: equal=%v mode=%v, want equal and 0600", bytes.Equal(got, data), fi.Mode().Perm())
	}
	// Raw to a pipe.
	if got := value(t, id, "cert"); got != string(data) {
		t.Error("binary value through a pipe differs")
	}
	// payload get: base64 with a marker in text, binary_value in JSON.
	text := ok(t, "payload", "get", "--secret-id", id)
	if !strings.Contains(text, "cert:base64="+base64.StdEncoding.EncodeToString(data)+"\n") || !strings.Contains(text, "note=text\n") {
		t.Errorf("payload get text:\n%.200s", text)
	}
	pr := &mbv1.GetPayloadResponse{}
	okJSON(t, pr, "payload", "get", "--secret-id", id)
	for _, e := range pr.GetEntries() {
		if e.GetKey() == "cert" && !bytes.Equal(e.GetBinaryValue(), data) {
			t.Error("payload get json: binary value differs")
		}
	}
	fail(t, 1, "UNKNOWN", "payload", "get-by-key", "--secret-id", id, "--key", "cert", "--out-file", filepath.Join(dir, "no", "such", "dir"))
}

func TestBadInput(t *testing.T) {
	proj := mkProject(t)
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	os.WriteFile(big, bytes.Repeat([]byte("a"), 65537), 0o600)
	limit := filepath.Join(dir, "limit")
	os.WriteFile(limit, bytes.Repeat([]byte("b"), 65536), 0o600)

	// Server-side validation: INVALID_ARGUMENT naming the field, exit 1.
	r := fail(t, 1, "INVALID_ARGUMENT", "secret", "create", "--parent-id", proj, "--name", uniq("big"), "--payload-file", "v="+big)
	if !strings.Contains(strings.ToLower(r.stderr), "value") {
		t.Errorf("oversize error does not name the value field: %q", r.stderr)
	}
	sid := mkSecret(t, proj, uniq("limit"), "--payload-file", "v="+limit).GetMetadata().GetId()
	if got := value(t, sid, "v"); len(got) != 65536 {
		t.Errorf("65,536-byte value read back as %d bytes", len(got))
	}
	r = fail(t, 1, "INVALID_ARGUMENT", "version", "create", "--parent-id", sid, "--payload", "bad key!=x")
	if !strings.Contains(strings.ToLower(r.stderr), "key") {
		t.Errorf("bad key error does not name the key: %q", r.stderr)
	}
	fail(t, 1, "INVALID_ARGUMENT", "version", "create", "--parent-id", sid, "--payload", "dup=1", "--payload", "dup=2")
	fail(t, 1, "INVALID_ARGUMENT", "version", "create", "--parent-id", sid, "--payload", "empty=")
	fail(t, 1, "INVALID_ARGUMENT", "secret", "create", "--parent-id", proj, "--name", "a/b")
	fail(t, 1, "INVALID_ARGUMENT", "secret", "create", "--parent-id", proj, "--name", uniq("lbl"), "--label", "Bad=x")
	fail(t, 1, "INVALID_ARGUMENT", "secret", "list", "--parent-id", proj, "--page-size", "1001")

	// Local bad input: usage, exit 2, before any call.
	fail(t, 2, "USAGE", "secret", "create", "--parent-id", proj, "--name", "x", "--payload", "novalue")
	fail(t, 2, "USAGE", "secret", "create", "--parent-id", proj, "--name", "x", "--payload-file", "k="+filepath.Join(dir, "missing"))
	fail(t, 2, "USAGE", "secret", "create", "--parent-id", proj, "--name", "x", "--label", "novalue")
	fail(t, 2, "USAGE", "secret", "create", "--name", "x")

	// Unknown ids: NOT_FOUND, exit 3.
	r = fail(t, 3, "NOT_FOUND", "secret", "get", "mbsec-doesnotexist")
	if !strings.Contains(r.stderr, "mbsec-doesnotexist") {
		t.Errorf("NOT_FOUND should name the id: %q", r.stderr)
	}
	fail(t, 3, "NOT_FOUND", "secret", "create", "--parent-id", "project-doesnotexist", "--name", "x")
}

func TestClusterReadCommands(t *testing.T) {
	st := &mbv1.ClusterStatusResponse{}
	okJSON(t, st, "cluster", "status")
	if st.GetRaftState() != "leader" || st.GetNodeId() == "" || st.GetLeaderId() != st.GetNodeId() || st.GetRegion() != "local1" {
		t.Errorf("dev cluster status = %v", st)
	}
	out := ok(t, "cluster", "status")
	if !strings.HasPrefix(out, "node_id:") || !strings.Contains(out, "raft_state:") {
		t.Errorf("cluster status text:\n%s", out)
	}
	ms := &mbv1.ListMembersResponse{}
	okJSON(t, ms, "cluster", "members")
	if len(ms.GetMembers()) != 1 || ms.GetMembers()[0].GetNodeId() != st.GetNodeId() {
		t.Errorf("dev cluster members = %v", ms)
	}
	out = ok(t, "cluster", "members")
	if !strings.HasPrefix(out, "NODE_ID ") || !strings.Contains(out, st.GetNodeId()) {
		t.Errorf("cluster members text:\n%s", out)
	}
}

func TestIdsAndTokenNotLeaked(t *testing.T) {
	s := needServer(t)
	// Whatever the server does with it, the token never appears in output.
	const token = "mbt1.local1.token-test.notprinted"
	r := execMbox(t, []string{"MYSTERYBOX_ENDPOINTS=" + s.addr}, nil, "--token", token, "-o", "json", "cluster", "status")
	if strings.Contains(r.stdout+r.stderr, "notprinted") {
		t.Errorf("token printed: %v", r)
	}
}

func TestUnreachableEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	args := []string{"--endpoints", dead, "--timeout", "2s", "secret", "get", "mbsec-x"}
	r := execMbox(t, nil, nil, args...)
	if r.code != 5 || !(strings.HasPrefix(r.stderr, "error: UNAVAILABLE: ") || strings.HasPrefix(r.stderr, "error: DEADLINE_EXCEEDED: ")) || r.stdout != "" {
		t.Errorf("unreachable endpoint: want exit 5 UNAVAILABLE, got %v", r)
	}
	// Same through the environment.
	r = execMbox(t, []string{"MYSTERYBOX_ENDPOINTS=" + dead}, nil, "--timeout", "1s", "project", "list")
	if r.code != 5 {
		t.Errorf("MYSTERYBOX_ENDPOINTS unreachable: want exit 5, got %v", r)
	}
}
