package health

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// ErrLocalAgentUnreachable is returned (wrapped) by Observe when the node's own agent does not answer.
// Everything else that cannot be read is recorded in the Observation instead.
var ErrLocalAgentUnreachable = errors.New("health: local agent unreachable")

const (
	// DefaultCallTimeout bounds each HTTP call of an observation. Loopback and LAN calls answer in
	// milliseconds; a server that does not answer within 2s is recorded as not answering.
	DefaultCallTimeout = 2 * time.Second
	// DefaultHTTPPort is Consul's default HTTP port, used to derive server addresses when the local
	// agent does not say which port it uses.
	DefaultHTTPPort = 8500
)

// ObserveInput says how to observe the cluster from one node.
type ObserveInput struct {
	// Local is the node's own agent.
	Local Endpoints
	// Dial makes clients for the other servers' HTTP addresses. Nil: the servers are not asked
	// individually (ServerLeaders stays empty and PeersQueried false), which suits client nodes whose
	// servers' HTTP ports are not reachable.
	Dial DialFunc
	// ServerHTTPAddrs overrides the derived HTTP address ("host:port") of a server, by node name.
	ServerHTTPAddrs map[string]string
	// HTTPPort is the port used with a server's member IP to derive its HTTP address. Zero: the local
	// agent's own HTTP port (DebugConfig.HTTPPort), else DefaultHTTPPort.
	HTTPPort int
	// CallTimeout bounds each HTTP call. Zero means DefaultCallTimeout.
	CallTimeout time.Duration
	// ProbeKey is the KV key of the consistent write probe (under the upgrader prefix, for example
	// "upgrader/consul/probe/<node>"). Empty: no probe (Observation.Probe is nil).
	ProbeKey string
	// Now is the observer's clock. Nil means time.Now.
	Now func() time.Time
}

// callFunc derives the deadline of one HTTP call from the observation's context.
type callFunc func(context.Context) (context.Context, context.CancelFunc)

// Observer returns an ObserveFunc that observes with in, for Confirm and WaitUntil.
func Observer(in ObserveInput) ObserveFunc {
	return func(ctx context.Context) (Observation, error) { return Observe(ctx, in) }
}

// agentSelf is the part of /v1/agent/self that Observe reads.
type agentSelf struct {
	Config struct {
		NodeName string
		Version  string
		Server   bool
	}
	DebugConfig struct {
		HTTPPort int
	}
	Stats map[string]map[string]string
}

// Observe gathers one Observation. It returns an error wrapping ErrLocalAgentUnreachable only when the
// local agent itself does not answer (first or last call); every other failure is recorded as data.
// Reads are ordered so that the gates can compare them: the leader's raft stats are sampled after the
// probe write and before the local agent's raft stats.
func Observe(ctx context.Context, in ObserveInput) (Observation, error) {
	timeout := in.CallTimeout
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	now := in.Now
	if now == nil {
		now = time.Now
	}
	call := callFunc(func(parent context.Context) (context.Context, context.CancelFunc) {
		return context.WithTimeout(parent, timeout)
	})

	var obs Observation
	if in.Local.Raw == nil {
		return obs, fmt.Errorf("%w: no local agent client configured", ErrLocalAgentUnreachable)
	}

	self, err := readSelf(ctx, call, in.Local.Raw)
	if err != nil {
		obs.At = now()
		return obs, fmt.Errorf("%w: failed to read /v1/agent/self: %w", ErrLocalAgentUnreachable, err)
	}
	obs.Local = localFromSelf(self)

	if in.Local.Status != nil {
		obs.LocalLeader, obs.LocalLeaderError = readLeader(ctx, call, in.Local.Status)
	} else {
		obs.LocalLeaderError = "not observed"
	}

	obs.Members, obs.MembersError = readMembers(ctx, call, in.Local.Raw)
	if in.Local.Operator != nil {
		obs.Raft, obs.RaftError = readRaft(ctx, call, in.Local.Operator)
		obs.Autopilot, obs.AutopilotError = readAutopilot(ctx, call, in.Local.Operator)
	} else {
		obs.RaftError, obs.AutopilotError = "not observed", "not observed"
	}
	if err := ctx.Err(); err != nil {
		obs.At = now()
		return obs, fmt.Errorf("failed to observe: %w", err)
	}

	port := in.HTTPPort
	if port == 0 {
		port = obs.Local.HTTPPort
	}
	if port == 0 {
		port = DefaultHTTPPort
	}
	addrs := serverHTTPAddrs(obs, in.ServerHTTPAddrs, port)

	if in.Dial != nil {
		obs.PeersQueried = true
		obs.ServerLeaders = readServerLeaders(ctx, call, in, obs.Local.NodeName, knownServers(obs), addrs)
	}

	if in.ProbeKey != "" {
		obs.Probe = probe(ctx, call, in.Local.KV, in.ProbeKey, obs.Local.NodeName, now)
	}

	if obs.Local.Server {
		obs.LeaderRaft, obs.LeaderRaftError = readLeaderRaft(ctx, call, in, obs, addrs)
		// Resample the local raft stats last, so AppliedIndex can be compared with LeaderRaft.
		again, err := readSelf(ctx, call, in.Local.Raw)
		if err != nil {
			obs.At = now()
			return obs, fmt.Errorf("%w: failed to re-read /v1/agent/self: %w", ErrLocalAgentUnreachable, err)
		}
		obs.Local.Raft = raftFromStats(again.Stats)
	}
	obs.At = now()
	return obs, nil
}

func readSelf(ctx context.Context, call callFunc, raw RawQuerier) (agentSelf, error) {
	cctx, cancel := call(ctx)
	defer cancel()
	var self agentSelf
	if _, err := raw.Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
		return agentSelf{}, err
	}
	return self, nil
}

func localFromSelf(self agentSelf) LocalAgent {
	l := LocalAgent{
		NodeName: self.Config.NodeName,
		Version:  self.Config.Version,
		Server:   self.Config.Server,
		HTTPPort: self.DebugConfig.HTTPPort,
	}
	if l.Server {
		l.Raft = raftFromStats(self.Stats)
	}
	return l
}

func raftFromStats(stats map[string]map[string]string) *RaftStats {
	r, ok := stats["raft"]
	if !ok || len(r) == 0 {
		return nil
	}
	u := func(k string) uint64 {
		v, _ := strconv.ParseUint(r[k], 10, 64)
		return v
	}
	peers, _ := strconv.Atoi(r["num_peers"])
	return &RaftStats{
		State:        r["state"],
		AppliedIndex: u("applied_index"),
		CommitIndex:  u("commit_index"),
		LastLogIndex: u("last_log_index"),
		LastContact:  r["last_contact"],
		NumPeers:     peers,
	}
}

func readLeader(ctx context.Context, call callFunc, s LeaderReader) (string, string) {
	cctx, cancel := call(ctx)
	defer cancel()
	leader, err := s.LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return "", err.Error()
	}
	return leader, ""
}

func readMembers(ctx context.Context, call callFunc, raw RawQuerier) ([]Member, string) {
	cctx, cancel := call(ctx)
	defer cancel()
	var members []api.AgentMember
	if _, err := raw.Query("/v1/agent/members", &members, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
		return nil, err.Error()
	}
	out := make([]Member, 0, len(members))
	for _, m := range members {
		role := "client"
		if m.Tags["role"] == "consul" {
			role = "server"
		}
		version, _, _ := strings.Cut(m.Tags["build"], ":")
		out = append(out, Member{Name: m.Name, Addr: m.Addr, Role: role, Version: version, Status: m.Status})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, ""
}

func readRaft(ctx context.Context, call callFunc, op OperatorReader) (*RaftConfiguration, string) {
	cctx, cancel := call(ctx)
	defer cancel()
	rc, err := op.RaftGetConfiguration((&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return nil, err.Error()
	}
	if rc == nil {
		return nil, "empty raft configuration"
	}
	out := &RaftConfiguration{Index: rc.Index}
	for _, s := range rc.Servers {
		if s == nil {
			continue
		}
		out.Servers = append(out.Servers, RaftServer{ID: s.ID, Node: s.Node, Address: s.Address, Leader: s.Leader, Voter: s.Voter})
	}
	return out, ""
}

func readAutopilot(ctx context.Context, call callFunc, op OperatorReader) (*AutopilotHealth, string) {
	cctx, cancel := call(ctx)
	defer cancel()
	h, err := op.AutopilotServerHealth((&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return nil, err.Error()
	}
	if h == nil {
		return nil, "empty autopilot health"
	}
	out := &AutopilotHealth{Healthy: h.Healthy, FailureTolerance: h.FailureTolerance}
	for _, s := range h.Servers {
		sh := ServerHealth{
			ID: s.ID, Name: s.Name, Address: s.Address, SerfStatus: s.SerfStatus, Version: s.Version,
			Leader: s.Leader, Voter: s.Voter, Healthy: s.Healthy, LastIndex: s.LastIndex, LastTerm: s.LastTerm,
			StableSince: s.StableSince,
		}
		if s.LastContact != nil {
			sh.LastContact = s.LastContact.Duration().String()
		}
		out.Servers = append(out.Servers, sh)
	}
	return out, ""
}

// knownServers is every server the observation knows of, by node name: gossip members with the server
// role that have not left, plus every raft peer.
func knownServers(obs Observation) []string {
	seen := map[string]bool{}
	for _, m := range obs.Members {
		if m.Role == "server" && m.Status != MemberLeft {
			seen[m.Name] = true
		}
	}
	if obs.Raft != nil {
		for _, s := range obs.Raft.Servers {
			if s.Node != "" && s.Node != "(unknown)" {
				seen[s.Node] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// serverHTTPAddrs derives each known server's HTTP address: an explicit override, else its member IP,
// else the host of its raft address, with the HTTP port.
func serverHTTPAddrs(obs Observation, overrides map[string]string, port int) map[string]string {
	out := map[string]string{}
	ips := map[string]string{}
	for _, m := range obs.Members {
		if m.Role == "server" {
			ips[m.Name] = m.Addr
		}
	}
	if obs.Raft != nil {
		for _, s := range obs.Raft.Servers {
			if _, ok := ips[s.Node]; ok {
				continue
			}
			if host, _, err := net.SplitHostPort(s.Address); err == nil {
				ips[s.Node] = host
			}
		}
	}
	for _, n := range knownServers(obs) {
		if a, ok := overrides[n]; ok {
			out[n] = a
			continue
		}
		if ip := ips[n]; ip != "" {
			out[n] = net.JoinHostPort(ip, strconv.Itoa(port))
		}
	}
	return out
}

// readServerLeaders asks every known server, concurrently and each under its own deadline, who leads.
// The local server is asked through the local endpoints.
func readServerLeaders(ctx context.Context, call callFunc, in ObserveInput, local string, names []string, addrs map[string]string) []ServerLeader {
	out := make([]ServerLeader, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		out[i] = ServerLeader{Node: n, Addr: addrs[n]}
		wg.Add(1)
		go func(sl *ServerLeader) {
			defer wg.Done()
			var status LeaderReader
			switch {
			case sl.Node == local && in.Local.Status != nil:
				status = in.Local.Status
			case sl.Addr == "":
				sl.Error = "no HTTP address known"
				return
			default:
				ep, err := in.Dial(sl.Addr)
				if err != nil {
					sl.Error = err.Error()
					return
				}
				if ep.Status == nil {
					sl.Error = "no status client"
					return
				}
				status = ep.Status
			}
			sl.Leader, sl.Error = readLeader(ctx, call, status)
		}(&out[i])
	}
	wg.Wait()
	return out
}

// readLeaderRaft reads the current leader's own raft stats. The leader is taken from the raft
// configuration; when this node is the leader there is nothing to compare against and nil is returned.
func readLeaderRaft(ctx context.Context, call callFunc, in ObserveInput, obs Observation, addrs map[string]string) (*RaftStats, string) {
	if obs.Raft == nil {
		return nil, "raft configuration unknown"
	}
	leader := ""
	for _, s := range obs.Raft.Servers {
		if s.Leader {
			leader = s.Node
		}
	}
	switch {
	case leader == "":
		return nil, "no leader in the raft configuration"
	case leader == obs.Local.NodeName:
		return nil, ""
	case in.Dial == nil:
		return nil, "servers not queried"
	case addrs[leader] == "":
		return nil, fmt.Sprintf("no HTTP address known for leader %s", leader)
	}
	ep, err := in.Dial(addrs[leader])
	if err != nil {
		return nil, err.Error()
	}
	if ep.Raw == nil {
		return nil, "no raw client"
	}
	self, err := readSelf(ctx, call, ep.Raw)
	if err != nil {
		return nil, err.Error()
	}
	r := raftFromStats(self.Stats)
	if r == nil {
		return nil, fmt.Sprintf("leader %s reported no raft stats", leader)
	}
	return r, ""
}

// probe writes a fresh value to key and reads it back with a consistent read.
func probe(ctx context.Context, call callFunc, kv KVReadWriter, key, node string, now func() time.Time) *Probe {
	p := &Probe{Key: key}
	if kv == nil {
		p.Error = "no KV client"
		return p
	}
	start := now()
	defer func() { p.Duration = now().Sub(start) }()

	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		p.Error = fmt.Sprintf("failed to make a probe value: %v", err)
		return p
	}
	value := []byte(fmt.Sprintf("%s %s %s", node, start.UTC().Format(time.RFC3339Nano), hex.EncodeToString(nonce)))

	pctx, cancel := call(ctx)
	_, err := kv.Put(&api.KVPair{Key: key, Value: value}, (&api.WriteOptions{}).WithContext(pctx))
	cancel()
	if err != nil {
		p.Error = fmt.Sprintf("write failed: %v", err)
		return p
	}
	gctx, cancel := call(ctx)
	pair, _, err := kv.Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(gctx))
	cancel()
	switch {
	case err != nil:
		p.Error = fmt.Sprintf("consistent read failed: %v", err)
	case pair == nil:
		p.Error = "consistent read found no value"
	case string(pair.Value) != string(value):
		p.Error = "consistent read returned another value than the one written"
	default:
		p.OK = true
	}
	return p
}
