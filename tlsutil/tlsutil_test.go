package tlsutil

import (
	"crypto/x509"
	"encoding/pem"
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
