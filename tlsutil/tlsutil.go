// Package tlsutil builds MysteryBox's TLS configurations: the client-facing
// gRPC server, and mutual TLS between the nodes of a region (Raft, leader
// forwarding, joins). Certificates and CAs are re-read on Reload (SIGHUP);
// new connections use the new ones.
//
// A node's certificate names its region and id in a URI SAN,
// mysterybox://<region>/<node-id>; a peer whose certificate names another
// region is refused on both sides.
package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// URIScheme is the scheme of the identity SAN of node certificates.
const URIScheme = "mysterybox"

// Files are the PEM files of one node.
type Files struct {
	// Client-facing gRPC: the node's certificate and key, and the CA that
	// signs client certificates (empty: no client certificates accepted
	// beyond the peer CA).
	CertFile, KeyFile, ClientCAFile string
	// ClientAuth: "none", "verify-if-given" or "require".
	ClientAuth string
	// Between nodes: the cluster CA and this node's peer certificate.
	PeerCAFile, PeerCertFile, PeerKeyFile string
}

// Enabled reports whether any TLS is configured.
func (f Files) Enabled() bool { return f.CertFile != "" || f.PeerCertFile != "" }

// material is one loaded generation of certificates.
type material struct {
	server     *tls.Certificate
	peer       *tls.Certificate
	peerCAs    *x509.CertPool
	clientCAs  *x509.CertPool // client CA and cluster CA: who may present a client certificate
	serverLeaf *x509.Certificate
}

// Manager holds the current certificates of a node.
type Manager struct {
	files  Files
	region string
	logger hclog.Logger
	cur    atomic.Pointer[material]
}

// New loads the files; region is the node's region (peer certificates must
// name it).
func New(files Files, region string, logger hclog.Logger) (*Manager, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	switch files.ClientAuth {
	case "", "none", "verify-if-given", "require":
	default:
		return nil, fmt.Errorf("tls: client auth %q: want none, verify-if-given or require", files.ClientAuth)
	}
	if files.PeerCertFile != "" && files.PeerCAFile == "" {
		return nil, errors.New("tls: a peer certificate needs --peer-ca-file")
	}
	m := &Manager{files: files, region: region, logger: logger}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// Reload re-reads every file. On error the previous certificates stay.
func (m *Manager) Reload() error {
	mat := &material{}
	f := m.files
	if f.CertFile != "" {
		c, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return fmt.Errorf("tls: server certificate: %w", err)
		}
		mat.server = &c
		mat.serverLeaf, _ = x509.ParseCertificate(c.Certificate[0])
	}
	if f.PeerCertFile != "" {
		c, err := tls.LoadX509KeyPair(f.PeerCertFile, f.PeerKeyFile)
		if err != nil {
			return fmt.Errorf("tls: peer certificate: %w", err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return fmt.Errorf("tls: peer certificate: %w", err)
		}
		if r, _, ok := Identity(leaf); !ok || r != m.region {
			return fmt.Errorf("tls: the peer certificate %s names region %q, this node is in %q", f.PeerCertFile, r, m.region)
		}
		mat.peer = &c
	}
	peerPEM, err := readPEM(f.PeerCAFile)
	if err != nil {
		return err
	}
	clientPEM, err := readPEM(f.ClientCAFile)
	if err != nil {
		return err
	}
	if peerPEM != nil {
		mat.peerCAs = x509.NewCertPool()
		mat.peerCAs.AppendCertsFromPEM(peerPEM)
	}
	if peerPEM != nil || clientPEM != nil {
		mat.clientCAs = x509.NewCertPool()
		mat.clientCAs.AppendCertsFromPEM(peerPEM)
		mat.clientCAs.AppendCertsFromPEM(clientPEM)
	}
	m.cur.Store(mat)
	if mat.serverLeaf != nil {
		m.logger.Info("TLS certificates loaded", "server_serial", mat.serverLeaf.SerialNumber.String(), "not_after", mat.serverLeaf.NotAfter)
	}
	return nil
}

func readPEM(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: CA file: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("tls: no certificate in CA file %s", path)
	}
	return raw, nil
}

// Identity reads region and node id from a certificate's mysterybox URI SAN.
func Identity(c *x509.Certificate) (region, node string, ok bool) {
	for _, u := range c.URIs {
		if u.Scheme == URIScheme && u.Host != "" {
			return u.Host, trimSlash(u.Path), true
		}
	}
	return "", "", false
}

func trimSlash(p string) string {
	for len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	return p
}

// IdentityURI is the SAN of a node certificate.
func IdentityURI(region, node string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: region, Path: "/" + node}
}

// checkPeer verifies a peer chain against the cluster CA and its region.
// Any key usage is accepted: an operator's PKI may issue node certificates
// for server use only, and what identifies a peer is its URI SAN.
func (m *Manager) checkPeer(rawCerts [][]byte, needRegion bool) error {
	mat := m.cur.Load()
	if len(rawCerts) == 0 {
		return errors.New("tls: peer presented no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return fmt.Errorf("tls: peer certificate: %w", err)
		}
		certs = append(certs, c)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: mat.peerCAs, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("tls: peer certificate is not from this cluster's CA: %w", err)
	}
	region, node, ok := Identity(certs[0])
	if needRegion && !ok {
		return errors.New("tls: peer certificate names no mysterybox region")
	}
	if ok && region != m.region {
		return fmt.Errorf("tls: peer certificate of node %s names region %s, this node is in region %s", node, region, m.region)
	}
	return nil
}

// ServerConfig is the client-facing gRPC server's TLS: the node's server
// certificate; client certificates are verified against the client CA and
// the cluster CA (peers forward with theirs), per ClientAuth.
func (m *Manager) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			mat := m.cur.Load()
			auth := tls.VerifyClientCertIfGiven
			switch m.files.ClientAuth {
			case "require":
				auth = tls.RequireAndVerifyClientCert
			case "none":
				if mat.clientCAs == nil {
					auth = tls.NoClientCert
				}
			}
			cfg := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*mat.server},
				ClientAuth:   auth,
				ClientCAs:    mat.clientCAs,
				// A client certificate that names another region is
				// refused, like the token of another region.
				VerifyPeerCertificate: func(raw [][]byte, chains [][]*x509.Certificate) error {
					if len(chains) == 0 || len(chains[0]) == 0 {
						return nil
					}
					if r, node, ok := Identity(chains[0][0]); ok && r != m.region {
						err := fmt.Errorf("tls: certificate of node %s names region %s, this node is in region %s", node, r, m.region)
						m.logger.Warn("refused a client certificate", "error", err)
						return err
					}
					return nil
				},
			}
			return cfg, nil
		},
	}
}

// PeerServerConfig is the TLS of the Raft listener: the peer certificate,
// and a client certificate from the cluster CA naming this region required.
func (m *Manager) PeerServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return m.cur.Load().peer, nil
		},
		ClientAuth: tls.RequireAnyClientCert, // verified below, against the current CA
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if err := m.checkPeer(raw, true); err != nil {
				m.logger.Warn("refused a peer connection", "error", err)
				return err
			}
			return nil
		},
	}
}

// PeerClientConfig is the TLS a node dials its peers' client-facing gRPC
// port with (forwarding, joins, status): it presents its peer certificate
// and accepts only servers whose certificate chains to the cluster CA and
// names this region if it names one (a gRPC server certificate need not
// name a node).
func (m *Manager) PeerClientConfig() *tls.Config { return m.dialConfig(false) }

// RaftClientConfig is the TLS a node dials its peers' Raft port with, and
// checks a node with before it enters the Raft configuration: the peer must
// present a node certificate of the cluster CA naming this region. A
// certificate of the CA that names no region (a client certificate, say)
// is refused: its holder would otherwise be taken for a voter.
func (m *Manager) RaftClientConfig() *tls.Config { return m.dialConfig(true) }

func (m *Manager) dialConfig(needRegion bool) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified in VerifyPeerCertificate against the current CA
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if p := m.cur.Load().peer; p != nil {
				return p, nil
			}
			return &tls.Certificate{}, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if err := m.checkPeer(raw, needRegion); err != nil {
				m.logger.Warn("refused to talk to a peer", "error", err)
				return err
			}
			return nil
		},
	}
}

// ServerSerial is the serial number of the current server certificate.
func (m *Manager) ServerSerial() string {
	if l := m.cur.Load().serverLeaf; l != nil {
		return l.SerialNumber.String()
	}
	return ""
}
