package cluster

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer carries Raft over mutual TLS: the listener requires a
// peer certificate of the cluster CA naming this region, and dialing
// presents this node's (see tlsutil's peer configurations).
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	client    *tls.Config
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	return &tlsStreamLayer{ln: tls.NewListener(ln, server), advertise: advertise, client: client}, nil
}

// Accept hands Raft a connection whose handshake must finish within
// tlsHandshakeTimeout of its first use: Raft serves each connection on a
// goroutine of its own, and without a deadline a peer that never completes
// the handshake (anyone who can reach the port) would hold one for good.
func (t *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		return c, nil
	}
	return &handshakeDeadlineConn{Conn: tc}, nil
}

func (t *tlsStreamLayer) Close() error   { return t.ln.Close() }
func (t *tlsStreamLayer) Addr() net.Addr { return t.advertise }

// tlsHandshakeTimeout bounds an accepted connection's TLS handshake (a
// variable for tests).
var tlsHandshakeTimeout = 10 * time.Second

// handshakeDeadlineConn runs the TLS handshake, under a deadline, on the
// connection's first read or write.
type handshakeDeadlineConn struct {
	*tls.Conn
	once sync.Once
	err  error
}

func (c *handshakeDeadlineConn) handshake() error {
	c.once.Do(func() {
		c.Conn.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
		if c.err = c.Conn.Handshake(); c.err == nil {
			c.err = c.Conn.SetDeadline(time.Time{})
		}
	})
	return c.err
}

func (c *handshakeDeadlineConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *handshakeDeadlineConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (t *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	conn, err := tls.DialWithDialer(d, "tcp", string(address), t.client)
	if err != nil {
		return nil, err
	}
	return conn, nil
}
