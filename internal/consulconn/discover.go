package consulconn

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// memberStatusAlive is serf's StatusAlive as reported in /v1/agent/members.
const memberStatusAlive = 1

// DefaultHTTPPort is used when the local agent's address carries no port.
const DefaultHTTPPort = "8500"

// DiscoverServers returns the HTTP addresses of the cluster's servers, as "<server IP>:<port of the local
// agent's HTTP address>", for use as fallbacks. It assumes servers listen for HTTP on the same port as the
// local agent (true for a uniform fleet; configure Fallbacks explicitly otherwise).
//
// It asks the local agent for its serf members (alive servers only) and, when the local agent does not
// answer, the catalog for the "consul" service through the failover client. The local agent's own address is
// left out. The result is sorted for stable failover order.
func (c *Conn) DiscoverServers(ctx context.Context) ([]string, error) {
	port := DefaultHTTPPort
	if _, p, err := net.SplitHostPort(c.address); err == nil && p != "" {
		port = p
	}
	var members []*api.AgentMember
	q := (&api.QueryOptions{}).WithContext(ctx)
	if _, err := c.api.Raw().Query("/v1/agent/members", &members, q); err == nil {
		return withoutAddr(ServerHTTPAddrs(members, port), c.address), nil
	} else if ctx.Err() != nil {
		return nil, fmt.Errorf("failed to list the local agent's members: %w", err)
	}
	svcs, _, err := c.api.Catalog().Service("consul", "", q)
	if err != nil {
		return nil, fmt.Errorf("failed to discover consul servers (members and catalog): %w", err)
	}
	return withoutAddr(CatalogHTTPAddrs(svcs, port), c.address), nil
}

// ServerHTTPAddrs maps alive server members (tag role=consul) to "<addr>:<port>", sorted and deduplicated.
// Pure.
func ServerHTTPAddrs(members []*api.AgentMember, port string) []string {
	var ips []string
	for _, m := range members {
		if m == nil || m.Tags["role"] != "consul" || m.Status != memberStatusAlive || m.Addr == "" {
			continue
		}
		ips = append(ips, m.Addr)
	}
	return joinPort(ips, port)
}

// CatalogHTTPAddrs maps the catalog entries of the "consul" service (one per server) to "<addr>:<port>".
// Pure.
func CatalogHTTPAddrs(svcs []*api.CatalogService, port string) []string {
	var ips []string
	for _, s := range svcs {
		if s == nil {
			continue
		}
		ip := s.Address
		if ip == "" {
			ip = s.ServiceAddress
		}
		if ip != "" {
			ips = append(ips, ip)
		}
	}
	return joinPort(ips, port)
}

func joinPort(ips []string, port string) []string {
	seen := make(map[string]bool, len(ips))
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		a := net.JoinHostPort(ip, port)
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return lessAddr(out[i], out[j]) })
	return out
}

// lessAddr orders by IP numerically when possible.
func lessAddr(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	if ia != nil && ib != nil && !ia.Equal(ib) {
		return string(ia.To16()) < string(ib.To16())
	}
	if ha != hb {
		return ha < hb
	}
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	return na < nb
}

func withoutAddr(addrs []string, self string) []string {
	out := addrs[:0]
	for _, a := range addrs {
		if a != self {
			out = append(out, a)
		}
	}
	return out
}
