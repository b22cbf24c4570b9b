package config

import (
	"strings"
	"testing"
)

// TestConsulBlock: the TLS and token settings of the consul block parse, merge and validate.
func TestConsulBlock(t *testing.T) {
	cases := []struct {
		name    string
		src     string
		wantErr string
		check   func(t *testing.T, c *Consul)
	}{
		{name: "tls and tokens", src: minimal + `
consul {
  address             = "https://127.0.0.1:8501"
  token_file          = "/etc/upgrader/token"
  snapshot_token_file = "/etc/upgrader/snapshot-token"
  ca_file             = "/etc/consul.d/ca.pem"
  cert_file           = "/etc/consul.d/client.pem"
  key_file            = "/etc/consul.d/client-key.pem"
  tls_server_name     = "server.dc1.consul"
  scheme              = "https"
}`, check: func(t *testing.T, c *Consul) {
			if c.SnapshotTokenFile != "/etc/upgrader/snapshot-token" || c.TokenFile != "/etc/upgrader/token" ||
				c.CAFile != "/etc/consul.d/ca.pem" || c.CertFile != "/etc/consul.d/client.pem" ||
				c.KeyFile != "/etc/consul.d/client-key.pem" || c.TLSServerName != "server.dc1.consul" || c.Scheme != "https" {
				t.Fatalf("consul block not applied: %+v", c)
			}
		}},
		{name: "cert without key", src: minimal + `consul { cert_file = "/c.pem" }`, wantErr: "consul.cert_file and consul.key_file go together"},
		{name: "key without cert", src: minimal + `consul { key_file = "/k.pem" }`, wantErr: "consul.cert_file and consul.key_file go together"},
		{name: "bad scheme", src: minimal + `consul { scheme = "tls" }`, wantErr: `consul.scheme "tls" is unknown`},
		{name: "token in the file is refused", src: minimal + `consul { token = "s3cr3t" }`, wantErr: "token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("test.hcl", []byte(tc.src))
			if err == nil {
				err = c.Finalize()
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, c.Consul)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("the error repeats the token: %v", err)
			}
		})
	}

	// A flag or an override merges over the file.
	c, err := Parse("test.hcl", []byte(minimal+`consul { snapshot_token_file = "/a" }`))
	if err != nil {
		t.Fatal(err)
	}
	c.Merge(&Config{Consul: &Consul{SnapshotTokenFile: "/b"}})
	if c.Consul.SnapshotTokenFile != "/b" {
		t.Fatalf("merge: %q", c.Consul.SnapshotTokenFile)
	}
}
