package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitAndIdentity(t *testing.T) {
	dir := t.TempDir()
	if err := Init(dir, "eu-north1", []string{"n1", "n2"}, []string{"mb.example.com"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "n1.pem", "n1-key.pem", "n2.pem", "n2-key.pem", "client.pem", "client-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "n2.pem"))
	block, _ := pem.Decode(raw)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	region, node, ok := Identity(cert)
	if !ok || region != "eu-north1" || node != "n2" {
		t.Fatalf("identity %q %q %v", region, node, ok)
	}
	// The client certificate is for client use only: it cannot serve as a
	// node's or a server's.
	rawClient, _ := os.ReadFile(filepath.Join(dir, "client.pem"))
	cb, _ := pem.Decode(rawClient)
	clientCert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(clientCert.ExtKeyUsage) != 1 || clientCert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(clientCert.URIs) != 0 {
		t.Fatalf("client.pem: usages %v, URIs %v; want client auth only and no identity", clientCert.ExtKeyUsage, clientCert.URIs)
	}
	if len(cert.IPAddresses) < 2 || !strings.Contains(strings.Join(cert.DNSNames, ","), "mb.example.com") {
		t.Fatalf("SANs: %v %v", cert.IPAddresses, cert.DNSNames)
	}
	files := Files{CertFile: filepath.Join(dir, "n1.pem"), KeyFile: filepath.Join(dir, "n1-key.pem"), PeerCAFile: filepath.Join(dir, "ca.pem"),
		PeerCertFile: filepath.Join(dir, "n1.pem"), PeerKeyFile: filepath.Join(dir, "n1-key.pem")}
	if _, err := New(files, "eu-north1", nil); err != nil {
		t.Fatal(err)
	}
	// A node refuses to start with a peer certificate of another region.
	if _, err := New(files, "us-central1", nil); err == nil || !strings.Contains(err.Error(), "names region") {
		t.Fatalf("peer certificate of another region accepted: %v", err)
	}
	files.ClientAuth = "sometimes"
	if _, err := New(files, "eu-north1", nil); err == nil {
		t.Fatal("bad client auth accepted")
	}
}

// A node dialing a peer's Raft port (or checking a node before it enters
// Raft) accepts only a node certificate naming its region: `tls init`'s
// client certificate chains to the same CA, and its holder must not pass
// for a node. Dialing a peer's gRPC port accepts a certificate of the CA
// that names no node (it cannot be a Raft member, which forwarding needs).
func TestDialingAPeerNeedsANodeCertificate(t *testing.T) {
	dir := t.TempDir()
	p := func(s string) string { return filepath.Join(dir, s) }
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name, region, node string) *Issued {
		is, err := ca.Issue(name, region, node, DefaultHosts, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return is
	}
	n1, n2 := issue("n1", "eu-north1", "n1"), issue("n2", "eu-north1", "n2")
	client, err := ca.IssueClient("client", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{"ca.pem": caPEM, "n1.pem": n1.CertPEM, "n1-key.pem": n1.KeyPEM} {
		if err := os.WriteFile(p(f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err := New(Files{CertFile: p("n1.pem"), KeyFile: p("n1-key.pem"), PeerCAFile: p("ca.pem"), PeerCertFile: p("n1.pem"), PeerKeyFile: p("n1-key.pem")}, "eu-north1", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A gRPC server certificate of the CA that names no node, as an
	// operator may give the client-facing port.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "grpc"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	grpcCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	grpcKey := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	// serving returns the address of a TLS listener presenting cert.
	serving := func(certPEM, keyPEM []byte) string {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	dial := func(addr string, cfg *tls.Config) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	node2 := serving(n2.CertPEM, n2.KeyPEM)
	clientAddr := serving(client.CertPEM, client.KeyPEM)
	grpcOnly := serving(grpcCert, grpcKey)
	for _, c := range []struct {
		name string
		addr string
		cfg  *tls.Config
		ok   bool
	}{
		{"Raft: node certificate", node2, m.RaftClientConfig(), true},
		{"Raft: client certificate", clientAddr, m.RaftClientConfig(), false},
		{"Raft: server certificate naming no region", grpcOnly, m.RaftClientConfig(), false},
		{"gRPC: node certificate", node2, m.PeerClientConfig(), true},
		{"gRPC: server certificate naming no region", grpcOnly, m.PeerClientConfig(), true},
	} {
		if err := dial(c.addr, c.cfg); (err == nil) != c.ok {
			t.Errorf("%s: dial err = %v, want accepted = %v", c.name, err, c.ok)
		}
	}
}
