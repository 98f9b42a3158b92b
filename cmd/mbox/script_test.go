package main

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freeBase finds a base port whose ports for regions 1..2, node 1 are free
// (scripts/cluster.sh: base + 100*r + 10*i + {0,1,2}).
func freeBase(t *testing.T) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := 20000 + rand.Intn(30000)
		ok := true
		for r := 1; r <= 2 && ok; r++ {
			for off := 0; off < 3 && ok; off++ {
				p := base + 100*r + 10 + off
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
				if err != nil {
					ok = false
					break
				}
				l.Close()
				u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
				if err != nil {
					ok = false
					break
				}
				u.Close()
			}
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free ports")
	return 0
}

// TestClusterScript runs scripts/cluster.sh with two regions of one node
// each and checks that each region's directory lists both.
func TestClusterScript(t *testing.T) { clusterScript(t, false) }

// TestClusterScriptTLS is the same deployment over TLS and mutual TLS.
func TestClusterScriptTLS(t *testing.T) { clusterScript(t, true) }

func clusterScript(t *testing.T, withTLS bool) {
	if serverBuildErr != nil {
		t.Fatal(serverBuildErr)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base := freeBase(t)
	script := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "scripts", "cluster.sh"), append(args, "--dir", dir)...)
		cmd.Env = append(cleanEnv(), "MYSTERYBOX_BIN_DIR="+testDir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cluster.sh %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	up := []string{"up", "--regions", "eu-north1,us-central1", "--nodes", "1", "--base-port", fmt.Sprint(base)}
	if withTLS {
		up = append(up, "--tls")
	}
	script(up...)
	t.Cleanup(func() { script("down") })
	for _, region := range []string{"eu-north1", "us-central1"} {
		var env []string
		waitFor(t, 30*time.Second, region+"'s admin token", func() bool {
			tok, err := os.ReadFile(filepath.Join(dir, region+".admin.token"))
			if err != nil || len(tok) == 0 {
				return false
			}
			eps, _ := os.ReadFile(filepath.Join(dir, region+"-n1", "grpc"))
			env = []string{"MYSTERYBOX_ENDPOINTS=" + strings.TrimSpace(string(eps)), "MYSTERYBOX_TOKEN=" + strings.TrimSpace(string(tok))}
			if withTLS {
				env = append(env, "MYSTERYBOX_CA_FILE="+filepath.Join(dir, "tls-"+region, "ca.pem"))
			}
			return true
		})
		waitFor(t, 30*time.Second, region+" to list both regions with their leaders", func() bool {
			r := execMbox(t, env, nil, "cluster", "regions", "-o", "json")
			return r.code == 0 && strings.Count(r.stdout, `"leader_id"`) == 2 &&
				strings.Contains(r.stdout, "eu-north1") && strings.Contains(r.stdout, "us-central1")
		})
	}
	if withTLS {
		// The TLS port refuses plaintext.
		eps, _ := os.ReadFile(filepath.Join(dir, "eu-north1-n1", "grpc"))
		tok, _ := os.ReadFile(filepath.Join(dir, "eu-north1.admin.token"))
		r := execMbox(t, []string{"MYSTERYBOX_ENDPOINTS=" + strings.TrimSpace(string(eps)), "MYSTERYBOX_TOKEN=" + strings.TrimSpace(string(tok))}, nil, "--timeout", "3s", "cluster", "status")
		if r.code == 0 {
			t.Fatalf("plaintext call to a TLS node succeeded: %v", r)
		}
	}
	if st := script("status"); strings.Count(st, "running") != 2 {
		t.Fatalf("status: %s", st)
	}
	script("down")
	if st := script("status"); strings.Count(st, "stopped") != 2 {
		t.Fatalf("status after down: %s", st)
	}
}
