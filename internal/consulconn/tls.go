package consulconn

import (
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// TLS is the client side of HTTPS to Consul. Empty fields keep what the environment says
// (CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME).
//
// Certificates are verified, always: there is no setting here to skip verification (only the consul
// CLI's own CONSUL_HTTP_SSL_VERIFY=false in the environment does that, as it does for the CLI).
type TLS struct {
	// CAFile and CAPath are the CA bundle (file or directory) the agents' certificates chain to.
	CAFile, CAPath string
	// CertFile and KeyFile are the client certificate and key, for agents with verify_incoming.
	CertFile, KeyFile string
	// ServerName is the name every agent's certificate is verified against, e.g. "server.dc1.consul"
	// or "localhost". Empty: each certificate is verified against the host the request goes to, the
	// local agent's address or, for fallbacks and the servers the health gates ask, that agent's IP; the
	// certificates then need those IPs (or names) among their SANs.
	ServerName string
}

// configured reports whether any TLS file or name was given.
func (t TLS) configured() bool {
	return t.CAFile != "" || t.CAPath != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// APIConfig returns the api.Config a Conn is built from: api.DefaultConfig() (the CONSUL_* environment)
// with cfg's overrides applied. Each call returns a fresh config with its own transport, so another client
// built from it (the health gates' per-server dialer) reaches Consul exactly as the Conn does: same
// scheme, token and TLS settings.
//
// The scheme is, in order: Config.Scheme; "https" written in the address (Config.Address or
// CONSUL_HTTP_ADDR); "https" when any TLS setting is given in cfg; the environment (CONSUL_HTTP_SSL).
func (cfg Config) APIConfig() (*api.Config, error) {
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	if cfg.TokenFile != "" {
		ac.TokenFile = cfg.TokenFile
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	setStr(&ac.TLSConfig.CAFile, cfg.TLS.CAFile)
	setStr(&ac.TLSConfig.CAPath, cfg.TLS.CAPath)
	setStr(&ac.TLSConfig.CertFile, cfg.TLS.CertFile)
	setStr(&ac.TLSConfig.KeyFile, cfg.TLS.KeyFile)
	setStr(&ac.TLSConfig.Address, cfg.TLS.ServerName)

	// Scheme is set explicitly even when the address carries one: clients made from this config for
	// other agents (Address "host:port") must keep it.
	addrScheme, _, hasScheme := strings.Cut(ac.Address, "://")
	switch {
	case cfg.Scheme == "http" || cfg.Scheme == "https":
		ac.Scheme = cfg.Scheme
	case cfg.Scheme != "":
		return nil, fmt.Errorf("%w: unknown scheme %q (use https or http)", ErrConfig, cfg.Scheme)
	case hasScheme && addrScheme == "https":
		ac.Scheme = "https"
	case hasScheme:
		// http:// keeps an https asked for by CONSUL_HTTP_SSL, as api.NewClient does; unix:// is local only.
	case cfg.TLS.configured():
		ac.Scheme = "https"
	}
	// Fail on unreadable or mismatched certificate files now, with the setting's name, rather than at
	// the first request.
	if _, err := api.SetupTLSConfig(&ac.TLSConfig); err != nil {
		return nil, fmt.Errorf("%w: failed to load the TLS files for consul (ca_file, cert_file, key_file): %w", ErrConfig, err)
	}
	return ac, nil
}

func setStr(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}
