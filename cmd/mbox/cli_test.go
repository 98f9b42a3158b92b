package main

// CLI tests against built binaries. TestMain builds ./cmd/mbox and
// ./cmd/mysteryboxd; the first test that needs a server starts one
// `mysteryboxd --dev` on free loopback ports and waits for its gRPC health
// check to answer SERVING. TestMain stops it with SIGTERM.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	mbv1 "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/internal/testnet"
)

var (
	testDir        string
	mboxBin        string
	serverBin      string
	serverBuildErr error

	srvOnce sync.Once
	srv     *testServer
	srvErr  error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "mbox-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	testDir = dir
	mboxBin = filepath.Join(dir, "mbox")
	serverBin = filepath.Join(dir, "mysteryboxd")

	if err := goBuild(mboxBin, "github.com/mysterybox/mysterybox/cmd/mbox"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The server may not build yet; only the tests that need it fail then.
	serverBuildErr = goBuild(serverBin, "github.com/mysterybox/mysterybox/cmd/mysteryboxd")

	code := m.Run()
	if srv != nil {
		if err := srv.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "mysteryboxd did not stop cleanly on SIGTERM: %v\n%s\n", err, srv.logTail())
			code = 1
		}
	}
	return code
}

func goBuild(out, pkg string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// ---------------------------------------------------------------- server

type testServer struct {
	cmd     *exec.Cmd
	addr    string
	dataDir string
	token   string
	logPath string
	done    chan struct{}
	waitErr error
}

// needServer returns the shared dev server, starting it on first use.
func needServer(t *testing.T) *testServer {
	t.Helper()
	if serverBuildErr != nil {
		t.Fatalf("mysteryboxd does not build: %v", serverBuildErr)
	}
	srvOnce.Do(func() { srv, srvErr = startServer() })
	if srvErr != nil {
		t.Fatalf("start mysteryboxd: %v", srvErr)
	}
	return srv
}

func freeAddr() (string, error) { return testnet.FreeAddr(false) }

func startServer() (*testServer, error) {
	s := &testServer{dataDir: filepath.Join(testDir, "data"), logPath: filepath.Join(testDir, "mysteryboxd.log"), done: make(chan struct{})}
	var addrs [3]string
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	s.addr = addrs[0]
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"--dev", "--data-dir", s.dataDir, "--grpc-addr", addrs[0], "--raft-addr", addrs[1]}
	// Gossip (SPEC 4) may not exist yet; when it does, keep it off :7702 so
	// tests do not collide with a developer's running server.
	if help, _ := exec.Command(serverBin, "--help").CombinedOutput(); bytes.Contains(help, []byte("--gossip-addr")) {
		args = append(args, "--gossip-addr", addrs[2])
	}
	s.cmd = exec.Command(serverBin, args...)
	s.cmd.Env = cleanEnv()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()

	// Poll the health check until SERVING, the process exits, or 90s pass.
	deadline := time.Now().Add(90 * time.Second)
	for {
		if serving(s.addr) {
			break
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("mysteryboxd exited: %v\n%s", s.waitErr, s.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			<-s.done
			return nil, fmt.Errorf("mysteryboxd not SERVING after 90s\n%s", s.logTail())
		}
	}
	// A dev server writes its admin token; send it when there is one so the
	// tests keep passing once the dev server enforces authentication.
	if b, err := os.ReadFile(filepath.Join(s.dataDir, "admin.token")); err == nil {
		s.token = strings.TrimSpace(string(b))
		// The file is written before the region's admin account is
		// committed (health says SERVING earlier): wait until the token
		// is accepted.
		for !tokenAccepted(s.addr, s.token) {
			select {
			case <-s.done:
				return nil, fmt.Errorf("mysteryboxd exited: %v\n%s", s.waitErr, s.logTail())
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.cmd.Process.Kill()
				<-s.done
				return nil, fmt.Errorf("the admin token in admin.token not accepted after 90s\n%s", s.logTail())
			}
		}
	}
	return s, nil
}

// tokenAccepted reports whether an authenticated read succeeds with token.
func tokenAccepted(addr, token string) bool {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	_, err = mbv1.NewIdentityServiceClient(conn).ListProjects(ctx, &mbv1.ListProjectsRequest{PageSize: 1})
	return err == nil
}

func serving(addr string) bool {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

func (s *testServer) stop() error {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.waitErr
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("still running 30s after SIGTERM; killed")
	}
}

func (s *testServer) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// ---------------------------------------------------------------- running mbox

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %q\nstderr: %q", r.code, r.stdout, r.stderr)
}

// cleanEnv is the test's environment without MYSTERYBOX_* variables, so a
// developer's own settings cannot leak into the tests.
// It also points XDG_CONFIG_HOME at an empty directory, so a developer's
// ~/.config/mbox/config.yaml cannot either (tests that need a config file
// set their own, later in the list, which wins).
func cleanEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "MYSTERYBOX_") && !strings.HasPrefix(e, "XDG_CONFIG_HOME=") {
			env = append(env, e)
		}
	}
	return append(env, "XDG_CONFIG_HOME="+filepath.Join(testDir, "no-config"))
}

// execMbox runs the mbox binary with extra environment and stdin.
func execMbox(t *testing.T, env []string, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, mboxBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run mbox %q: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func (s *testServer) env() []string {
	env := []string{"MYSTERYBOX_ENDPOINTS=" + s.addr}
	if s.token != "" {
		env = append(env, "MYSTERYBOX_TOKEN="+s.token)
	}
	return env
}

// mb runs mbox against the dev server.
func mb(t *testing.T, args ...string) result {
	t.Helper()
	return execMbox(t, needServer(t).env(), nil, args...)
}

// mbIn is mb with stdin.
func mbIn(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	return execMbox(t, needServer(t).env(), stdin, args...)
}

// ok runs mbox against the dev server and fails the test unless it exits 0.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := mb(t, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("mbox %q: want success, got %v", args, r)
	}
	return r.stdout
}

// okJSON runs mbox -o json and decodes stdout into m.
func okJSON(t *testing.T, m proto.Message, args ...string) {
	t.Helper()
	out := ok(t, append([]string{"-o", "json"}, args...)...)
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		t.Fatalf("mbox %q: stdout is not a %T: %v\n%s", args, m, err, out)
	}
}

// checkFail asserts the exit code, the "error: CODE: " stderr line and an
// empty stdout.
func checkFail(t *testing.T, r result, exit int, code string, args []string) {
	t.Helper()
	prefix := "error: " + code + ": "
	if r.code != exit || !strings.HasPrefix(r.stderr, prefix) {
		t.Fatalf("mbox %q: want exit %d and stderr %q..., got %v", args, exit, prefix, r)
	}
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Errorf("mbox %q: stderr should be one line: %q", args, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("mbox %q: stdout should be empty on error: %q", args, r.stdout)
	}
}

// fail runs mbox against the dev server and asserts how it fails.
func fail(t *testing.T, exit int, code string, args ...string) result {
	t.Helper()
	r := mb(t, args...)
	checkFail(t, r, exit, code, args)
	return r
}

var nameSeq atomic.Int64

// uniq returns a name unique within this test run (the server is shared).
func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, nameSeq.Add(1))
}

func protojsonUnmarshal(s string, m proto.Message) error {
	return protojson.Unmarshal([]byte(s), m)
}
