package fleet

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

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// PortHTTPS is the agents' HTTPS port in a TLS fleet (their HTTP port is closed).
const PortHTTPS = 8501

// PKI is a throwaway certificate authority and the certificates it issued, as PEM files: a CA, one
// certificate per node (server and client use; SANs: the node's IP, "server.<dc>.consul", "localhost"),
// and one client certificate for the harness.
type PKI struct {
	Dir       string
	CAFile    string
	NodeCerts map[string][2]string // node -> cert file, key file
	Harness   [2]string            // the harness's client certificate and key

	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

// NewPKI creates the CA and the certificates for nodes in dir.
func NewPKI(dir, datacenter string, nodes []*testcluster.Node, now time.Time) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upgrader test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("fleet: failed to create the test CA: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, CAFile: filepath.Join(dir, "ca.pem"), NodeCerts: map[string][2]string{}, ca: ca, key: key}
	if err := writePEM(p.CAFile, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	serial := int64(2)
	for _, n := range nodes {
		c, k, err := p.issue(n.Name, serial, now, []net.IP{net.ParseIP(n.IP)}, "server."+datacenter+".consul", "localhost")
		if err != nil {
			return nil, err
		}
		p.NodeCerts[n.Name] = [2]string{c, k}
		serial++
	}
	c, k, err := p.issue("harness", serial, now, nil)
	if err != nil {
		return nil, err
	}
	p.Harness = [2]string{c, k}
	return p, nil
}

func (p *PKI) issue(name string, serial int64, now time.Time, ips []net.IP, dns ...string) (string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips, DNSNames: dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		return "", "", fmt.Errorf("fleet: failed to issue the certificate of %s: %w", name, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	cert, keyFile := filepath.Join(p.Dir, name+".pem"), filepath.Join(p.Dir, name+"-key.pem")
	if err := writePEM(cert, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return cert, keyFile, writePEM(keyFile, "EC PRIVATE KEY", kder)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// tlsAgentConfig is the extra config file of one node in a TLS fleet: HTTPS only, client certificates
// required. It goes into its own file in the node's config dir: Consul merges the files, and agent.hcl
// already has a ports block.
func (p *PKI) tlsAgentConfig(node string) string {
	c := p.NodeCerts[node]
	return fmt.Sprintf(`ports {
  http  = -1
  https = %d
}
tls {
  defaults {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
  }
  https {
    verify_incoming = true
  }
}
`, PortHTTPS, p.CAFile, c[0], c[1])
}

// HTTPSAddr is a node's HTTPS address.
func HTTPSAddr(n *testcluster.Node) string {
	return net.JoinHostPort(n.IP, fmt.Sprint(PortHTTPS))
}

// clientConfig points the harness's API clients at HTTPS with the harness certificate.
func (p *PKI) clientConfig(n *testcluster.Node, cfg *api.Config) {
	cfg.Address = HTTPSAddr(n)
	cfg.Scheme = "https"
	cfg.TLSConfig = api.TLSConfig{CAFile: p.CAFile, CertFile: p.Harness[0], KeyFile: p.Harness[1]}
	// api.NewClient builds the HTTP client from the transport and TLSConfig, but only sets up TLS on a
	// transport without a TLS config (a clone of http.DefaultTransport may carry an HTTP/2 one).
	if cfg.Transport != nil {
		cfg.Transport.TLSClientConfig = nil
	}
	cfg.HttpClient = nil
}
