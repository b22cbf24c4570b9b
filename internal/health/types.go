// Package health owns the upgrade gates: it observes a Consul cluster from one node's point of view
// (observe.go, all the I/O), decides purely whether that node may go down or has come back healthy
// (gates.go: Observation + Baseline + now -> Verdict), and holds a verdict continuously for a
// stabilization window under a deadline (confirm.go). A gate that times out is a failure, never a pass.
package health

import (
	"time"
)

// Observation is one sample of the cluster as seen from a single node's agent. Everything that could not
// be read is recorded here as data (an Error string), so the pure gates can name it; only an unreachable
// local agent makes Observe return an error instead.
//
// Observation is JSON-friendly on purpose: golden test cases are stored as observation.json files.
type Observation struct {
	// At is when the observation finished (taken from the observer's clock).
	At time.Time `json:"at"`

	// Local is the node's own agent, read from /v1/agent/self.
	Local LocalAgent `json:"local"`

	// LocalLeader is the local agent's answer to /v1/status/leader ("" = no leader known).
	LocalLeader      string `json:"local_leader"`
	LocalLeaderError string `json:"local_leader_error,omitempty"`

	// Members are the LAN gossip members as the local agent sees them.
	Members      []Member `json:"members,omitempty"`
	MembersError string   `json:"members_error,omitempty"`

	// ServerLeaders is every known server's own answer to /v1/status/leader, queried on that server's
	// HTTP address. Empty when peers were not queried (ObserveInput.Dial is nil).
	ServerLeaders []ServerLeader `json:"server_leaders,omitempty"`
	// PeersQueried says whether ServerLeaders was filled (false: only LocalLeader is known).
	PeersQueried bool `json:"peers_queried"`

	// LeaderRaft is the current leader's own raft stats, sampled BEFORE Local.Raft so that
	// Local.Raft.AppliedIndex >= LeaderRaft.CommitIndex proves the local server has caught up to at
	// least that point. Nil when the leader's agent could not be read.
	LeaderRaft      *RaftStats `json:"leader_raft,omitempty"`
	LeaderRaftError string     `json:"leader_raft_error,omitempty"`

	// Raft is the raft configuration (/v1/operator/raft/configuration). Nil with RaftError set when it
	// could not be read (for example no leader).
	Raft      *RaftConfiguration `json:"raft,omitempty"`
	RaftError string             `json:"raft_error,omitempty"`

	// Autopilot is /v1/operator/autopilot/health. Nil with AutopilotError set when it could not be read.
	Autopilot      *AutopilotHealth `json:"autopilot,omitempty"`
	AutopilotError string           `json:"autopilot_error,omitempty"`

	// Probe is the consistent write probe. Nil when no probe key was configured.
	Probe *Probe `json:"probe,omitempty"`
}

// LocalAgent is what the node's own agent says about itself.
type LocalAgent struct {
	NodeName string `json:"node_name"`
	// Version is Config.Version from /v1/agent/self (it includes "+ent"-style metadata when present).
	Version string `json:"version"`
	Server  bool   `json:"server"`
	// Raft is this agent's raft stats; nil on a client. Sampled last in Observe (after LeaderRaft).
	Raft *RaftStats `json:"raft,omitempty"`
	// HTTPPort is the agent's configured HTTP port (DebugConfig.HTTPPort), 0 if unknown.
	HTTPPort int `json:"http_port,omitempty"`
}

// RaftStats is the subset of an agent's Stats.raft that the gates use.
type RaftStats struct {
	// State is "Leader", "Follower", "Candidate" or "Shutdown".
	State        string `json:"state"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastLogIndex uint64 `json:"last_log_index"`
	// LastContact is the raw value: "0" on the leader, "never", or a Go duration string.
	LastContact string `json:"last_contact"`
	NumPeers    int    `json:"num_peers"`
}

// LastContactDuration parses LastContact; ok is false for "never" or anything unparsable.
func (r RaftStats) LastContactDuration() (time.Duration, bool) {
	switch r.LastContact {
	case "", "never":
		return 0, false
	case "0":
		return 0, true
	}
	d, err := time.ParseDuration(r.LastContact)
	if err != nil {
		return 0, false
	}
	return d, true
}

// Serf member status values, as in github.com/hashicorp/serf/serf.MemberStatus.
const (
	MemberAlive   = 1
	MemberLeaving = 2
	MemberLeft    = 3
	MemberFailed  = 4
)

// Member is one LAN gossip member.
type Member struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// Role is "server" or "client" (from the "role" tag: "consul" means server).
	Role string `json:"role"`
	// Version is the agent version from the "build" tag ("1.16.1:abcdef" -> "1.16.1").
	Version string `json:"version,omitempty"`
	// Status is the serf status (MemberAlive, MemberFailed, ...).
	Status int `json:"status"`
}

// StatusName is the serf status in words.
func (m Member) StatusName() string {
	switch m.Status {
	case MemberAlive:
		return "alive"
	case MemberLeaving:
		return "leaving"
	case MemberLeft:
		return "left"
	case MemberFailed:
		return "failed"
	default:
		return "unknown"
	}
}

// ServerLeader is one server's own answer to "who is the leader?".
type ServerLeader struct {
	Node string `json:"node"`
	// Addr is the HTTP address that was queried ("ip:port").
	Addr string `json:"addr"`
	// Leader is the raft address of the leader this server reports; "" means it knows of none.
	Leader string `json:"leader"`
	// Error is set when the server did not answer; Leader is then meaningless.
	Error string `json:"error,omitempty"`
}

// RaftConfiguration is the raft peer set.
type RaftConfiguration struct {
	Servers []RaftServer `json:"servers"`
	Index   uint64       `json:"index"`
}

// RaftServer is one raft peer.
type RaftServer struct {
	ID      string `json:"id"`
	Node    string `json:"node"`
	Address string `json:"address"`
	Leader  bool   `json:"leader"`
	Voter   bool   `json:"voter"`
}

// AutopilotHealth is the leader's autopilot view.
type AutopilotHealth struct {
	Healthy          bool           `json:"healthy"`
	FailureTolerance int            `json:"failure_tolerance"`
	Servers          []ServerHealth `json:"servers"`
}

// ServerHealth is autopilot's view of one server.
type ServerHealth struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Address     string    `json:"address"`
	SerfStatus  string    `json:"serf_status"`
	Version     string    `json:"version"`
	Leader      bool      `json:"leader"`
	Voter       bool      `json:"voter"`
	Healthy     bool      `json:"healthy"`
	LastIndex   uint64    `json:"last_index"`
	LastTerm    uint64    `json:"last_term"`
	LastContact string    `json:"last_contact,omitempty"`
	StableSince time.Time `json:"stable_since"`
}

// Probe is the outcome of a consistent write: a KV put followed by a consistent read of the same key.
type Probe struct {
	Key string `json:"key"`
	OK  bool   `json:"ok"`
	// Error says which step failed; empty when OK.
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Verdict is a gate's decision. Reasons name every failed condition in operator language; on a passing
// verdict they are warnings the operator should still see (for example a single-server cluster).
type Verdict struct {
	Pass    bool     `json:"pass"`
	Reasons []string `json:"reasons,omitempty"`
}

// Baseline is what a restarted node is judged against: values recorded before it went down.
type Baseline struct {
	// FailureTolerance is autopilot's failure tolerance before the upgrade; it must come back.
	FailureTolerance int `json:"failure_tolerance"`
	// Servers is how many servers the cluster had before the upgrade; at least that many must answer.
	Servers int `json:"servers"`
	// TargetVersion is the version the local agent must report.
	TargetVersion string `json:"target_version"`
	// Node is this node's name.
	Node string `json:"node"`
	// MaxIndexLag is how far (in raft log entries) this server may trail the leader when judged by
	// autopilot's LastIndex. Zero means DefaultMaxIndexLag.
	MaxIndexLag uint64 `json:"max_index_lag,omitempty"`
	// MaxLastContact is the longest a follower may have gone without hearing from the leader. Zero
	// means DefaultMaxLastContact.
	MaxLastContact time.Duration `json:"max_last_contact,omitempty"`
	// MaxObservationAge rejects observations older than this at decision time. Zero means
	// DefaultMaxObservationAge.
	MaxObservationAge time.Duration `json:"max_observation_age,omitempty"`
}

// Policy tunes the pre-flight gate.
type Policy struct {
	// AllowSingleServer lets a one-server cluster take its only server down (it will have no leader
	// while it restarts).
	AllowSingleServer bool `json:"allow_single_server"`
}

const (
	// DefaultMaxIndexLag: autopilot's own MaxTrailingLogs default is 250; a server that has just
	// restarted should be far closer than that before we let the next one go, so we ask for 10.
	DefaultMaxIndexLag uint64 = 10
	// DefaultMaxLastContact: raft followers hear a heartbeat about every 100ms; autopilot's
	// LastContactThreshold default is 200ms. 500ms tolerates a busy loopback box without accepting a
	// follower that has lost its leader.
	DefaultMaxLastContact = 500 * time.Millisecond
	// DefaultMaxObservationAge: a sample older than this says nothing about the cluster now.
	DefaultMaxObservationAge = 30 * time.Second
)
