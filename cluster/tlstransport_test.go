package cluster

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/mysterybox/mysterybox/tlsutil"
)

// A peer that connects to the Raft port and never completes the TLS
// handshake is dropped after tlsHandshakeTimeout, instead of holding the
// goroutine Raft serves the connection on for good.
func TestRaftPortDropsAStalledHandshake(t *testing.T) {
	defer func(d time.Duration) { tlsHandshakeTimeout = d }(tlsHandshakeTimeout)
	tlsHandshakeTimeout = 200 * time.Millisecond
	ca, err := tlsutil.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	is, err := ca.Issue("n1", "eu1", "n1", tlsutil.DefaultHosts, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(is.CertPEM, is.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := newTLSStreamLayer("127.0.0.1:0", nil, &tls.Config{Certificates: []tls.Certificate{cert}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	raw, err := net.Dial("tcp", layer.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close() // connected, and silent
	conn, err := layer.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read on a connection that never shook hands succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a connection that never completes its handshake is held past the handshake timeout")
	}
}
