package testcluster

import (
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestAgreedLeader(t *testing.T) {
	tests := []struct {
		name    string
		seen    map[string]string
		want    string
		wantErr bool
	}{
		{"all agree", map[string]string{"s1": "a:8300", "s2": "a:8300", "s3": "a:8300"}, "a:8300", false},
		{"one has none", map[string]string{"s1": "a:8300", "s2": "", "s3": "a:8300"}, "", true},
		{"disagree", map[string]string{"s1": "a:8300", "s2": "b:8300", "s3": "a:8300"}, "", true},
		{"all empty", map[string]string{"s1": "", "s2": ""}, "", true},
		{"no servers", map[string]string{}, "", true},
		{"single server", map[string]string{"s1": "a:8300"}, "a:8300", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := agreedLeader(tt.seen)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("agreedLeader() = %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrNotLeader) {
				t.Errorf("error %v should wrap ErrNotLeader", err)
			}
		})
	}
}

func TestCheckAutopilot(t *testing.T) {
	srv := func(name string, healthy, voter bool) api.ServerHealth {
		return api.ServerHealth{Name: name, Healthy: healthy, Voter: voter, LastIndex: 100}
	}
	names := []string{"s1", "s2", "s3"}
	tests := []struct {
		name     string
		in       api.OperatorHealthReply
		minIndex uint64
		wantErr  bool
	}{
		{"healthy", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true)}}, 0, false},
		{"tolerance 0", api.OperatorHealthReply{Healthy: true, FailureTolerance: 0,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true)}}, 0, true},
		{"unhealthy", api.OperatorHealthReply{Healthy: false, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true)}}, 0, true},
		{"non-voter", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, false), srv("s3", true, true)}}, 0, true},
		{"missing server", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true)}}, 0, true},
		{"sample holds the index", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true)}}, 100, false},
		{"sample older than the index", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true)}}, 101, true},
		{"unknown server", api.OperatorHealthReply{Healthy: true, FailureTolerance: 1,
			Servers: []api.ServerHealth{srv("s1", true, true), srv("s2", true, true), srv("s3", true, true), srv("x", true, true)}}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkAutopilot(&tt.in, names, tt.minIndex)
			if (err != nil) != tt.wantErr {
				t.Fatalf("checkAutopilot() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
	if WantFailureTolerance(1) != 0 || WantFailureTolerance(3) != 1 || WantFailureTolerance(5) != 2 {
		t.Error("WantFailureTolerance wrong")
	}
}

func TestCheckRaftView(t *testing.T) {
	tests := []struct {
		name    string
		stats   map[string]string
		wantErr bool
	}{
		{"leader", map[string]string{"state": "Leader", "num_peers": "2", "last_contact": "0"}, false},
		{"fresh follower", map[string]string{"state": "Follower", "num_peers": "2", "last_contact": "31.2ms"}, false},
		{"follower never contacted", map[string]string{"state": "Follower", "num_peers": "2", "last_contact": "never"}, true},
		{"stale follower", map[string]string{"state": "Follower", "num_peers": "2", "last_contact": "7s"}, true},
		{"candidate", map[string]string{"state": "Candidate", "num_peers": "2"}, true},
		{"missing peers", map[string]string{"state": "Leader", "num_peers": "1"}, true},
		{"empty", map[string]string{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkRaftView("s1", tt.stats, 3); (err != nil) != tt.wantErr {
				t.Fatalf("checkRaftView() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

func TestCheckMembers(t *testing.T) {
	nodes := []*Node{{Name: "s1", IP: "127.0.10.1"}, {Name: "c1", IP: "127.0.10.4"}}
	m := func(name, addr string, status int) *api.AgentMember {
		return &api.AgentMember{Name: name, Addr: addr, Status: status}
	}
	tests := []struct {
		name    string
		members []*api.AgentMember
		wantErr bool
	}{
		{"all alive", []*api.AgentMember{m("s1", "127.0.10.1", 1), m("c1", "127.0.10.4", 1)}, false},
		{"extra member ignored", []*api.AgentMember{m("s1", "127.0.10.1", 1), m("c1", "127.0.10.4", 1), m("x", "1.2.3.4", 4)}, false},
		{"client missing", []*api.AgentMember{m("s1", "127.0.10.1", 1)}, true},
		{"client failed", []*api.AgentMember{m("s1", "127.0.10.1", 1), m("c1", "127.0.10.4", 4)}, true},
		{"client left", []*api.AgentMember{m("s1", "127.0.10.1", 1), m("c1", "127.0.10.4", 3)}, true},
		{"wrong address", []*api.AgentMember{m("s1", "127.0.10.1", 1), m("c1", "127.0.10.9", 1)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkMembers("s1", tt.members, nodes); (err != nil) != tt.wantErr {
				t.Fatalf("checkMembers() = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}
