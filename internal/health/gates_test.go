package health

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// healthyObs is a 3-server + 1-client cluster (leader s1) seen from node, everything fine.
func healthyObs(node string) Observation {
	server := node != "c1"
	obs := Observation{
		At:          t0,
		Local:       LocalAgent{NodeName: node, Version: "1.16.1", Server: server, HTTPPort: 8500},
		LocalLeader: "127.0.12.1:8300",
		Members: []Member{
			{Name: "c1", Addr: "127.0.12.4", Role: "client", Version: "1.16.0", Status: MemberAlive},
			{Name: "s1", Addr: "127.0.12.1", Role: "server", Version: "1.16.0", Status: MemberAlive},
			{Name: "s2", Addr: "127.0.12.2", Role: "server", Version: "1.16.1", Status: MemberAlive},
			{Name: "s3", Addr: "127.0.12.3", Role: "server", Version: "1.16.0", Status: MemberAlive},
		},
		PeersQueried: true,
		ServerLeaders: []ServerLeader{
			{Node: "s1", Addr: "127.0.12.1:8500", Leader: "127.0.12.1:8300"},
			{Node: "s2", Addr: "127.0.12.2:8500", Leader: "127.0.12.1:8300"},
			{Node: "s3", Addr: "127.0.12.3:8500", Leader: "127.0.12.1:8300"},
		},
		Raft: &RaftConfiguration{Index: 40, Servers: []RaftServer{
			{ID: "id1", Node: "s1", Address: "127.0.12.1:8300", Leader: true, Voter: true},
			{ID: "id2", Node: "s2", Address: "127.0.12.2:8300", Voter: true},
			{ID: "id3", Node: "s3", Address: "127.0.12.3:8300", Voter: true},
		}},
		Autopilot: &AutopilotHealth{Healthy: true, FailureTolerance: 1, Servers: []ServerHealth{
			{ID: "id1", Name: "s1", SerfStatus: "alive", Leader: true, Voter: true, Healthy: true, LastIndex: 120, LastTerm: 2, StableSince: t0.Add(-time.Hour)},
			{ID: "id2", Name: "s2", SerfStatus: "alive", Voter: true, Healthy: true, LastIndex: 120, LastTerm: 2, StableSince: t0.Add(-time.Hour)},
			{ID: "id3", Name: "s3", SerfStatus: "alive", Voter: true, Healthy: true, LastIndex: 119, LastTerm: 2, StableSince: t0.Add(-time.Hour)},
		}},
		Probe: &Probe{Key: "upgrader/consul/probe/" + node, OK: true, Duration: 3 * time.Millisecond},
	}
	if server {
		state, contact := "Follower", "41ms"
		if node == "s1" {
			state, contact = "Leader", "0"
		}
		obs.Local.Raft = &RaftStats{State: state, AppliedIndex: 121, CommitIndex: 121, LastLogIndex: 121, LastContact: contact, NumPeers: 2}
		if node != "s1" {
			obs.LeaderRaft = &RaftStats{State: "Leader", AppliedIndex: 121, CommitIndex: 121, LastLogIndex: 121, LastContact: "0", NumPeers: 2}
		}
	}
	return obs
}

func baseline(node string) Baseline {
	return Baseline{FailureTolerance: 1, Servers: 3, TargetVersion: "1.16.1", Node: node}
}

type gateCase struct {
	name     string
	gate     func(Observation) Verdict
	mutate   func(*Observation)
	node     string
	wantPass bool
	// want are substrings each of which must appear in some reason.
	want []string
	// wantReasons, when >= 0, is the exact number of reasons (-1: don't care).
	wantReasons int
}

func runGateCases(t *testing.T, cases []gateCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obs := healthyObs(tc.node)
			if tc.mutate != nil {
				tc.mutate(&obs)
			}
			v := tc.gate(obs)
			if v.Pass != tc.wantPass {
				t.Fatalf("pass = %v, want %v; reasons: %q", v.Pass, tc.wantPass, v.Reasons)
			}
			for _, w := range tc.want {
				if !containsReason(v.Reasons, w) {
					t.Errorf("no reason mentions %q; reasons: %q", w, v.Reasons)
				}
			}
			if tc.wantReasons >= 0 && len(v.Reasons) != tc.wantReasons {
				t.Errorf("got %d reasons, want %d: %q", len(v.Reasons), tc.wantReasons, v.Reasons)
			}
		})
	}
}

func containsReason(reasons []string, sub string) bool {
	for _, r := range reasons {
		if strings.Contains(r, sub) {
			return true
		}
	}
	return false
}

func TestPreflight(t *testing.T) {
	pre := func(p Policy) func(Observation) Verdict {
		return func(o Observation) Verdict { return Preflight(o, p) }
	}
	single := func(o *Observation) {
		o.Members = o.Members[1:2]
		o.ServerLeaders = o.ServerLeaders[:1]
		o.Raft.Servers = o.Raft.Servers[:1]
		o.Autopilot.Servers = o.Autopilot.Servers[:1]
		o.Autopilot.FailureTolerance = 0
	}
	runGateCases(t, []gateCase{
		{name: "healthy server", node: "s2", gate: pre(Policy{}), wantPass: true, wantReasons: 0},
		{name: "healthy leader", node: "s1", gate: pre(Policy{}), wantPass: true, wantReasons: 0},
		{name: "healthy client", node: "c1", gate: pre(Policy{}), wantPass: true, wantReasons: 0},
		{name: "client with no leader", node: "c1", gate: pre(Policy{}), mutate: func(o *Observation) { o.LocalLeader = "" },
			want: []string{"knows no cluster leader"}, wantReasons: 1},
		{name: "client leader error", node: "c1", gate: pre(Policy{}), mutate: func(o *Observation) { o.LocalLeaderError = "Unexpected response code: 500 (No cluster leader)" },
			want: []string{"No cluster leader"}, wantReasons: 1},
		{name: "local agent unobserved", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.Local = LocalAgent{} },
			want: []string{"local agent did not answer"}, wantReasons: 1},
		{name: "failure tolerance 0", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.Autopilot.FailureTolerance = 0 },
			want: []string{"failure tolerance is 0"}, wantReasons: 1},
		{name: "autopilot unhealthy names the server", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) {
			o.Autopilot.Healthy = false
			o.Autopilot.Servers[2].Healthy = false
			o.Autopilot.Servers[2].SerfStatus = "failed"
		}, want: []string{"unhealthy s3 (serf failed)"}, wantReasons: 1},
		{name: "autopilot unreadable", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) {
			o.Autopilot, o.AutopilotError = nil, "Unexpected response code: 500 (No cluster leader)"
		}, want: []string{"autopilot health could not be read: Unexpected response code: 500"}, wantReasons: 1},
		{name: "single server refused by default", node: "s1", gate: pre(Policy{}), mutate: single,
			want: []string{"single-server cluster"}, wantReasons: 1},
		{name: "single server allowed with a warning", node: "s1", gate: pre(Policy{AllowSingleServer: true}), mutate: single,
			wantPass: true, want: []string{"no leader and no writes while this server restarts"}, wantReasons: 1},
		{name: "F6 stopped server does not answer", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) {
			o.ServerLeaders[2].Error = "dial tcp 127.0.12.3:8500: connect: connection refused"
		}, want: []string{"server s3 did not answer who the leader is"}, wantReasons: 1},
		{name: "F6 200 with an empty leader", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.ServerLeaders[1].Leader = "" },
			want: []string{"server s2 reports no leader"}, wantReasons: 1},
		{name: "F6 servers disagree", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.ServerLeaders[2].Leader = "127.0.12.3:8300" },
			want: []string{"servers disagree on the leader: s1, s2 say 127.0.12.1:8300; s3 say 127.0.12.3:8300"}, wantReasons: 1},
		{name: "servers not asked", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.PeersQueried, o.ServerLeaders = false, nil },
			want: []string{"not asked individually"}, wantReasons: 1},
		{name: "non-voter", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.Raft.Servers[2].Voter = false },
			want: []string{"server s3 is not a voter yet"}, wantReasons: 1},
		{name: "server failed in gossip", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) { o.Members[3].Status = MemberFailed },
			want: []string{"server s3 is failed in gossip"}, wantReasons: 1},
		{name: "left server is not waited for", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) {
			o.Members = append(o.Members, Member{Name: "s4", Addr: "127.0.12.9", Role: "server", Status: MemberLeft})
		}, wantPass: true, wantReasons: 0},
		{name: "several failures all named", node: "s2", gate: pre(Policy{}), mutate: func(o *Observation) {
			o.Autopilot.FailureTolerance = 0
			o.ServerLeaders[2].Error = "connection refused"
			o.Raft = nil
			o.RaftError = "Unexpected response code: 500"
		}, want: []string{"failure tolerance is 0", "server s3 did not answer", "raft configuration could not be read"}, wantReasons: 3},
	})
}

func TestServerConfirm(t *testing.T) {
	confirm := func(node string, mod func(*Baseline)) func(Observation) Verdict {
		return func(o Observation) Verdict {
			b := baseline(node)
			if mod != nil {
				mod(&b)
			}
			return ServerConfirm(o, b, t0.Add(time.Second))
		}
	}
	runGateCases(t, []gateCase{
		{name: "follower back and caught up", node: "s2", gate: confirm("s2", nil), wantPass: true, wantReasons: 0},
		{name: "leader", node: "s1", gate: confirm("s1", nil), wantPass: true, wantReasons: 0},
		{name: "v-prefixed target", node: "s2", gate: confirm("s2", func(b *Baseline) { b.TargetVersion = "v1.16.1" }), wantPass: true, wantReasons: 0},
		{name: "local agent does not answer", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Local = LocalAgent{} },
			want: []string{"local agent did not answer"}, wantReasons: 1},
		{name: "old version", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Local.Version = "1.16.0" },
			want: []string{"reports version 1.16.0, the target is 1.16.1"}, wantReasons: 1},
		{name: "enterprise metadata required by target", node: "s2", gate: confirm("s2", func(b *Baseline) { b.TargetVersion = "1.16.1+ent" }),
			want: []string{"the target is 1.16.1+ent"}, wantReasons: 1},
		{name: "wrong node", node: "s2", gate: confirm("s3", nil), want: []string{"local agent is node s2, expected s3"}, wantReasons: -1},
		{name: "stale observation", node: "s2", gate: func(o Observation) Verdict { return ServerConfirm(o, baseline("s2"), t0.Add(time.Minute)) },
			want: []string{"observation is stale"}, wantReasons: 1},
		{name: "observation without time", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.At = time.Time{} },
			want: []string{"carries no time"}, wantReasons: 1},
		{name: "F1 non-voter after restart", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.Raft.Servers[1].Voter = false
			o.Autopilot.FailureTolerance = 0
			o.Autopilot.Servers[1].Voter = false
		}, want: []string{"as a non-voter: autopilot has not promoted it yet", "failure tolerance is 0, it was 1"}, wantReasons: 2},
		{name: "not in raft configuration", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.Raft.Servers = append(o.Raft.Servers[:1], o.Raft.Servers[2])
		}, want: []string{"not in the raft configuration", "raft configuration has 2 servers, 3 before"}, wantReasons: 2},
		{name: "F1 autopilot blind to a quick restart", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			// autopilot still shows the pre-restart picture; the server's own stats tell the truth.
			o.Local.Raft = &RaftStats{State: "Follower", AppliedIndex: 0, CommitIndex: 0, LastLogIndex: 118, LastContact: "never"}
		}, want: []string{"has not heard from a leader since it started", "applied index 0, the leader had committed 121"}, wantReasons: 2},
		{name: "F6 one server has no leader", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.ServerLeaders[2].Leader = "" },
			want: []string{"server s3 reports no leader", "only 2 servers agree on a leader, 3 were there"}, wantReasons: 2},
		{name: "F6 stopped server", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.ServerLeaders[2].Error = "connection refused"
		}, want: []string{"server s3 did not answer", "only 2 servers agree"}, wantReasons: 2},
		{name: "server removed entirely", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.ServerLeaders = o.ServerLeaders[:2]
			o.Raft.Servers = o.Raft.Servers[:2]
			o.Autopilot.Servers = o.Autopilot.Servers[:2]
			o.Autopilot.FailureTolerance = 0
		}, want: []string{"only 2 servers agree", "raft configuration has 2 servers", "failure tolerance is 0"}, wantReasons: 3},
		{name: "autopilot unhealthy self", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.Autopilot.Healthy = false
			o.Autopilot.Servers[1].Healthy = false
		}, want: []string{"autopilot reports the cluster unhealthy: unhealthy s2", "autopilot reports this server (s2) unhealthy"}, wantReasons: 2},
		{name: "autopilot does not list self", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.Autopilot.Servers = append(o.Autopilot.Servers[:1], o.Autopilot.Servers[2])
		}, want: []string{"autopilot does not list this server (s2) yet"}, wantReasons: 1},
		{name: "probe failed", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.Probe = &Probe{Key: "k", Error: "write failed: Unexpected response code: 500 (No cluster leader)"}
		}, want: []string{"consistent write probe failed: write failed"}, wantReasons: 1},
		{name: "probe missing", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Probe = nil },
			want: []string{"no consistent write probe"}, wantReasons: 1},
		{name: "lag within allowance", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.LeaderRaft.CommitIndex = 131 },
			wantPass: true, wantReasons: 0},
		{name: "lag beyond allowance", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.LeaderRaft.CommitIndex = 132 },
			want: []string{"applied index 121, the leader had committed 132 (allowed lag 10)"}, wantReasons: 1},
		{name: "last contact too old", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Local.Raft.LastContact = "1.5s" },
			want: []string{"last heard from the leader 1.5s ago (limit 500ms)"}, wantReasons: 1},
		{name: "candidate", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Local.Raft.State = "Candidate" },
			want: []string{"raft state Candidate"}, wantReasons: 1},
		{name: "no raft stats", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) { o.Local.Raft = nil },
			want: []string{"reported no raft stats"}, wantReasons: 1},
		{name: "leader stats unknown, autopilot close enough", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.LeaderRaft, o.LeaderRaftError = nil, "Permission denied"
		}, wantPass: true, wantReasons: 0},
		{name: "leader stats unknown, autopilot lagging", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.LeaderRaft, o.LeaderRaftError = nil, "Permission denied"
			o.Autopilot.Servers[1].LastIndex = 50
		}, want: []string{"autopilot reports its last index 50, the leader's 120"}, wantReasons: 1},
		{name: "leader stats and autopilot unknown", node: "s2", gate: confirm("s2", nil), mutate: func(o *Observation) {
			o.LeaderRaft, o.LeaderRaftError = nil, "Permission denied"
			o.Autopilot, o.AutopilotError = nil, "timeout"
		}, want: []string{"autopilot health could not be read", "cannot tell whether this server (s2) has caught up"}, wantReasons: 2},
		{name: "client agent where a server is expected", node: "c1", gate: confirm("c1", nil),
			want: []string{"runs as a client, expected a server"}, wantReasons: -1},
	})
}

func TestClientConfirm(t *testing.T) {
	confirm := func(o Observation) Verdict { return ClientConfirm(o, baseline("c1"), t0.Add(time.Second)) }
	runGateCases(t, []gateCase{
		{name: "back", node: "c1", gate: confirm, wantPass: true, wantReasons: 0},
		{name: "old version", node: "c1", gate: confirm, mutate: func(o *Observation) { o.Local.Version = "1.16.0" },
			want: []string{"reports version 1.16.0"}, wantReasons: 1},
		{name: "not answering", node: "c1", gate: confirm, mutate: func(o *Observation) { o.Local = LocalAgent{} },
			want: []string{"local agent did not answer"}, wantReasons: 1},
		{name: "not alive", node: "c1", gate: confirm, mutate: func(o *Observation) { o.Members[0].Status = MemberLeft },
			want: []string{"this node (c1) is left in gossip"}, wantReasons: 1},
		{name: "not a member", node: "c1", gate: confirm, mutate: func(o *Observation) { o.Members = o.Members[1:] },
			want: []string{"not in the member list"}, wantReasons: 1},
		{name: "members unreadable", node: "c1", gate: confirm, mutate: func(o *Observation) { o.Members, o.MembersError = nil, "timeout" },
			want: []string{"member list could not be read"}, wantReasons: 1},
		{name: "no leader", node: "c1", gate: confirm, mutate: func(o *Observation) { o.LocalLeader = "" },
			want: []string{"knows no cluster leader"}, wantReasons: 1},
	})
}

func TestVersionMatches(t *testing.T) {
	for _, tc := range []struct {
		reported, target string
		want             bool
	}{
		{"1.16.1", "1.16.1", true},
		{"1.16.1", "v1.16.1", true},
		{"1.16.1+ent", "1.16.1", true},
		{"1.16.1", "1.16.1+ent", false},
		{"1.16.1+ent", "1.16.1+ent", true},
		{"1.16.0", "1.16.1", false},
		{"1.16.1-rc1", "1.16.1", false},
		{"", "1.16.1", false},
		{"1.16.1", "", false},
		{"weird", "weird", true},
	} {
		if got := VersionMatches(tc.reported, tc.target); got != tc.want {
			t.Errorf("VersionMatches(%q, %q) = %v, want %v", tc.reported, tc.target, got, tc.want)
		}
	}
}

func TestLastContactDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true}, {"never", 0, false}, {"", 0, false}, {"41.5ms", 41500 * time.Microsecond, true}, {"x", 0, false},
	} {
		got, ok := RaftStats{LastContact: tc.in}.LastContactDuration()
		if got != tc.want || ok != tc.ok {
			t.Errorf("LastContactDuration(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
