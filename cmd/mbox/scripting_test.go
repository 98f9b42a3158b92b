package main

// Tests of what scripts rely on: config profiles and their precedence, mbox
// run, failover over an endpoint list, progress only on a terminal, shell
// completion.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/tlsutil"
)

// deadEndpoint returns a loopback address nothing listens on.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// configEnv is an environment with its own empty config directory.
func configEnv(t *testing.T) (env []string, path string) {
	t.Helper()
	dir := t.TempDir()
	return []string{"XDG_CONFIG_HOME=" + dir}, filepath.Join(dir, "mbox", "config.yaml")
}

func mustOK(t *testing.T, r result, args ...string) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("mbox %q: want success, got %v", args, r)
	}
	return r.stdout
}

func TestConfigSetGetList(t *testing.T) {
	env, path := configEnv(t)
	run := func(stdin string, args ...string) result {
		t.Helper()
		return execMbox(t, env, []byte(stdin), args...)
	}
	if got := mustOK(t, run("", "config", "path")); got != path+"\n" {
		t.Errorf("config path = %q, want %q", got, path)
	}
	mustOK(t, run("", "config", "set", "endpoints", " 10.0.0.1:7700, 10.0.0.2:7700 "))
	mustOK(t, run("", "config", "set", "timeout", "30s"))
	mustOK(t, run("", "--profile", "ci", "config", "set", "format", "json"))
	mustOK(t, run("", "--profile", "ci", "config", "set", "token-file", "/run/secrets/mbox"))
	mustOK(t, run("", "--profile", "ci", "config", "set", "consistency", "stale"))

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("config file mode %04o, want 0600", st.Mode().Perm())
	}
	if got := mustOK(t, run("", "config", "get", "endpoints")); got != "10.0.0.1:7700,10.0.0.2:7700\n" {
		t.Errorf("get endpoints = %q", got)
	}
	if got := mustOK(t, run("", "--profile", "ci", "config", "get", "format")); got != "json\n" {
		t.Errorf("get format = %q", got)
	}
	// MYSTERYBOX_PROFILE selects the profile too.
	r := execMbox(t, append(env, "MYSTERYBOX_PROFILE=ci"), nil, "config", "get", "token-file")
	if mustOK(t, r) != "/run/secrets/mbox\n" {
		t.Errorf("get token-file with MYSTERYBOX_PROFILE: %v", r)
	}
	if got := mustOK(t, run("", "--profile", "ci", "config", "list")); got != "token-file:  /run/secrets/mbox\nformat:      json\nconsistency: stale\n" {
		t.Errorf("list = %q", got)
	}
	if got := mustOK(t, run("", "-o", "json", "config", "list")); got != "{\n  \"endpoints\": \"10.0.0.1:7700,10.0.0.2:7700\",\n  \"timeout\": \"30s\"\n}\n" {
		t.Errorf("list -o json = %q", got)
	}
	if got := mustOK(t, run("", "config", "profiles")); got != "ci\ndefault\n" {
		t.Errorf("profiles = %q", got)
	}
	mustOK(t, run("", "--profile", "ci", "config", "unset", "consistency"))
	checkFail(t, run("", "--profile", "ci", "config", "get", "consistency"), 3, "NOT_FOUND", nil)

	for _, args := range [][]string{
		{"config", "set", "format", "xml"},
		{"config", "set", "timeout", "soon"},
		{"config", "set", "consistency", "eventual"},
		{"config", "set", "endpoints", " , "},
		{"config", "set", "colour", "blue"},
		{"config", "get", "colour"},
		{"config", "set", "format"},
		{"--profile", "ci", "config", "set", "token", "x"}, // ci has token-file
		{"--profile", "nope", "config", "list"},
	} {
		checkFail(t, run("", args...), 2, "USAGE", args)
	}
	// A profile that does not exist is an error for every other command.
	r = run("", "--profile", "nope", "secret", "get", "mbsec-1")
	checkFail(t, r, 2, "USAGE", nil)
	if !strings.Contains(r.stderr, `profile "nope" not found`) || !strings.Contains(r.stderr, "ci, default") {
		t.Errorf("unknown profile: %v", r)
	}
}

func TestConfigTokenIsHidden(t *testing.T) {
	env, path := configEnv(t)
	const tok = "mbt1.local1.token-x.storedsecretpart"
	r := execMbox(t, env, []byte(tok+"\n"), "--profile", "t", "config", "set", "token", "-")
	if r.code != 0 || !strings.Contains(r.stderr, "warning: the token is stored in "+path) {
		t.Fatalf("set token: %v", r)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), tok) {
		t.Fatalf("token not stored: %v %q", err, b)
	}
	for _, args := range [][]string{{"config", "get", "token"}, {"config", "list"}, {"-o", "yaml", "config", "list"}} {
		r := execMbox(t, env, nil, append([]string{"--profile", "t"}, args...)...)
		if r.code != 0 || strings.Contains(r.stdout+r.stderr, "storedsecretpart") || !strings.Contains(r.stdout, "(set; not shown)") {
			t.Errorf("%q: %v", args, r)
		}
	}
	checkFail(t, execMbox(t, env, nil, "--profile", "t", "config", "set", "token-file", "/x"), 2, "USAGE", nil)
	// A token in a file others can read draws a warning when it is used.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f := startFakeServer(t)
	r = execMbox(t, env, nil, "--profile", "t", "--endpoints", f.addr, "cluster", "status")
	if r.code != 0 || !strings.Contains(r.stderr, "readable by others") || strings.Contains(r.stderr, "storedsecretpart") {
		t.Errorf("wide mode: %v", r)
	}
	if got := f.last(t).md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+tok {
		t.Errorf("token from the profile not sent: %q", got)
	}
	// Writing again restores 0600.
	mustOK(t, execMbox(t, env, nil, "--profile", "t", "config", "set", "format", "yaml"))
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode after rewrite %04o", st.Mode().Perm())
	}
}

func TestConfigPathFallsBackToHome(t *testing.T) {
	home := t.TempDir()
	r := execMbox(t, []string{"XDG_CONFIG_HOME=", "HOME=" + home}, nil, "config", "path")
	if want := filepath.Join(home, ".config", "mbox", "config.yaml") + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("config path without XDG_CONFIG_HOME: %v, want %q", r, want)
	}
	r = execMbox(t, []string{"MYSTERYBOX_CONFIG=/etc/mbox.yaml"}, nil, "config", "path")
	if r.stdout != "/etc/mbox.yaml\n" {
		t.Errorf("MYSTERYBOX_CONFIG: %v", r)
	}
}

// TestConfigPrecedence: flag > environment > profile > default, for each
// setting.
func TestConfigPrecedence(t *testing.T) {
	f := startFakeServer(t)
	env, path := configEnv(t)
	dead := deadEndpoint(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(fakeToken+"\n"), 0o600)
	cfg := "profiles:\n" +
		"  default:\n    endpoints: " + dead + "\n    timeout: 700ms\n" +
		"  work:\n    endpoints: [" + f.addr + "]\n    token-file: " + tokenFile + "\n    format: json\n    consistency: stale\n"
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	get := []string{"secret", "get", "mbsec-1"}
	mbox := func(extraEnv []string, args ...string) result {
		t.Helper()
		return execMbox(t, append(append([]string{}, env...), extraEnv...), nil, append(args, get...)...)
	}

	// Profile "work": endpoints (as a YAML list), token file, format and
	// consistency from the file.
	r := mbox(nil, "--profile", "work")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "{") || !strings.Contains(r.stdout, `"id": "mbsec-1"`) {
		t.Fatalf("profile work: %v", r)
	}
	if got := f.last(t).md.Get("x-consistency"); len(got) != 1 || got[0] != "stale" {
		t.Errorf("consistency from the profile not sent: %q", got)
	}
	// Environment beats profile; flag beats environment.
	if r := mbox([]string{"MYSTERYBOX_FORMAT=yaml"}, "--profile", "work"); !strings.HasPrefix(r.stdout, "metadata:") {
		t.Errorf("MYSTERYBOX_FORMAT over the profile: %v", r)
	}
	if r := mbox([]string{"MYSTERYBOX_FORMAT=yaml"}, "--profile", "work", "-o", "text"); !strings.HasPrefix(r.stdout, "id:") {
		t.Errorf("-o over MYSTERYBOX_FORMAT: %v", r)
	}
	checkFail(t, mbox([]string{"MYSTERYBOX_TOKEN=wrong"}, "--profile", "work"), 4, "UNAUTHENTICATED", nil)
	if r := mbox([]string{"MYSTERYBOX_TOKEN=wrong"}, "--profile", "work", "--token", fakeToken); r.code != 0 {
		t.Errorf("--token over MYSTERYBOX_TOKEN: %v", r)
	}
	if r := mbox([]string{"MYSTERYBOX_TOKEN_FILE=" + tokenFile, "MYSTERYBOX_ENDPOINTS=" + f.addr}); r.code != 0 {
		t.Errorf("MYSTERYBOX_TOKEN_FILE: %v", r)
	}
	checkFail(t, mbox([]string{"MYSTERYBOX_TOKEN_FILE=" + tokenFile, "MYSTERYBOX_TOKEN=x"}), 2, "USAGE", nil)
	if r := mbox([]string{"MYSTERYBOX_CONSISTENCY=linearizable"}, "--profile", "work"); r.code != 0 || len(f.last(t).md.Get("x-consistency")) != 0 {
		t.Errorf("MYSTERYBOX_CONSISTENCY over the profile: %v", r)
	}
	// The default profile's endpoint is dead and its timeout short: the
	// call fails in about 700ms; the environment or a flag fixes it.
	if r := mbox(nil, "--token", fakeToken); r.code != 5 || r.stdout != "" {
		t.Errorf("dead endpoint of the default profile: want exit 5, got %v", r)
	}
	if r := mbox([]string{"MYSTERYBOX_ENDPOINTS=" + f.addr}, "--token", fakeToken); r.code != 0 {
		t.Errorf("MYSTERYBOX_ENDPOINTS over the profile: %v", r)
	}
	if r := mbox([]string{"MYSTERYBOX_ENDPOINTS=" + dead}, "--token", fakeToken, "--endpoints", f.addr); r.code != 0 {
		t.Errorf("--endpoints over MYSTERYBOX_ENDPOINTS: %v", r)
	}
	checkFail(t, mbox([]string{"MYSTERYBOX_TIMEOUT=soon"}, "--token", fakeToken), 2, "USAGE", nil)
	// A broken file is a usage error that names it.
	os.WriteFile(path, []byte("profiles:\n  default:\n    colour: blue\n"), 0o600)
	r = mbox(nil)
	checkFail(t, r, 2, "USAGE", nil)
	if !strings.Contains(r.stderr, path) {
		t.Errorf("broken config: %v", r)
	}
}

// TestEndpointsFirstDead: against the dev server, an endpoint list whose
// first node is down works for reads and writes.
func TestEndpointsFirstDead(t *testing.T) {
	s := needServer(t)
	eps := deadEndpoint(t) + "," + s.addr
	env := []string{"MYSTERYBOX_TOKEN=" + s.token}
	r := execMbox(t, env, nil, "--endpoints", eps, "-o", "json", "project", "create", "--name", uniq("first-dead"))
	if r.code != 0 || !strings.Contains(r.stdout, `"id": "project-`) {
		t.Fatalf("create with the first endpoint dead: %v", r)
	}
	r = execMbox(t, append(env, "MYSTERYBOX_ENDPOINTS="+eps), nil, "project", "list")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("list with the first endpoint dead: %v", r)
	}
}

// TestSpinnerOnlyOnTerminal: while a call is retried, a spinner is drawn on
// stderr when it is a terminal and erased before the result; nothing
// otherwise.
func TestSpinnerOnlyOnTerminal(t *testing.T) {
	f := startFakeServer(t)
	for _, tty := range []bool{true, false} {
		f.mu.Lock()
		f.unavailable = 2
		f.mu.Unlock()
		var stdout, stderr bytes.Buffer
		a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, stderrTTY: tty}
		code := a.execute(context.Background(), []string{"--endpoints", f.addr, "--token", fakeToken, "secret", "get", "mbsec-1"})
		if code != 0 || !strings.HasPrefix(stdout.String(), "id:") {
			t.Fatalf("tty=%v: exit %d stdout %q stderr %q", tty, code, stdout.String(), stderr.String())
		}
		if tty {
			if !strings.Contains(stderr.String(), "waiting for the region: electing a leader") || !strings.HasSuffix(stderr.String(), "\r\x1b[K") {
				t.Errorf("terminal: stderr %q, want a spinner that is erased", stderr.String())
			}
		} else if stderr.Len() != 0 {
			t.Errorf("not a terminal: stderr %q, want nothing", stderr.String())
		}
	}
}

func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "complete -o default -F __start_mbox mbox", "zsh": "#compdef mbox", "fish": "complete -c mbox"} {
		r := execMbox(t, nil, nil, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) || r.stderr != "" {
			t.Errorf("completion %s: exit %d, stdout lacks %q (stderr %q)", shell, r.code, want, r.stderr)
		}
	}
	checkFail(t, execMbox(t, nil, nil, "completion", "tcsh"), 2, "USAGE", nil)
	checkFail(t, execMbox(t, nil, nil, "completion"), 2, "USAGE", nil)

	r := execMbox(t, nil, nil, "__complete", "-o", "")
	for _, f := range []string{"text", "json", "yaml"} {
		if !strings.Contains(r.stdout, f+"\n") {
			t.Errorf("--format completion lacks %s: %q", f, r.stdout)
		}
	}
	env, _ := configEnv(t)
	mustOK(t, execMbox(t, env, nil, "--profile", "staging", "config", "set", "format", "json"))
	if r := execMbox(t, env, nil, "__complete", "--profile", ""); !strings.Contains(r.stdout, "staging\n") {
		t.Errorf("--profile completion: %v", r)
	}
	if r := execMbox(t, nil, nil, "__complete", "r"); !strings.Contains(r.stdout, "run\t") {
		t.Errorf("command completion lacks run: %v", r)
	}
}

// ---------------------------------------------------------------- mbox run

// TestRunDevServer runs commands through mbox run against the dev server.
func TestRunDevServer(t *testing.T) {
	project := mkProject(t)
	app := mkSecret(t, project, uniq("run-app"), "--payload", "DB_USER=billing", "--payload", "DB_PASS=s3cr3t-one", "--payload", "MODE=blue")
	appID := app.GetMetadata().GetId()
	v1 := app.GetStatus().GetPrimaryVersionId()
	mkVersion(t, appID, "--payload", "DB_USER=billing", "--payload", "DB_PASS=s3cr3t-two", "--payload", "MODE=green")
	odd := mkSecret(t, project, uniq("run-odd"), "--payload", "db-password=dash-value", "--payload", "API_KEY=k-value")
	oddID := odd.GetMetadata().GetId()
	values := []string{"s3cr3t-one", "s3cr3t-two", "dash-value", "k-value"}
	noValues := func(r result) {
		t.Helper()
		for _, v := range values {
			if strings.Contains(r.stderr, v) {
				t.Errorf("a value was printed on stderr: %v", r)
			}
		}
	}

	// Every entry becomes a variable; COMMAND's stdout is its own.
	r := mb(t, "run", "--secret", appID, "--", "sh", "-c", `printf '%s|%s|%s' "$DB_USER" "$DB_PASS" "$MODE"`)
	if r.code != 0 || r.stdout != "billing|s3cr3t-two|green" || r.stderr != "" {
		t.Errorf("run: %v", r)
	}
	// A version; no "--" needed before a command without flags of its own.
	r = mb(t, "run", "--secret", appID+":"+v1, "printenv", "DB_PASS")
	if r.code != 0 || r.stdout != "s3cr3t-one\n" {
		t.Errorf("run with a version: %v", r)
	}
	// The exit code passes through.
	r = mb(t, "run", "--secret", appID, "--", "sh", "-c", "exit 7")
	if r.code != 7 {
		t.Errorf("exit code: %v, want 7", r)
	}
	// stdin reaches COMMAND (mbox execs it).
	r = mbIn(t, []byte("from stdin"), "run", "--secret", appID, "--", "cat")
	if r.code != 0 || r.stdout != "from stdin" {
		t.Errorf("stdin: %v", r)
	}
	// A key that is not a variable name is refused, naming the fix...
	r = mb(t, "run", "--secret", oddID, "--", "true")
	checkFail(t, r, 2, "USAGE", nil)
	if !strings.Contains(r.stderr, `"db-password"`) || !strings.Contains(r.stderr, "--env NAME="+oddID+":db-password") {
		t.Errorf("bad name message: %v", r)
	}
	noValues(r)
	// ...and accepted when mapped; the mapped key is not exported as is.
	r = mb(t, "run", "--secret", oddID, "--env", "DB_PASSWORD="+oddID+":db-password", "--", "sh", "-c", `printf '%s|%s' "$DB_PASSWORD" "$API_KEY"`)
	if r.code != 0 || r.stdout != "dash-value|k-value" {
		t.Errorf("--env mapping: %v", r)
	}
	// --env alone picks one key, also of a given version.
	r = mb(t, "run", "--env", "OLD="+appID+":"+v1+":DB_PASS", "--", "sh", "-c", `printf '%s|%s' "$OLD" "${DB_USER:-unset}"`)
	if r.code != 0 || r.stdout != "s3cr3t-one|unset" {
		t.Errorf("--env alone: %v", r)
	}
	// A later secret overrides an earlier one, with a warning that names the
	// variable and not the values.
	other := mkSecret(t, project, uniq("run-other"), "--payload", "DB_PASS=k-value")
	r = mb(t, "run", "--secret", appID, "--secret", other.GetMetadata().GetId(), "--", "printenv", "DB_PASS")
	if r.code != 0 || r.stdout != "k-value\n" || !strings.Contains(r.stderr, "warning: DB_PASS from "+other.GetMetadata().GetId()+" overrides the value from "+appID) {
		t.Errorf("override: %v", r)
	}
	noValues(r)
	// A binary value cannot be an environment variable.
	bin := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(bin, []byte{0xff, 0x00, 0xfe}, 0o600)
	b := mkSecret(t, project, uniq("run-bin"), "--payload-file", "BLOB="+bin)
	checkFail(t, mb(t, "run", "--secret", b.GetMetadata().GetId(), "--", "true"), 1, "FAILED_PRECONDITION", nil)
	// Errors of the secret itself keep their exit codes.
	checkFail(t, mb(t, "run", "--secret", "mbsec-nope", "--", "true"), 3, "NOT_FOUND", nil)
	checkFail(t, mb(t, "run", "--env", "X="+appID+":NOPE", "--", "true"), 3, "NOT_FOUND", nil)
	// No such command: 127, as in a shell.
	r = mb(t, "run", "--secret", appID, "--", "no-such-command-mbox-test")
	if r.code != 127 || !strings.HasPrefix(r.stderr, "error: NOT_FOUND: ") {
		t.Errorf("missing command: %v", r)
	}
}

func TestRunUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--secret", "mbsec-1"},
		{"run", "--", "true"},
		{"run", "--secret", "", "--", "true"},
		{"run", "--secret", "a:b:c", "--", "true"},
		{"run", "--env", "1X=mbsec-1:k", "--", "true"},
		{"run", "--env", "X=mbsec-1", "--", "true"},
		{"run", "--env", "X=mbsec-1:", "--", "true"},
		{"run", "--env", "X", "--", "true"},
		{"run", "--env", "X=a:k", "--env", "X=b:k", "--", "true"},
	} {
		r := execMbox(t, []string{"MYSTERYBOX_ENDPOINTS=127.0.0.1:1"}, nil, args...)
		checkFail(t, r, 2, "USAGE", args)
	}
}

// ---------------------------------------------------------------- units

func TestValidEnvName(t *testing.T) {
	for s, want := range map[string]bool{
		"A": true, "_": true, "DB_PASS": true, "a1": true, "_9": true,
		"": false, "1A": false, "db-pass": false, "a.b": false, "A B": false, "É": false,
	} {
		if got := validEnvName(s); got != want {
			t.Errorf("validEnvName(%q) = %v", s, got)
		}
	}
}

func TestParseEnvMapping(t *testing.T) {
	m, err := parseEnvMapping("PW=mbsec-1:mbsecver-2:db.password")
	if err != nil || m.name != "PW" || m.ref != (secretRef{"mbsec-1", "mbsecver-2"}) || m.key != "db.password" {
		t.Errorf("with version: %+v %v", m, err)
	}
	m, err = parseEnvMapping("PW=mbsec-1:pw")
	if err != nil || m.ref != (secretRef{"mbsec-1", ""}) || m.key != "pw" {
		t.Errorf("without version: %+v %v", m, err)
	}
}

func strEntry(k, v string) *mbv1.PayloadEntry {
	return &mbv1.PayloadEntry{Key: k, Value: &mbv1.PayloadEntry_StringValue{StringValue: v}}
}

func binEntry(k string, v []byte) *mbv1.PayloadEntry {
	return &mbv1.PayloadEntry{Key: k, Value: &mbv1.PayloadEntry_BinaryValue{BinaryValue: v}}
}

func TestBuildRunEnv(t *testing.T) {
	a, b := secretRef{"mbsec-a", ""}, secretRef{"mbsec-b", "v2"}
	payloads := map[secretRef][]*mbv1.PayloadEntry{
		a: {strEntry("X", "a-x"), strEntry("db-pw", "a-pw"), binEntry("TXT", []byte("utf8 ok é"))},
		b: {strEntry("X", "b-x"), strEntry("Y", "b-y")},
	}
	var warnings []string
	warn := func(format string, args ...any) {
		warnings = append(warnings, strings.TrimSpace(strings.ReplaceAll(format, "%s", "%v")))
	}
	maps := []envMapping{{name: "PW", ref: a, key: "db-pw"}, {name: "Y", ref: a, key: "X"}}
	env, err := buildRunEnv([]secretRef{a, b}, maps, payloads, warn)
	if err != nil {
		t.Fatal(err)
	}
	got := env.environ([]string{"HOME=/h", "X=inherited", "PATH=/bin"})
	want := []string{"HOME=/h", "PATH=/bin", "TXT=utf8 ok é", "X=b-x", "Y=a-x", "PW=a-pw"}
	// X of a is mapped to Y, so only b's X is exported as X; b's Y is then
	// overridden by the mapping.
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("environ = %q, want %q", got, want)
	}
	if len(warnings) != 1 {
		t.Errorf("warnings = %q, want one (Y)", warnings)
	}

	// Variables that change how COMMAND runs are not exported from a whole
	// secret (an editor, who may not read payloads, could otherwise run
	// code with every secret of the run in reach); --env maps them.
	for _, key := range []string{"LD_PRELOAD", "PATH", "BASH_ENV", "PYTHONPATH", "NODE_OPTIONS", "GOFLAGS", "MYSTERYBOX_ENDPOINTS"} {
		_, err := buildRunEnv([]secretRef{a}, nil, map[secretRef][]*mbv1.PayloadEntry{a: {strEntry(key, "/tmp/x")}}, warn)
		if err == nil || !strings.Contains(err.Error(), "FAILED_PRECONDITION") || !strings.Contains(err.Error(), "--env "+key) {
			t.Errorf("key %s exported from a whole secret: %v", key, err)
		}
		if err != nil && strings.Contains(err.Error(), "/tmp/x") {
			t.Errorf("the refusal prints the value: %v", err)
		}
	}
	// Ordinary names a CI job keeps in secrets are exported as before.
	var ordinary []*mbv1.PayloadEntry
	for _, key := range []string{"NODE_ENV", "JAVA_HOME", "PAGER", "HOME", "env", "node_id", "git_branch", "PYTHON_VERSION"} {
		ordinary = append(ordinary, strEntry(key, "v"))
	}
	if _, err := buildRunEnv([]secretRef{a}, nil, map[secretRef][]*mbv1.PayloadEntry{a: ordinary}, warn); err != nil {
		t.Errorf("ordinary names refused: %v", err)
	}
	env, err = buildRunEnv(nil, []envMapping{{name: "PATH", ref: a, key: "P"}}, map[secretRef][]*mbv1.PayloadEntry{a: {strEntry("P", "/opt/bin")}}, warn)
	if err != nil || env.values["PATH"] != "/opt/bin" {
		t.Errorf("an explicit --env PATH mapping: %v %v", env, err)
	}

	for name, p := range map[string][]*mbv1.PayloadEntry{
		"binary":  {binEntry("B", []byte{0xff})},
		"nul":     {binEntry("B", []byte("a\x00b"))},
		"nul str": {strEntry("B", "a\x00b")},
	} {
		_, err := buildRunEnv([]secretRef{a}, nil, map[secretRef][]*mbv1.PayloadEntry{a: p}, warn)
		if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "FAILED_PRECONDITION") {
			// localErr is a cliError named FAILED_PRECONDITION.
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestEndpointListYAML(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte("profiles:\n  a:\n    endpoints: [h1:1, h2:2]\n  b:\n    endpoints: h3:3,h4:4\n  c:\n"), 0o600)
	cf, _, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cf.Profiles["a"].Endpoints != "h1:1,h2:2" || cf.Profiles["b"].Endpoints != "h3:3,h4:4" || cf.Profiles["c"] == nil {
		t.Errorf("profiles = %+v %+v %+v", cf.Profiles["a"], cf.Profiles["b"], cf.Profiles["c"])
	}
	os.WriteFile(path, []byte("profiles:\n  a:\n    timeout: soon\n"), 0o600)
	if _, _, err := loadConfig(path); err == nil {
		t.Error("bad timeout in the file: no error")
	}
}

// tlsFiles writes a CA, a server certificate for 127.0.0.1 and a client
// certificate; it returns the server's TLS config and the file paths.
func tlsFiles(t *testing.T, clientAuth tls.ClientAuthType) (srv *tls.Config, caFile, certFile, keyFile string) {
	t.Helper()
	ca, err := tlsutil.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	server, err := ca.Issue("server", "", "", []string{"127.0.0.1"}, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.Issue("client", "", "", nil, now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPEM, _, _ := ca.PEM()
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	os.WriteFile(caFile, caPEM, 0o600)
	os.WriteFile(certFile, cl.CertPEM, 0o600)
	os.WriteFile(keyFile, cl.KeyPEM, 0o600)
	pair, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: clientAuth, ClientCAs: pool}, caFile, certFile, keyFile
}

func TestTLS(t *testing.T) {
	srvTLS, caFile, certFile, keyFile := tlsFiles(t, tls.RequireAndVerifyClientCert)
	f := startFakeServerWith(t, grpc.Creds(credentials.NewTLS(srvTLS)))
	get := []string{"--endpoints", f.addr, "--token", fakeToken, "--timeout", "2s", "secret", "get", "mbsec-1"}

	r := execMbox(t, nil, nil, append([]string{"--ca-file", caFile, "--cert-file", certFile, "--key-file", keyFile}, get...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "mbsec-1") {
		t.Fatalf("mutual TLS: %v", r)
	}
	// From the environment, and from a profile.
	tlsEnv := []string{"MYSTERYBOX_CA_FILE=" + caFile, "MYSTERYBOX_CERT_FILE=" + certFile, "MYSTERYBOX_KEY_FILE=" + keyFile}
	if r := execMbox(t, tlsEnv, nil, get...); r.code != 0 {
		t.Errorf("TLS from the environment: %v", r)
	}
	env, _ := configEnv(t)
	for _, kv := range [][2]string{{"ca-file", caFile}, {"cert-file", certFile}, {"key-file", keyFile}} {
		mustOK(t, execMbox(t, env, nil, "config", "set", kv[0], kv[1]))
	}
	if r := execMbox(t, env, nil, get...); r.code != 0 {
		t.Errorf("TLS from the profile: %v", r)
	}
	// Plaintext to a TLS port, no client certificate, or the system CAs:
	// the handshake fails (UNAVAILABLE, exit 5).
	for _, extra := range [][]string{nil, {"--ca-file", caFile}, {"--tls", "--cert-file", certFile, "--key-file", keyFile}} {
		r := execMbox(t, nil, nil, append(extra, get...)...)
		if r.code != 5 {
			t.Errorf("%q: want exit 5, got %v", extra, r)
		}
	}
	// Bad local TLS input is a usage error, before any call.
	n := f.count()
	for _, extra := range [][]string{
		{"--cert-file", certFile},
		{"--ca-file", filepath.Join(t.TempDir(), "nope.pem")},
		{"--ca-file", keyFile},
		{"--cert-file", certFile, "--key-file", caFile},
	} {
		checkFail(t, execMbox(t, nil, nil, append(extra, get...)...), 2, "USAGE", extra)
	}
	checkFail(t, execMbox(t, []string{"MYSTERYBOX_TLS=maybe"}, nil, get...), 2, "USAGE", nil)
	if f.count() != n {
		t.Error("a TLS usage error made a call")
	}
}
