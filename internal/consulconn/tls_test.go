package consulconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/health"
)

// Address block of this package's TLS tests: 127.0.44.x (loopback listeners only, no Consul).

// testPKI is a throwaway CA that signs server and client certificates, written as PEM files.
type testPKI struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	CA   string // the CA certificate file
	pool *x509.CertPool
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &testPKI{dir: t.TempDir(), cert: cert, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(cert)
	p.CA = p.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *testPKI) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for ips and dnsNames (server and client use) and returns its cert and key
// files and the tls.Certificate.
func (p *testPKI) issue(t *testing.T, name string, ips []string, dnsNames ...string) (certFile, keyFile string, tc tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dnsNames,
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = p.write(t, name+".pem", "CERTIFICATE", der)
	keyFile = p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
	tc, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, tc
}

// tlsAgent is an HTTPS stand-in for an agent on ip that demands a client certificate from p's CA (as
// Consul with verify_incoming does) and records the client certificate's name.
func tlsAgent(t *testing.T, p *testPKI, ip string, cert tls.Certificate) (*agent, *[]string) {
	t.Helper()
	var clients []string
	a := &agent{}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.paths = append(a.paths, r.Method+" "+r.URL.Path)
		if len(r.TLS.PeerCertificates) > 0 {
			clients = append(clients, r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		a.mu.Unlock()
		w.Header().Set("X-Consul-Index", "7")
		switch r.URL.Path {
		case "/v1/status/leader":
			fmt.Fprint(w, `"127.0.44.1:8300"`)
		default:
			fmt.Fprint(w, `[{"Key":"k","Value":"aGk=","ModifyIndex":7}]`)
		}
	}))
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	a.srv.Listener.Close()
	a.srv.Listener = l
	a.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool}
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a, &clients
}

// deadOn returns ip:port on which nothing listens.
func deadOn(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func isCertError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	return err != nil && (errors.As(err, &unknown) || errors.As(err, &host) || strings.Contains(err.Error(), "certificate"))
}

// TestTLS_ConfigFilesAndClientCert: ca_file, cert_file and key_file from the configuration reach an agent
// that demands a client certificate; the scheme becomes https without being spelled out.
func TestTLS_ConfigFilesAndClientCert(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	_, _, srvCert := p.issue(t, "s1", []string{"127.0.44.1"})
	cliCert, cliKey, _ := p.issue(t, "upgrader-s1", nil)
	a, clients := tlsAgent(t, p, "127.0.44.1", srvCert)

	c, _ := newConn(t, Config{Address: a.addr(), TLS: TLS{CAFile: p.CA, CertFile: cliCert, KeyFile: cliKey}})
	if c.Scheme() != "https" {
		t.Fatalf("scheme %q, want https when TLS files are configured", c.Scheme())
	}
	if _, _, err := c.API().KV().Get("k", nil); err != nil {
		t.Fatalf("request with config TLS files: %v", err)
	}
	a.mu.Lock()
	got := append([]string(nil), *clients...)
	a.mu.Unlock()
	if len(got) != 1 || got[0] != "upgrader-s1" {
		t.Fatalf("client certificates seen by the agent: %v", got)
	}

	// Without the client certificate the agent refuses the handshake.
	c2, _ := newConn(t, Config{Address: a.addr(), TLS: TLS{CAFile: p.CA}})
	if _, _, err := c2.API().KV().Get("k", nil); err == nil {
		t.Fatal("an agent that demands a client certificate answered a client without one")
	}
}

// TestTLS_ConfigOverridesEnvironment: CONSUL_CACERT/CLIENT_CERT/CLIENT_KEY are used when the config says
// nothing, and the config's files win over them.
func TestTLS_ConfigOverridesEnvironment(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	other := newTestPKI(t, "other")
	_, _, srvCert := p.issue(t, "s1", []string{"127.0.44.1"})
	cliCert, cliKey, _ := p.issue(t, "env-client", nil)
	a, _ := tlsAgent(t, p, "127.0.44.1", srvCert)

	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", p.CA)
	t.Setenv("CONSUL_CLIENT_CERT", cliCert)
	t.Setenv("CONSUL_CLIENT_KEY", cliKey)
	c, _ := newConn(t, Config{Address: a.addr()})
	if _, _, err := c.API().KV().Get("k", nil); err != nil {
		t.Fatalf("request with TLS from the environment: %v", err)
	}

	// A config ca_file naming another CA beats the environment's: verification must now fail.
	c2, _ := newConn(t, Config{Address: a.addr(), TLS: TLS{CAFile: other.CA}})
	if _, _, err := c2.API().KV().Get("k", nil); !isCertError(err) {
		t.Fatalf("config ca_file did not override CONSUL_CACERT: err = %v", err)
	}
}

// TestTLS_FallbackVerifiedByIP: with no tls_server_name, the failover to a fallback agent verifies that
// agent's certificate against the fallback's own IP (not the local agent's), with the same CA and client
// certificate; a fallback whose certificate does not name its IP is refused, never trusted silently.
func TestTLS_FallbackVerifiedByIP(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	_, _, s2 := p.issue(t, "s2", []string{"127.0.44.2"})
	_, _, wrong := p.issue(t, "s3", []string{"127.0.44.9"})
	cliCert, cliKey, _ := p.issue(t, "upgrader-s1", nil)
	fb, _ := tlsAgent(t, p, "127.0.44.2", s2)
	bad, _ := tlsAgent(t, p, "127.0.44.3", wrong)
	tlsCfg := TLS{CAFile: p.CA, CertFile: cliCert, KeyFile: cliKey}

	c, _ := newConn(t, Config{Address: deadOn(t, "127.0.44.1"), TLS: tlsCfg, Fallbacks: []string{fb.addr()}})
	if _, _, err := c.API().KV().Get("k", nil); err != nil {
		t.Fatalf("TLS failover to %s: %v", fb.addr(), err)
	}
	if got := fb.seen(); len(got) != 1 {
		t.Fatalf("fallback saw %v", got)
	}
	c2, _ := newConn(t, Config{Address: deadOn(t, "127.0.44.1"), TLS: tlsCfg, Fallbacks: []string{bad.addr()}})
	if _, _, err := c2.API().KV().Get("k", nil); !isCertError(err) {
		t.Fatalf("a fallback whose certificate lacks its IP was accepted: err = %v", err)
	}
}

// TestTLS_ServerName: certificates that name only "server.dc1.consul" verify when tls_server_name says
// so, for the local agent and the fallbacks alike, and fail without it.
func TestTLS_ServerName(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	_, _, s1 := p.issue(t, "s1", nil, "server.dc1.consul")
	_, _, s2 := p.issue(t, "s2", nil, "server.dc1.consul")
	cliCert, cliKey, _ := p.issue(t, "upgrader", nil)
	local, _ := tlsAgent(t, p, "127.0.44.1", s1)
	fb, _ := tlsAgent(t, p, "127.0.44.2", s2)
	tlsCfg := TLS{CAFile: p.CA, CertFile: cliCert, KeyFile: cliKey}

	c, _ := newConn(t, Config{Address: local.addr(), TLS: tlsCfg})
	if _, _, err := c.API().KV().Get("k", nil); !isCertError(err) {
		t.Fatalf("a certificate without the IP verified without tls_server_name: err = %v", err)
	}
	tlsCfg.ServerName = "server.dc1.consul"
	c2, _ := newConn(t, Config{Address: local.addr(), TLS: tlsCfg})
	if _, _, err := c2.API().KV().Get("k", nil); err != nil {
		t.Fatalf("local agent with tls_server_name: %v", err)
	}
	c3, _ := newConn(t, Config{Address: deadOn(t, "127.0.44.1"), TLS: tlsCfg, Fallbacks: []string{fb.addr()}})
	if _, _, err := c3.API().KV().Get("k", nil); err != nil {
		t.Fatalf("fallback with tls_server_name: %v", err)
	}
}

// TestTLS_APIConfigForDialer: the health gates' per-server dialer, built from Config.APIConfig, reaches
// another server over HTTPS with the same CA, client certificate and token, verified by that server's IP.
func TestTLS_APIConfigForDialer(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	_, _, s2 := p.issue(t, "s2", []string{"127.0.44.2"})
	cliCert, cliKey, _ := p.issue(t, "upgrader-s1", nil)
	peer, clients := tlsAgent(t, p, "127.0.44.2", s2)

	ac, err := Config{Address: "127.0.44.1:8501", TLS: TLS{CAFile: p.CA, CertFile: cliCert, KeyFile: cliKey}}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	if ac.Scheme != "https" || ac.TLSConfig.InsecureSkipVerify {
		t.Fatalf("APIConfig scheme %q insecure %v", ac.Scheme, ac.TLSConfig.InsecureSkipVerify)
	}
	d := health.NewDialer(ac)
	defer d.Close()
	e, err := d.Dial(peer.addr())
	if err != nil {
		t.Fatal(err)
	}
	leader, err := e.Status.LeaderWithQueryOptions(nil)
	if err != nil || leader != "127.0.44.1:8300" {
		t.Fatalf("leader through the dialer: %q, %v", leader, err)
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(*clients) != 1 || (*clients)[0] != "upgrader-s1" {
		t.Fatalf("client certificates seen by the peer: %v", *clients)
	}
}

// TestTLS_BadFiles: unreadable or mismatched files fail New with the settings' names.
func TestTLS_BadFiles(t *testing.T) {
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	cert, _, _ := p.issue(t, "a", nil)
	_, otherKey, _ := p.issue(t, "b", nil)
	cases := []struct {
		name string
		tls  TLS
	}{
		{"missing ca", TLS{CAFile: filepath.Join(t.TempDir(), "nope.pem")}},
		{"key of another cert", TLS{CAFile: p.CA, CertFile: cert, KeyFile: otherKey}},
		{"cert without key", TLS{CAFile: p.CA, CertFile: cert}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{Address: "127.0.44.1:8501", TLS: tc.tls})
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "ca_file, cert_file, key_file") {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if _, err := New(Config{Address: "127.0.44.1:8501", Scheme: "ftp"}); !errors.Is(err, ErrConfig) {
		t.Fatalf("unknown scheme: %v", err)
	}
}

// TestTLS_SchemeInAddressReachesTheDialer: an "https://" address (config or CONSUL_HTTP_ADDR) sets the
// scheme of APIConfig itself, so a client made from it for another server's "host:port" speaks HTTPS too.
func TestTLS_SchemeInAddressReachesTheDialer(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	p := newTestPKI(t, "dc1")
	_, _, s2 := p.issue(t, "s2", []string{"127.0.44.2"})
	cliCert, cliKey, _ := p.issue(t, "upgrader-s1", nil)
	peer, _ := tlsAgent(t, p, "127.0.44.2", s2)
	t.Setenv("CONSUL_CACERT", p.CA)
	t.Setenv("CONSUL_CLIENT_CERT", cliCert)
	t.Setenv("CONSUL_CLIENT_KEY", cliKey)

	for name, cfg := range map[string]Config{
		"config address": {Address: "https://127.0.44.1:8501"},
		"env address":    {},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("CONSUL_HTTP_ADDR", "https://127.0.44.1:8501")
			ac, err := cfg.APIConfig()
			if err != nil {
				t.Fatal(err)
			}
			if ac.Scheme != "https" {
				t.Fatalf("scheme %q, want https", ac.Scheme)
			}
			d := health.NewDialer(ac)
			defer d.Close()
			e, err := d.Dial(peer.addr())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Status.LeaderWithQueryOptions(nil); err != nil {
				t.Fatalf("peer over the dialer: %v", err)
			}
		})
	}
}
