package main

// Multi-process tests with the built binaries: a region of three
// mysteryboxd processes formed by hand (--bootstrap / --join-raft), and a dev
// server restarted from its data directory.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	log  string
	grpc string
	done chan struct{}
	err  error // exit status, once done is closed
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(serverBin, p.args...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	p.done = done
	go func(c *exec.Cmd, f *os.File) {
		p.err = c.Wait()
		f.Close()
		close(done)
	}(p.cmd, logf)
}

func (p *proc) signal(sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jsonField(t *testing.T, out string, path ...string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("no %v in %s", path, out)
		}
		v = m[p]
	}
	s, _ := v.(string)
	return s
}

func TestThreeNodeRegionByHand(t *testing.T) {
	if serverBuildErr != nil {
		t.Fatal(serverBuildErr)
	}
	dir := t.TempDir()
	keygen, err := exec.Command(serverBin, "keygen", "--key-id", "k1").Output()
	if err != nil {
		t.Fatal(err)
	}
	keyring := filepath.Join(dir, "keyring.json")
	if err := os.WriteFile(keyring, keygen, 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "admin.token")
	var nodes []*proc
	var endpoints []string
	for i := 1; i <= 3; i++ {
		g, _ := freeAddr()
		r, _ := freeAddr()
		p := &proc{name: fmt.Sprintf("n%d", i), grpc: g, log: filepath.Join(dir, fmt.Sprintf("n%d.log", i)), args: []string{
			"--region", "eu1", "--node-id", fmt.Sprintf("n%d", i), "--data-dir", filepath.Join(dir, fmt.Sprintf("d%d", i)),
			"--grpc-addr", g, "--raft-addr", r, "--master-key-file", keyring,
			"--gossip-addr=", // formed by hand: no gossip
		}}
		if i == 1 {
			p.args = append(p.args, "--bootstrap", "--bootstrap-admin-token-file", tokenFile)
		} else {
			p.args = append(p.args, "--join-raft", nodes[0].grpc, "--join-token-file", tokenFile)
		}
		nodes = append(nodes, p)
		endpoints = append(endpoints, g)
	}
	t.Cleanup(func() {
		for _, p := range nodes {
			p.signal(syscall.SIGKILL)
		}
	})
	nodes[0].start(t)
	waitFor(t, 20*time.Second, "the admin token file", func() bool {
		b, err := os.ReadFile(tokenFile)
		return err == nil && len(b) > 0
	})
	nodes[1].start(t)
	nodes[2].start(t)
	raw, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(raw))
	env := func(eps ...string) []string {
		return []string{"MYSTERYBOX_ENDPOINTS=" + strings.Join(eps, ","), "MYSTERYBOX_TOKEN=" + token}
	}
	all := env(endpoints...)
	waitFor(t, 30*time.Second, "three members with addresses", func() bool {
		r := execMbox(t, all, nil, "cluster", "members")
		return r.code == 0 && strings.Count(r.stdout, "127.0.0.1") == 6
	})
	// Joined nodes vote once they have caught up; the leader is killed
	// below, and two voters of three must remain.
	waitFor(t, 30*time.Second, "three voters", func() bool {
		r := execMbox(t, all, nil, "cluster", "status", "-o", "json")
		return r.code == 0 && strings.Contains(r.stdout, `"voters": 3`)
	})

	// A write sent to any node succeeds; a read on any node right after sees it.
	p := execMbox(t, env(endpoints[2]), nil, "project", "create", "--name", "demo", "-o", "json")
	if p.code != 0 {
		t.Fatalf("project create via n3: %v", p)
	}
	projectID := jsonField(t, p.stdout, "metadata", "id")
	s := execMbox(t, env(endpoints[1]), nil, "secret", "create", "--parent-id", projectID, "--name", "db", "--payload", "pw=first", "-o", "json")
	if s.code != 0 {
		t.Fatalf("secret create via n2: %v", s)
	}
	secretID := jsonField(t, s.stdout, "metadata", "id")
	for i, ep := range endpoints {
		v := execMbox(t, env(ep), nil, "version", "create", "--parent-id", secretID, "--payload", fmt.Sprintf("pw=v%d", i))
		if v.code != 0 {
			t.Fatalf("version create via %s: %v", ep, v)
		}
		for _, rep := range endpoints {
			r := execMbox(t, env(rep), nil, "payload", "get-by-key", "--secret-id", secretID, "--key", "pw")
			if r.code != 0 || r.stdout != fmt.Sprintf("v%d", i) {
				t.Fatalf("read via %s after write via %s: %v, want v%d", rep, ep, r, i)
			}
		}
	}

	// SIGKILL the leader: the CLI, given every endpoint, keeps working.
	st := execMbox(t, all, nil, "cluster", "status", "-o", "json")
	leaderID := jsonField(t, st.stdout, "leader_id")
	var leader *proc
	for _, n := range nodes {
		if n.name == leaderID {
			leader = n
		}
	}
	if leader == nil {
		t.Fatalf("leader %q not found in %s", leaderID, st.stdout)
	}
	leader.signal(syscall.SIGKILL)
	w := execMbox(t, append(all, "MYSTERYBOX_TIMEOUT=20s"), nil, "--timeout", "20s", "version", "create", "--parent-id", secretID, "--payload", "pw=after-kill")
	if w.code != 0 {
		t.Fatalf("write after killing the leader %s: %v", leaderID, w)
	}
	r := execMbox(t, all, nil, "--timeout", "20s", "payload", "get-by-key", "--secret-id", secretID, "--key", "pw")
	if r.code != 0 || r.stdout != "after-kill" {
		t.Fatalf("read after failover: %v", r)
	}
	// The killed node restarts from its data directory and catches up.
	<-leader.done
	leader.start(t)
	waitFor(t, 30*time.Second, leaderID+" to catch up", func() bool {
		r := execMbox(t, env(leader.grpc), nil, "--consistency", "stale", "payload", "get-by-key", "--secret-id", secretID, "--key", "pw")
		return r.code == 0 && r.stdout == "after-kill"
	})
	// SIGTERM drains every node and exits 0.
	for _, n := range nodes {
		n.signal(syscall.SIGTERM)
	}
	for _, n := range nodes {
		select {
		case <-n.done:
			if n.err != nil {
				t.Errorf("%s after SIGTERM: %v, want exit 0", n.name, n.err)
			}
		case <-time.After(40 * time.Second):
			t.Errorf("%s did not stop on SIGTERM", n.name)
		}
	}
}

func TestDevModeSurvivesRestart(t *testing.T) {
	if serverBuildErr != nil {
		t.Fatal(serverBuildErr)
	}
	dir := t.TempDir()
	g, _ := freeAddr()
	r, _ := freeAddr()
	gs, _ := freeAddr()
	dev := &proc{name: "dev", grpc: g, log: filepath.Join(dir, "dev.log"), args: []string{"--dev", "--data-dir", filepath.Join(dir, "data"), "--grpc-addr", g, "--raft-addr", r, "--gossip-addr", gs}}
	t.Cleanup(func() { dev.signal(syscall.SIGKILL) })
	dev.start(t)
	tokenFile := filepath.Join(dir, "data", "admin.token")
	var token string
	envOf := func() []string { return []string{"MYSTERYBOX_ENDPOINTS=" + g, "MYSTERYBOX_TOKEN=" + token} }
	waitFor(t, 30*time.Second, "the dev server to accept its admin token", func() bool {
		raw, err := os.ReadFile(tokenFile)
		if err != nil {
			return false
		}
		token = strings.TrimSpace(string(raw))
		return execMbox(t, envOf(), nil, "project", "list").code == 0
	})
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}
	p := execMbox(t, envOf(), nil, "project", "create", "--name", "keep", "-o", "json")
	projectID := jsonField(t, p.stdout, "metadata", "id")
	s := execMbox(t, envOf(), nil, "secret", "create", "--parent-id", projectID, "--name", "db", "--payload", "pw=persisted", "-o", "json")
	secretID := jsonField(t, s.stdout, "metadata", "id")
	dev.signal(syscall.SIGTERM)
	<-dev.done
	if dev.err != nil {
		t.Fatalf("dev server after SIGTERM: %v, want exit 0", dev.err)
	}
	before, _ := os.ReadFile(tokenFile)
	// The restart also moves the node's Raft log from the WAL (the default
	// of a new data directory) to raft-boltdb: the data survives that too.
	raftDir := filepath.Join(dir, "data", "raft")
	if _, err := os.Stat(filepath.Join(raftDir, "wal")); err != nil {
		t.Fatalf("a new data directory should keep its Raft log in wal/: %v", err)
	}
	dev.args = append(dev.args, "--raft-log-store", "boltdb")
	dev.start(t)
	waitFor(t, 30*time.Second, "the restarted dev server", func() bool {
		r := execMbox(t, envOf(), nil, "payload", "get-by-key", "--secret-id", secretID, "--key", "pw")
		return r.code == 0 && r.stdout == "persisted"
	})
	if after, _ := os.ReadFile(tokenFile); string(after) != string(before) {
		t.Fatal("the admin token file was rewritten on restart")
	}
	if _, err := os.Stat(filepath.Join(raftDir, "raft.db")); err != nil {
		t.Fatalf("after --raft-log-store boltdb the log should be in raft.db: %v", err)
	}
	if _, err := os.Stat(filepath.Join(raftDir, "wal")); !os.IsNotExist(err) {
		t.Fatalf("after migrating, wal/ should be gone: %v", err)
	}
	dev.signal(syscall.SIGTERM)
	<-dev.done
}

// TestUnknownRaftLogStoreIsAUsageError: a bad --raft-log-store (flag or
// environment) stops mysteryboxd before it touches the data directory,
// with exit 2 and a message naming the value and the choices.
func TestUnknownRaftLogStoreIsAUsageError(t *testing.T) {
	if serverBuildErr != nil {
		t.Fatal(serverBuildErr)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	for _, c := range []struct {
		args []string
		env  string
	}{
		{args: []string{"--raft-log-store", "rocksdb"}},
		{env: "MYSTERYBOX_RAFT_LOG_STORE=rocksdb"},
	} {
		cmd := exec.Command(serverBin, append([]string{"--dev", "--data-dir", dataDir}, c.args...)...)
		cmd.Env = cleanEnv()
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 {
			t.Fatalf("%v %s: %v, want exit 2\n%s", c.args, c.env, err, out)
		}
		for _, want := range []string{"--raft-log-store", `"rocksdb"`, `"wal"`, `"boltdb"`} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%v %s: the error does not name %s:\n%s", c.args, c.env, want, out)
			}
		}
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Fatalf("a usage error created the data directory: %v", err)
		}
	}
}
