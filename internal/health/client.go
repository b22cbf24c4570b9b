package health

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/hashicorp/consul/api"
)

// The few Consul HTTP calls Observe makes, each declared as the method set of the api package's own
// endpoint type so that a real *api.Client plugs in through FromClient and a test can pass a fake.
// Every call gets its deadline through QueryOptions/WriteOptions.WithContext.

// RawQuerier reads an arbitrary GET endpoint; *api.Raw satisfies it. Used for /v1/agent/self and
// /v1/agent/members, whose typed api methods take no context.
type RawQuerier interface {
	Query(endpoint string, out interface{}, q *api.QueryOptions) (*api.QueryMeta, error)
}

// LeaderReader asks one agent who the leader is; *api.Status satisfies it.
type LeaderReader interface {
	LeaderWithQueryOptions(q *api.QueryOptions) (string, error)
}

// OperatorReader reads raft and autopilot state; *api.Operator satisfies it.
type OperatorReader interface {
	RaftGetConfiguration(q *api.QueryOptions) (*api.RaftConfiguration, error)
	AutopilotServerHealth(q *api.QueryOptions) (*api.OperatorHealthReply, error)
}

// KVReadWriter writes and reads the probe key; *api.KV satisfies it.
type KVReadWriter interface {
	Put(p *api.KVPair, q *api.WriteOptions) (*api.WriteMeta, error)
	Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
}

// Endpoints is one agent's HTTP API as Observe uses it. A nil field means that part is not observed
// (for a peer server, only Status and Raw are used).
type Endpoints struct {
	Raw      RawQuerier
	Status   LeaderReader
	Operator OperatorReader
	KV       KVReadWriter
}

// FromClient adapts a real Consul API client.
func FromClient(c *api.Client) Endpoints {
	return Endpoints{Raw: c.Raw(), Status: c.Status(), Operator: c.Operator(), KV: c.KV()}
}

// DialFunc returns the endpoints of the agent listening on addr ("host:port").
type DialFunc func(addr string) (Endpoints, error)

// Dialer makes API clients for other servers' HTTP addresses from one base configuration (scheme,
// token, TLS), caching one client per address and sharing one HTTP client between them, so sampling
// every few hundred milliseconds does not open a new connection pool each time.
type Dialer struct {
	base api.Config

	mu      sync.Mutex
	http    *http.Client
	clients map[string]*api.Client
}

// NewDialer copies base; its Address is ignored. A nil base means api.DefaultConfig() (which reads the
// CONSUL_HTTP_* environment: token, scheme, TLS files).
func NewDialer(base *api.Config) *Dialer {
	var cfg api.Config
	if base != nil {
		cfg = *base
	} else {
		cfg = *api.DefaultConfig()
	}
	return &Dialer{base: cfg, clients: map[string]*api.Client{}}
}

// Dial implements DialFunc.
func (d *Dialer) Dial(addr string) (Endpoints, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.clients[addr]; ok {
		return FromClient(c), nil
	}
	if d.http == nil {
		if d.base.HttpClient != nil {
			d.http = d.base.HttpClient
		} else {
			transport := d.base.Transport
			if transport == nil {
				transport = api.DefaultConfig().Transport
			}
			hc, err := api.NewHttpClient(transport, d.base.TLSConfig)
			if err != nil {
				return Endpoints{}, fmt.Errorf("failed to build an HTTP client for %s: %w", addr, err)
			}
			d.http = hc
		}
	}
	cfg := d.base
	cfg.Address = addr
	cfg.HttpClient = d.http
	c, err := api.NewClient(&cfg)
	if err != nil {
		return Endpoints{}, fmt.Errorf("failed to create a Consul client for %s: %w", addr, err)
	}
	d.clients[addr] = c
	return FromClient(c), nil
}

// Close drops idle connections held by the shared HTTP client.
func (d *Dialer) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.http != nil {
		d.http.CloseIdleConnections()
	}
	d.clients = map[string]*api.Client{}
}
