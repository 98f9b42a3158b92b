package clustertest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/mysterybox/mysterybox/api/mysteryboxv1"
	"github.com/mysterybox/mysterybox/tlsutil"
)

func TestRegionOverMutualTLS(t *testing.T) {
	c := New(t, Options{Nodes: 3, TLS: true, SnapshotThreshold: 20, TrailingLogs: 5})
	f := c.Followers()
	_, secret := setup(t, c, f[0]) // forwarded to the leader over mTLS
	id := secret.GetMetadata().GetId()
	for i := 0; i < 40; i++ {
		if _, err := failoverCreateVersion(ctxT(t), c, id, fmt.Sprintf("v%d", i), fmt.Sprintf("tls-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := pb.NewPayloadServiceClient(c.Conn(f[1])).GetByKey(ctxT(t), &pb.GetPayloadByKeyRequest{SecretId: id, Key: "value"})
	if err != nil || got.GetEntry().GetStringValue() != "v39" {
		t.Fatalf("read through a follower over TLS: %v %v", got, err)
	}
	// A new node installs a snapshot over the TLS Raft transport.
	if err := c.WaitLeader().N.Raft.Snapshot(); err != nil {
		t.Fatal(err)
	}
	n := c.AddNode()
	c.WaitMembers(4)
	c.WaitConverged()
	if n.N.Raft.Stats()["last_snapshot_index"] == "0" {
		t.Fatal("the new node did not install a snapshot")
	}
	// Plaintext to the TLS port fails.
	conn, err := grpc.NewClient(n.Cfg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewClusterServiceClient(conn).Status(ctxT(t), &pb.ClusterStatusRequest{}); err == nil {
		t.Fatal("a plaintext call to a TLS port succeeded")
	}
}

// notJoined checks, over a few seconds, that id never enters the region.
func notJoined(t *testing.T, c *Cluster, id string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, sid := range raftIDs(t, c.WaitLeader()) {
			if sid == id {
				t.Fatalf("%s joined the region", id)
			}
		}
		<-time.After(100 * time.Millisecond)
	}
}

func TestPeersAndClientsWithTheWrongCertificatesAreRefused(t *testing.T) {
	logs := &syncBuffer{}
	c := New(t, Options{Nodes: 3, TLS: true, LogSink: logs})
	leader := c.WaitLeader()

	// A node whose certificate comes from another CA.
	otherCA, err := tlsutil.NewCA("rogue CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue := c.newNode()
	otherCAFile := filepath.Join(t.TempDir(), "rogue-ca.pem")
	pemCA, _, _ := otherCA.PEM()
	os.WriteFile(otherCAFile, pemCA, 0o600)
	rogue.Cfg.TLS = WriteNodeCert(t, otherCA, otherCAFile, rogue.ID, c.Region, rogue.Dir, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	c.start(rogue)
	notJoined(t, c, rogue.ID)
	c.Stop(rogue)

	// A node with a certificate of this CA, but for another region.
	foreign := c.newNode()
	foreign.Cfg.Region = "elsewhere1"
	foreign.Cfg.TLS = c.IssueNodeCert(foreign.ID, "elsewhere1", foreign.Dir, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	c.start(foreign)
	notJoined(t, c, foreign.ID)
	c.Stop(foreign)
	if !bytes.Contains(logs.Bytes(), []byte("names region")) {
		t.Error("no node logged why the other region's certificate was refused")
	}

	// A node whose certificate has expired.
	expired := c.newNode()
	expired.Cfg.TLS = c.IssueNodeCert(expired.ID, c.Region, expired.Dir, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	c.start(expired)
	notJoined(t, c, expired.ID)
	c.Stop(expired)

	// A client that does not trust the cluster CA cannot connect.
	pool := x509.NewCertPool()
	pool.AddCert(otherCA.Cert)
	conn, err := grpc.NewClient(leader.Cfg.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewClusterServiceClient(conn).Status(ctxT(t), &pb.ClusterStatusRequest{}); err == nil {
		t.Fatal("a client with an untrusted CA connected")
	}
}

func serverSerial(t *testing.T, c *Cluster, n *Node) string {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	conn, err := tls.Dial("tcp", n.Cfg.GRPCAddr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestCertificateReload(t *testing.T) {
	c := New(t, Options{Nodes: 1, TLS: true})
	n := c.Nodes[0]
	before := serverSerial(t, c, n)
	// Rotate the certificate on disk, then reload (what SIGHUP does).
	c.IssueNodeCert(n.ID, c.Region, n.Dir, time.Now().Add(-time.Minute), time.Now().Add(2*time.Hour))
	if err := n.N.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	after := serverSerial(t, c, n)
	if after == before {
		t.Fatalf("serial %s unchanged after reload", before)
	}
	if want := n.N.TLS.ServerSerial(); after != want {
		t.Fatalf("new connection sees serial %s, node reports %s", after, want)
	}
	// And the node keeps serving over the new certificate.
	if _, err := pb.NewClusterServiceClient(c.Dial(n, c.AdminToken)).Status(ctxT(t), &pb.ClusterStatusRequest{}); err != nil {
		t.Fatal(err)
	}
}

// TestGossipJoinNeedsAValidCertificate: with mutual TLS, knowing the gossip
// key is not enough to be added to Raft.
func TestGossipJoinNeedsAValidCertificate(t *testing.T) {
	c := New(t, Options{Nodes: 3, TLS: true, Gossip: true})
	otherCA, err := tlsutil.NewCA("rogue CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rogue := c.newNode()
	caFile := filepath.Join(t.TempDir(), "rogue-ca.pem")
	pemCA, _, _ := otherCA.PEM()
	os.WriteFile(caFile, pemCA, 0o600)
	rogue.Cfg.TLS = WriteNodeCert(t, otherCA, caFile, rogue.ID, c.Region, rogue.Dir, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	rogue.Cfg.BootstrapExpect = 0
	c.start(rogue)
	notJoined(t, c, rogue.ID)
	// A node with a good certificate is added as usual.
	good := c.AddNode()
	c.WaitMembers(4)
	_ = good
}
