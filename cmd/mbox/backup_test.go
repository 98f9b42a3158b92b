package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSnapshotSaveAndOfflineRestore saves a backup of the dev server with
// mbox, checks that damaged files are refused, seeds a new data directory
// from it with `mysteryboxd restore`, and starts a new region there.
func TestSnapshotSaveAndOfflineRestore(t *testing.T) {
	s := needServer(t)
	p := ok(t, "project", "create", "--name", uniq("bk"), "-o", "json")
	projectID := jsonField(t, p, "metadata", "id")
	sec := ok(t, "secret", "create", "--parent-id", projectID, "--name", "db", "--payload", "pw=backed-up", "-o", "json")
	secretID := jsonField(t, sec, "metadata", "id")

	dir := t.TempDir()
	file := filepath.Join(dir, "region.mbx")
	out := ok(t, "snapshot", "save", file)
	if !strings.Contains(out, "saved region local1") {
		t.Fatalf("save: %q", out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	data, _ := os.ReadFile(file)
	truncated := filepath.Join(dir, "truncated.mbx")
	os.WriteFile(truncated, data[:len(data)-10], 0o600)
	fail(t, exitError, "INVALID_ARGUMENT", "snapshot", "restore", truncated)
	// -o json describes the saved backup.
	saved := ok(t, "snapshot", "save", filepath.Join(dir, "again.mbx"), "-o", "json")
	if jsonField(t, saved, "region") != "local1" || jsonField(t, saved, "file") != filepath.Join(dir, "again.mbx") || !strings.Contains(saved, `"raft_index"`) {
		t.Fatalf("save -o json: %s", saved)
	}

	// The audit log recorded the backup's subject calls and verifies.
	if v := ok(t, "audit", "verify"); !strings.HasPrefix(v, "ok:") {
		t.Fatalf("audit verify: %q", v)
	}
	if l := ok(t, "audit", "list", "--resource", secretID); !strings.Contains(l, "Create") {
		t.Fatalf("audit list for the secret: %q", l)
	}

	// Disaster recovery: a new node from the file alone (and the keyring).
	newDir := filepath.Join(dir, "data")
	if out, err := exec.Command(serverBin, "restore", "--data-dir", newDir, "--region", "local1", file).CombinedOutput(); err != nil {
		t.Fatalf("mysteryboxd restore: %v\n%s", err, out)
	}
	if out, err := exec.Command(serverBin, "restore", "--data-dir", newDir, file).CombinedOutput(); err == nil {
		t.Fatalf("a second restore into a used data directory succeeded: %s", out)
	}
	keyring, _ := os.ReadFile(filepath.Join(s.dataDir, "dev-keyring.json"))
	os.WriteFile(filepath.Join(newDir, "dev-keyring.json"), keyring, 0o600)
	g, _ := freeAddr()
	r, _ := freeAddr()
	gs, _ := freeAddr()
	dev := &proc{name: "restored", grpc: g, log: filepath.Join(dir, "restored.log"), args: []string{"--dev", "--data-dir", newDir, "--grpc-addr", g, "--raft-addr", r, "--gossip-addr", gs}}
	t.Cleanup(func() { dev.signal(syscall.SIGKILL) })
	dev.start(t)
	env := []string{"MYSTERYBOX_ENDPOINTS=" + g, "MYSTERYBOX_TOKEN=" + s.token}
	waitFor(t, 30*time.Second, "the restored region to serve the backed-up secret", func() bool {
		r := execMbox(t, env, nil, "payload", "get-by-key", "--secret-id", secretID, "--key", "pw")
		return r.code == 0 && r.stdout == "backed-up"
	})
	// And it takes new writes on top.
	if r := execMbox(t, env, nil, "version", "create", "--parent-id", secretID, "--payload", "pw=after"); r.code != 0 {
		t.Fatalf("write after restore: %v", r)
	}
	dev.signal(syscall.SIGTERM)
	<-dev.done
}
