// Package consulconn owns how the upgrader reaches Consul: an *api.Client configured exactly like the consul
// CLI (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN[_FILE], CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY, CONSUL_HTTP_SSL, ...)
// plus explicit overrides, whose HTTP transport sends every request to the local agent first and, when that
// agent cannot be reached at all, to fallback agents. The upgrader restarts its own local agent, so anything
// that must keep working across that restart (lock renewal, the lock watch) goes through this client.
package consulconn

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// ErrConfig is the prefix of configuration errors returned by New.
var ErrConfig = errors.New("consulconn: invalid configuration")

// Config holds the overrides applied on top of api.DefaultConfig() (which reads the CONSUL_* environment).
// Empty fields keep what the environment says.
type Config struct {
	// Address of the local agent: "host:port", "http://host:port" or "https://host:port".
	// Empty: CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string
	// Token overrides CONSUL_HTTP_TOKEN; TokenFile overrides CONSUL_HTTP_TOKEN_FILE (and wins over Token).
	Token     string
	TokenFile string
	// Datacenter overrides the agent's datacenter.
	Datacenter string
	// Scheme is "https" or "http"; empty: see APIConfig.
	Scheme string
	// TLS overrides the CONSUL_CACERT/CLIENT_CERT/... environment. Fallback agents and every client
	// made from APIConfig use the same settings.
	TLS TLS
	// Fallbacks are "host:port" addresses of other agents tried, in order, when the local agent cannot be
	// reached. They use the local agent's scheme and TLS settings. See DiscoverServers.
	Fallbacks []string
	// HeaderTimeout bounds the wait for an agent's response headers before failing over (blocking queries
	// get their wait on top): 0 means DefaultHeaderTimeout, negative means no bound.
	HeaderTimeout time.Duration
	// Cooldown is how long a local agent that failed is tried after the fallbacks: 0 means
	// DefaultCooldown, negative means always first.
	Cooldown time.Duration
	// Logger receives failover events (never tokens, headers or query strings).
	Logger hclog.Logger
}

// Conn is a Consul client whose transport fails over from the local agent to fallback agents.
type Conn struct {
	api       *api.Client
	failover  *Failover
	transport *http.Transport
	address   string
	scheme    string
}

// New builds a Conn from api.DefaultConfig() plus cfg. A unix-socket address gets no failover.
func New(cfg Config) (*Conn, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	ac, err := cfg.APIConfig()
	if err != nil {
		return nil, err
	}
	scheme, host, err := splitAddress(ac.Address, ac.Scheme)
	if err != nil {
		return nil, err
	}
	fallbacks, err := NormalizeAddrs(cfg.Fallbacks)
	if err != nil {
		return nil, err
	}

	c := &Conn{address: host, scheme: scheme, transport: ac.Transport}
	if scheme != "unix" {
		hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("failed to set up the consul HTTP client: %w", err)
		}
		c.failover = NewFailover(hc.Transport, logger.Named("consulconn"))
		if cfg.HeaderTimeout != 0 {
			c.failover.headerTimeout = cfg.HeaderTimeout
		}
		if cfg.Cooldown != 0 {
			c.failover.cooldown = cfg.Cooldown
		}
		c.failover.SetFallbacks(fallbacks)
		hc.Transport = c.failover
		ac.HttpClient = hc
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("failed to create the consul client for %s: %w", host, err)
	}
	c.api = client
	return c, nil
}

// API returns the Consul client. Requests made with it fail over (see Failover).
func (c *Conn) API() *api.Client { return c.api }

// Address is the local agent's "host:port" (or socket path).
func (c *Conn) Address() string { return c.address }

// Scheme is "http", "https" or "unix".
func (c *Conn) Scheme() string { return c.scheme }

// SetFallbacks replaces the fallback agents; safe while requests are in flight. No-op for unix sockets.
func (c *Conn) SetFallbacks(addrs []string) error {
	norm, err := NormalizeAddrs(addrs)
	if err != nil {
		return err
	}
	if c.failover != nil {
		c.failover.SetFallbacks(norm)
	}
	return nil
}

// Fallbacks returns the current fallback agents.
func (c *Conn) Fallbacks() []string {
	if c.failover == nil {
		return nil
	}
	return c.failover.Fallbacks()
}

// Close drops idle connections (so tests and shutdown leave no connection goroutines behind).
func (c *Conn) Close() {
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

// splitAddress separates an optional scheme from an agent address the way api.NewClient does.
func splitAddress(addr, defScheme string) (scheme, host string, err error) {
	scheme = defScheme
	if scheme == "" {
		scheme = "http"
	}
	host = addr
	if i := strings.Index(addr, "://"); i >= 0 {
		scheme, host = addr[:i], addr[i+3:]
		switch scheme {
		case "http", "https", "unix":
		default:
			return "", "", fmt.Errorf("%w: unknown scheme %q in consul address", ErrConfig, scheme)
		}
		if scheme == "http" && defScheme == "https" {
			scheme = "https" // never revert to http if TLS was explicitly requested (as api.NewClient)
		}
	}
	if scheme != "unix" {
		host, _, _ = strings.Cut(host, "/") // a reverse-proxy path prefix is handled by api.NewClient
	}
	if host == "" {
		return "", "", fmt.Errorf("%w: empty consul address", ErrConfig)
	}
	return scheme, host, nil
}

// NormalizeAddrs validates "host:port" addresses (a leading http:// or https:// is stripped) and removes
// duplicates, keeping order.
func NormalizeAddrs(addrs []string) ([]string, error) {
	out := make([]string, 0, len(addrs))
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		a = strings.TrimPrefix(strings.TrimPrefix(a, "http://"), "https://")
		a = strings.TrimSuffix(a, "/")
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: fallback agent %q is not host:port: %w", ErrConfig, a, err)
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}
