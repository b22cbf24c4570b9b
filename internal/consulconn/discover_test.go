package consulconn

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestServerHTTPAddrs(t *testing.T) {
	srv := func(name, addr string, status int) *api.AgentMember {
		return &api.AgentMember{Name: name, Addr: addr, Status: status, Tags: map[string]string{"role": "consul"}}
	}
	cli := &api.AgentMember{Name: "c1", Addr: "127.0.0.4", Status: 1, Tags: map[string]string{"role": "node"}}
	cases := []struct {
		name    string
		members []*api.AgentMember
		want    []string
	}{
		{"empty", nil, []string{}},
		{"servers only, numeric order", []*api.AgentMember{srv("s3", "127.0.0.3", 1), cli, srv("s10", "127.0.0.10", 1), srv("s1", "127.0.0.1", 1)},
			[]string{"127.0.0.1:8500", "127.0.0.3:8500", "127.0.0.10:8500"}},
		{"failed and left servers skipped", []*api.AgentMember{srv("s1", "127.0.0.1", 4), srv("s2", "127.0.0.2", 3), srv("s3", "127.0.0.3", 1)},
			[]string{"127.0.0.3:8500"}},
		{"ipv6", []*api.AgentMember{srv("s1", "::1", 1)}, []string{"[::1]:8500"}},
		{"nil member", []*api.AgentMember{nil, srv("s1", "127.0.0.1", 1)}, []string{"127.0.0.1:8500"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := ServerHTTPAddrs(tc.members, "8500")
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCatalogHTTPAddrs(t *testing.T) {
	got := CatalogHTTPAddrs([]*api.CatalogService{{Address: "127.0.0.2"}, {Address: "127.0.0.1"}, {Address: "127.0.0.2"}, nil, {ServiceAddress: "127.0.0.9"}}, "18500")
	want := "127.0.0.1:18500,127.0.0.2:18500,127.0.0.9:18500"
	if strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestDiscoverServers(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	local := newAgent(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/agent/members" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `[{"Name":"s1","Addr":"127.0.0.1","Status":1,"Tags":{"role":"consul"}},
			{"Name":"s2","Addr":"127.0.0.2","Status":1,"Tags":{"role":"consul"}},
			{"Name":"c1","Addr":"127.0.0.4","Status":1,"Tags":{"role":"node"}}]`)
	})
	c, _ := newConn(t, Config{Address: local.addr()})
	got, err := c.DiscoverServers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(local.addr(), ":")
	want := "127.0.0.2:" + port // 127.0.0.1:<port> is the local agent itself: left out
	if strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %v", got, want)
	}
	if err := c.SetFallbacks(got); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Fallbacks(), ",") != want {
		t.Fatalf("fallbacks %v", c.Fallbacks())
	}
}

func TestDiscoverServers_CatalogWhenLocalDown(t *testing.T) {
	verifyNoLeaks(t)
	clearConsulEnv(t)
	fb := newAgent(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/catalog/service/consul" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("X-Consul-Index", "3")
		fmt.Fprint(w, `[{"Node":"s1","Address":"127.0.0.1"},{"Node":"s3","Address":"127.0.0.3"}]`)
	})
	local := deadAddr(t)
	c, _ := newConn(t, Config{Address: local, Fallbacks: []string{fb.addr()}})
	got, err := c.DiscoverServers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := strings.Cut(local, ":")
	if want := "127.0.0.3:" + port; strings.Join(got, ",") != want {
		t.Fatalf("got %v, want %v", got, want)
	}
}
