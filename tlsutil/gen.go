package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority made by Init, for tests and small
// deployments; production uses its own PKI (see docs/operations.md).
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

// NewCA makes a self-signed ECDSA P-256 CA valid for the given time.
func NewCA(name string, validFor time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"MysteryBox"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key}, err
}

// Issued is a certificate with its key, PEM encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Issue signs a certificate for server and client use. region and node
// (optional) go into the mysterybox URI SAN; hosts become DNS or IP SANs.
func (ca *CA) Issue(commonName, region, node string, hosts []string, notBefore, notAfter time.Time) (*Issued, error) {
	return ca.issue(commonName, region, node, hosts, notBefore, notAfter, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
}

// IssueClient signs a certificate for client use only: it cannot serve as
// a node's or a server's.
func (ca *CA) IssueClient(commonName string, notBefore, notAfter time.Time) (*Issued, error) {
	return ca.issue(commonName, "", "", nil, notBefore, notAfter, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(commonName, region, node string, hosts []string, notBefore, notAfter time.Time, usage ...x509.ExtKeyUsage) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"MysteryBox"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	if region != "" {
		tmpl.URIs = append(tmpl.URIs, IdentityURI(region, node))
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Cert:    cert,
	}, nil
}

// PEM returns the CA certificate and key, PEM encoded.
func (ca *CA) PEM() (certPEM, keyPEM []byte, err error) {
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// DefaultHosts are the SANs every certificate from Init carries.
var DefaultHosts = []string{"127.0.0.1", "::1", "localhost"}

// Init writes a CA, one certificate per node of region, and a client
// certificate into dir:
//
//	ca.pem ca-key.pem  <node>.pem <node>-key.pem  client.pem client-key.pem
func Init(dir, region string, nodes, hosts []string, validFor time.Duration) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := NewCA("MysteryBox "+region+" CA", validFor)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return err
	}
	files := map[string][]byte{"ca.pem": certPEM, "ca-key.pem": keyPEM}
	allHosts := append(append([]string{}, DefaultHosts...), hosts...)
	now := time.Now().Add(-time.Minute)
	for _, n := range nodes {
		is, err := ca.Issue(n+"."+region, region, n, allHosts, now, now.Add(validFor))
		if err != nil {
			return err
		}
		files[n+".pem"], files[n+"-key.pem"] = is.CertPEM, is.KeyPEM
	}
	cl, err := ca.IssueClient("client", now, now.Add(validFor))
	if err != nil {
		return err
	}
	files["client.pem"], files["client-key.pem"] = cl.CertPEM, cl.KeyPEM
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
	}
	return nil
}
