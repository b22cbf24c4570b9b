package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

// fakeAgent is an in-memory Consul agent answering the calls Observe makes. It records the order of
// calls so the test can check the sampling order the gates rely on.
type fakeAgent struct {
	name   string
	log    *callLog
	down   bool
	self   agentSelf
	leader string
	// selfSeq, when set, is returned by successive /v1/agent/self calls (the last repeats).
	selfSeq []agentSelf
	members []api.AgentMember
	raft    *api.RaftConfiguration
	health  *api.OperatorHealthReply
	kv      map[string][]byte
	selfN   int
}

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, s)
}

var errRefused = errors.New("connect: connection refused")

func (f *fakeAgent) Query(endpoint string, out interface{}, q *api.QueryOptions) (*api.QueryMeta, error) {
	f.log.add(f.name + " " + endpoint)
	if f.down {
		return nil, errRefused
	}
	if q.Context() == nil {
		return nil, errors.New("no context")
	}
	if _, ok := q.Context().Deadline(); !ok {
		return nil, errors.New("call without a deadline")
	}
	var v interface{}
	switch endpoint {
	case "/v1/agent/self":
		v = f.self
		if len(f.selfSeq) > 0 {
			v = f.selfSeq[min(f.selfN, len(f.selfSeq)-1)]
			f.selfN++
		}
	case "/v1/agent/members":
		v = f.members
	default:
		return nil, fmt.Errorf("unexpected endpoint %s", endpoint)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &api.QueryMeta{}, json.Unmarshal(b, out)
}

func (f *fakeAgent) LeaderWithQueryOptions(q *api.QueryOptions) (string, error) {
	f.log.add(f.name + " leader")
	if f.down {
		return "", errRefused
	}
	return f.leader, nil
}

func (f *fakeAgent) RaftGetConfiguration(q *api.QueryOptions) (*api.RaftConfiguration, error) {
	f.log.add(f.name + " raft")
	if f.raft == nil {
		return nil, errors.New("Unexpected response code: 500 (No cluster leader)")
	}
	return f.raft, nil
}

func (f *fakeAgent) AutopilotServerHealth(q *api.QueryOptions) (*api.OperatorHealthReply, error) {
	f.log.add(f.name + " autopilot")
	return f.health, nil
}

func (f *fakeAgent) Put(p *api.KVPair, q *api.WriteOptions) (*api.WriteMeta, error) {
	f.log.add(f.name + " put")
	if f.kv == nil {
		f.kv = map[string][]byte{}
	}
	f.kv[p.Key] = p.Value
	return &api.WriteMeta{}, nil
}

func (f *fakeAgent) Get(key string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	f.log.add(f.name + " get")
	if !q.RequireConsistent {
		return nil, nil, errors.New("probe read is not consistent")
	}
	v, ok := f.kv[key]
	if !ok {
		return nil, nil, nil
	}
	return &api.KVPair{Key: key, Value: v}, &api.QueryMeta{}, nil
}

func (f *fakeAgent) endpoints() Endpoints {
	return Endpoints{Raw: f, Status: f, Operator: f, KV: f}
}

func selfOf(name string, server bool, state string, applied, commit uint64) agentSelf {
	var s agentSelf
	s.Config.NodeName, s.Config.Version, s.Config.Server = name, "1.16.1", server
	s.DebugConfig.HTTPPort = 8500
	if server {
		s.Stats = map[string]map[string]string{"raft": {
			"state": state, "applied_index": fmt.Sprint(applied), "commit_index": fmt.Sprint(commit),
			"last_log_index": fmt.Sprint(commit), "last_contact": "12ms", "num_peers": "2",
		}}
	}
	return s
}

func fakeCluster(log *callLog) map[string]*fakeAgent {
	members := []api.AgentMember{
		{Name: "s1", Addr: "127.0.12.1", Tags: map[string]string{"role": "consul", "build": "1.16.0:abc"}, Status: MemberAlive},
		{Name: "s2", Addr: "127.0.12.2", Tags: map[string]string{"role": "consul", "build": "1.16.1:def"}, Status: MemberAlive},
		{Name: "s3", Addr: "127.0.12.3", Tags: map[string]string{"role": "consul", "build": "1.16.0:abc"}, Status: MemberFailed},
		{Name: "c1", Addr: "127.0.12.4", Tags: map[string]string{"role": "node", "build": "1.16.0:abc"}, Status: MemberAlive},
	}
	raft := &api.RaftConfiguration{Index: 7, Servers: []*api.RaftServer{
		{ID: "1", Node: "s1", Address: "127.0.12.1:8300", Leader: true, Voter: true},
		{ID: "2", Node: "s2", Address: "127.0.12.2:8300", Voter: true},
		{ID: "3", Node: "s3", Address: "127.0.12.3:8300", Voter: true},
	}}
	health := &api.OperatorHealthReply{Healthy: false, FailureTolerance: 0, Servers: []api.ServerHealth{
		{ID: "1", Name: "s1", Leader: true, Voter: true, Healthy: true, LastIndex: 50, LastContact: api.NewReadableDuration(0)},
		{ID: "3", Name: "s3", Voter: true, Healthy: false, LastIndex: 40, SerfStatus: "failed"},
	}}
	agents := map[string]*fakeAgent{}
	for _, n := range []string{"s1", "s2", "s3"} {
		agents[n] = &fakeAgent{name: n, log: log, leader: "127.0.12.1:8300", members: members, raft: raft, health: health,
			self: selfOf(n, true, "Follower", 49, 50)}
	}
	agents["s1"].self = selfOf("s1", true, "Leader", 50, 51)
	agents["s3"].down = true
	return agents
}

func TestObserveRecordsUnreachableServersAsData(t *testing.T) {
	log := &callLog{}
	agents := fakeCluster(log)
	// s2 is the local agent; its raft stats move on between the first and the last read.
	agents["s2"].selfSeq = []agentSelf{selfOf("s2", true, "Follower", 10, 10), selfOf("s2", true, "Follower", 51, 51)}
	var dialed []string
	var mu sync.Mutex
	in := ObserveInput{
		Local: agents["s2"].endpoints(),
		Dial: func(addr string) (Endpoints, error) {
			mu.Lock()
			dialed = append(dialed, addr)
			mu.Unlock()
			for _, a := range agents {
				if addr == "127.0.12."+a.name[1:]+":8500" {
					return a.endpoints(), nil
				}
			}
			return Endpoints{}, fmt.Errorf("no agent at %s", addr)
		},
		ProbeKey: "upgrader/consul/probe/s2",
		Now:      func() time.Time { return t0 },
	}
	obs, err := Observe(context.Background(), in)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	if obs.Local.NodeName != "s2" || obs.Local.Version != "1.16.1" || !obs.Local.Server || obs.Local.HTTPPort != 8500 {
		t.Errorf("local = %+v", obs.Local)
	}
	if obs.Local.Raft == nil || obs.Local.Raft.AppliedIndex != 51 {
		t.Errorf("local raft = %+v, want the last sample (applied 51)", obs.Local.Raft)
	}
	if obs.LeaderRaft == nil || obs.LeaderRaft.CommitIndex != 51 || obs.LeaderRaft.State != "Leader" {
		t.Errorf("leader raft = %+v (%s)", obs.LeaderRaft, obs.LeaderRaftError)
	}
	want := []ServerLeader{
		{Node: "s1", Addr: "127.0.12.1:8500", Leader: "127.0.12.1:8300"},
		{Node: "s2", Addr: "127.0.12.2:8500", Leader: "127.0.12.1:8300"},
		{Node: "s3", Addr: "127.0.12.3:8500", Error: errRefused.Error()},
	}
	if fmt.Sprint(obs.ServerLeaders) != fmt.Sprint(want) {
		t.Errorf("server leaders = %+v\nwant %+v", obs.ServerLeaders, want)
	}
	if len(obs.Members) != 4 || obs.Members[0].Name != "c1" || obs.Members[0].Role != "client" || obs.Members[1].Role != "server" || obs.Members[2].Version != "1.16.1" {
		t.Errorf("members = %+v", obs.Members)
	}
	if obs.Autopilot == nil || obs.Autopilot.Healthy || obs.Autopilot.Servers[0].LastContact != "0s" {
		t.Errorf("autopilot = %+v", obs.Autopilot)
	}
	if obs.Probe == nil || !obs.Probe.OK {
		t.Errorf("probe = %+v", obs.Probe)
	}
	if !obs.At.Equal(t0) || !obs.PeersQueried {
		t.Errorf("at %v peers %v", obs.At, obs.PeersQueried)
	}
	// The local server is asked through the local endpoints, never dialed.
	for _, d := range dialed {
		if d == "127.0.12.2:8500" {
			t.Errorf("dialed the local server: %v", dialed)
		}
	}
	// Order: the leader's stats after the probe, the local stats last.
	order := strings.Join(log.calls, ",")
	iPut, iLeader, iLast := strings.Index(order, "s2 put"), strings.Index(order, "s1 /v1/agent/self"), strings.LastIndex(order, "s2 /v1/agent/self")
	if iPut < 0 || iLeader < iPut || iLast < iLeader {
		t.Errorf("call order %s", order)
	}
	// With this data, ServerConfirm fails only for what is really wrong: s3 is down, autopilot unhealthy.
	v := ServerConfirm(obs, Baseline{FailureTolerance: 1, Servers: 3, TargetVersion: "1.16.1", Node: "s2"}, t0)
	if v.Pass || !containsReason(v.Reasons, "server s3 did not answer") || !containsReason(v.Reasons, "failure tolerance is 0") {
		t.Errorf("verdict %+v", v)
	}
}

func TestObserveLocalAgentDown(t *testing.T) {
	log := &callLog{}
	agents := fakeCluster(log)
	agents["s2"].down = true
	_, err := Observe(context.Background(), ObserveInput{Local: agents["s2"].endpoints()})
	if !errors.Is(err, ErrLocalAgentUnreachable) || !errors.Is(err, errRefused) {
		t.Fatalf("err = %v", err)
	}
	if len(log.calls) != 1 {
		t.Errorf("calls after the local agent failed: %v", log.calls)
	}
}

func TestObserveWithoutDialerOrProbe(t *testing.T) {
	agents := fakeCluster(&callLog{})
	agents["s2"].raft = nil
	obs, err := Observe(context.Background(), ObserveInput{Local: agents["s2"].endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	if obs.PeersQueried || obs.ServerLeaders != nil || obs.Probe != nil {
		t.Errorf("peers %v %v probe %v", obs.PeersQueried, obs.ServerLeaders, obs.Probe)
	}
	if !strings.Contains(obs.RaftError, "No cluster leader") || obs.LeaderRaft != nil || obs.LeaderRaftError == "" {
		t.Errorf("raft error %q leader raft %+v %q", obs.RaftError, obs.LeaderRaft, obs.LeaderRaftError)
	}
}

// TestObserveHTTP runs Observe through the real api client and Dialer against an HTTP fake, to check
// decoding, the 429 of an unhealthy autopilot, and per-call deadlines on a server that hangs.
func TestObserveHTTP(t *testing.T) {
	defer goleak.VerifyNone(t)
	hang := make(chan struct{})
	selfJSON := `{"Config":{"NodeName":"s1","Version":"1.16.1","Server":true},"DebugConfig":{"HTTPPort":8500},
	  "Stats":{"raft":{"state":"Leader","applied_index":"9","commit_index":"9","last_log_index":"9","last_contact":"0","num_peers":"1"}}}`
	local := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/agent/self":
			fmt.Fprint(w, selfJSON)
		case "/v1/status/leader":
			fmt.Fprint(w, `"127.0.12.1:8300"`)
		case "/v1/agent/members":
			fmt.Fprint(w, `[{"Name":"s1","Addr":"127.0.12.1","Tags":{"role":"consul","build":"1.16.1:x"},"Status":1},
			  {"Name":"s2","Addr":"127.0.12.2","Tags":{"role":"consul","build":"1.16.0:x"},"Status":1}]`)
		case "/v1/operator/raft/configuration":
			fmt.Fprint(w, `{"Servers":[{"ID":"1","Node":"s1","Address":"127.0.12.1:8300","Leader":true,"Voter":true},
			  {"ID":"2","Node":"s2","Address":"127.0.12.2:8300","Leader":false,"Voter":false}],"Index":3}`)
		case "/v1/operator/autopilot/health":
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"Healthy":false,"FailureTolerance":0,"Servers":[{"Name":"s1","Healthy":true,"Leader":true,"Voter":true,"LastIndex":9,"LastContact":"0s","StableSince":"2025-03-04T05:00:00Z"}]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer local.Close()
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer hanging.Close()
	defer close(hang)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	localClient, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(local.URL, "http://"), HttpClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	dialer := NewDialer(&api.Config{})
	defer dialer.Close()
	start := time.Now()
	obs, err := Observe(context.Background(), ObserveInput{
		Local:           FromClient(localClient),
		Dial:            dialer.Dial,
		ServerHTTPAddrs: map[string]string{"s2": strings.TrimPrefix(hanging.URL, "http://")},
		CallTimeout:     200 * time.Millisecond,
	})
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	t.Logf("observation with one hanging server took %s (call timeout 200ms)", took)
	if obs.Autopilot == nil || obs.Autopilot.Healthy || obs.Autopilot.Servers[0].StableSince.IsZero() {
		t.Errorf("autopilot %+v (%s)", obs.Autopilot, obs.AutopilotError)
	}
	if obs.Raft == nil || obs.Raft.Servers[1].Voter {
		t.Errorf("raft %+v", obs.Raft)
	}
	if len(obs.ServerLeaders) != 2 || obs.ServerLeaders[0].Leader != "127.0.12.1:8300" || obs.ServerLeaders[1].Error == "" {
		t.Errorf("server leaders %+v", obs.ServerLeaders)
	}
	if obs.Local.Raft == nil || obs.Local.Raft.State != "Leader" || obs.LeaderRaft != nil || obs.LeaderRaftError != "" {
		t.Errorf("raft stats local %+v leader %+v %q", obs.Local.Raft, obs.LeaderRaft, obs.LeaderRaftError)
	}
	v := Preflight(obs, Policy{})
	if v.Pass || !containsReason(v.Reasons, "server s2 is not a voter yet") || !containsReason(v.Reasons, "server s2 did not answer") {
		t.Errorf("preflight %+v", v)
	}
}
